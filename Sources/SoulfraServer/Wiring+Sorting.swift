import Foundation
import SoulfraLoop
import SoulfraWire

/// New broker connections on a loop that does not own them: their HELLO says which loop does, and the
/// socket moves there (several loops only).
extension Wiring {
    /// Reads the first frame of a new connection to find the loop it belongs to.
    func sort(_ conn: UInt32, _ bytes: UnsafeRawBufferPointer, now: UInt64) {
        sorting[conn]!.bytes.append(contentsOf: bytes)
        guard sorting[conn]!.target == nil else { return }  // being handed off: keep what arrives
        let buffered = sorting[conn]!.bytes
        var target = inbox.index
        let complete: Bool = buffered.withUnsafeBytes { raw in
            guard raw.count >= Wire.headerBytes else { return false }
            // Anything that is not a well-formed HELLO stays here; this loop's broker rejects it properly.
            guard let h = try? FrameDecoder.parseHeader(raw, limit: Wire.handshakeFrameBytes), h.type == .hello else { return true }
            let total = Wire.headerBytes + Int(h.length)
            guard raw.count >= total else { return false }
            guard case .hello(let hello)? = try? Frame.parse(h, UnsafeRawBufferPointer(rebasing: raw[Wire.headerBytes..<total])) else {
                return true
            }
            if hello.kind == .instance && !hello.world.isEmpty {
                target = Wire.loop(forWorld: hello.world, count: inboxes.count)
            } else if Int(hello.loop) < inboxes.count {
                target = Int(hello.loop)
            }
            return true
        }
        guard complete else { return }
        if target == inbox.index {
            sorting.removeValue(forKey: conn)
            setRole(conn, .broker)
            broker.attach(link: conn, now: now)
            buffered.withUnsafeBytes { broker.receive(link: conn, bytes: $0, now: now) }
        } else {
            sorting[conn]!.target = target
            loop.handOff(conn: conn)
        }
    }

    func loopHandedOff(conn: UInt32, fd: Int32, now: UInt64) {
        if let target = moving.removeValue(forKey: conn) {
            setRole(conn, .broker)
            guard let m = gateway?.release(conn: conn) else {
                Glibc.close(fd)
                return
            }
            inboxes[target].arrivals.withLock { $0.append((fd, m)) }
            inboxes[target].wake()
            return
        }
        guard let s = sorting.removeValue(forKey: conn), let target = s.target else {
            Glibc.close(fd)
            return
        }
        let dest = inboxes[target]
        dest.handoffs.withLock { $0.append(BrokerServer.Handoff(fd: fd, bytes: s.bytes)) }
        dest.wake()
    }
}
