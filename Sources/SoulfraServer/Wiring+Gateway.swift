import Foundation
import SoulfraBroker
import SoulfraGateway
import SoulfraLoop
import SoulfraNet
import SoulfraPeerLink
import SoulfraWire

/// The gateway's links to the brokers: in process to this loop's, over socket pairs to the others'.
extension Wiring {
    /// Starts the gateway: the in-process link to this loop's broker, and `links[y]` (a socket-pair end) to
    /// loop y's broker.
    func attachGateway(_ g: Gateway, links: [Int32], now: UInt64) {
        gateway = g
        g.transport = self
        g.unixSeconds = UInt64(time(nil))
        let own = InProcessLink(id: firstInProcessID + UInt32(inProcess.count), peer: g.peerLink(inbox.index))
        inProcess.append(own)
        own.attach(to: broker, now: now)
        for (y, fd) in links.enumerated() where fd >= 0 {
            guard let conn = loop.adopt(fd: fd) else { continue }
            setRole(conn, .gatewayLink)
            let peer = g.peerLink(y)
            peer.start()
            remoteLinks[conn] = RemoteLink(loopIndex: y, conn: conn, peer: peer)
        }
    }

    /// Replaces a dead link: the in-process one re-attaches; a remote one gets a new socket pair, whose far
    /// end goes to the other loop's broker.
    func renewGatewayLinks(now: UInt64) {
        guard let g = gateway, shutdownStarted == nil else { return }
        for y in g.deadLinks {
            if y == inbox.index {
                guard let own = inProcess.first(where: { $0.peer === g.peerLink(y) }) else { continue }
                own.reattach(g.renewLink(y), to: broker, now: now)
                log("gateway: loop \(inbox.index) re-attached its in-process broker link")
                continue
            }
            guard !remoteLinks.values.contains(where: { $0.loopIndex == y }) else { continue }  // old socket still closing
            guard let (near, far) = unixSocketPair() else { continue }  // tried again on the next tick
            guard let conn = loop.adopt(fd: near) else {
                Glibc.close(far)
                continue
            }
            setRole(conn, .gatewayLink)
            let peer = g.renewLink(y)
            peer.start()
            remoteLinks[conn] = RemoteLink(loopIndex: y, conn: conn, peer: peer)
            inboxes[y].handoffs.withLock { $0.append(BrokerServer.Handoff(fd: far, bytes: [])) }
            inboxes[y].wake()
            log("gateway: loop \(inbox.index) reconnected its link to loop \(y)'s broker")
        }
    }

    /// Moves frames between the in-process peers and this loop's broker until neither side has more for the
    /// other; the broker's output for socket links goes to the ring on the way.
    @inline(__always)
    func pumpInProcess(now: UInt64) {
        for _ in 0..<16 {
            var moved = false
            for link in inProcess where link.peerToBroker(broker, now: now) { moved = true }
            applyBrokerActions(now: now)
            broker.drainReady { l in
                if l >= firstInProcessID {
                    if inProcess[Int(l - firstInProcessID)].brokerToPeer(broker, now: now) { moved = true }
                } else {
                    guard loop.canSend(conn: l) else { return }
                    let bytes = broker.takeOutput(link: l)
                    if bytes.count > 0 { loop.send(conn: l, bytes: bytes) }
                }
            }
            if !moved { return }
        }
        // Still busy: come back on the next turn rather than starve the ring.
        loop.mailbox.wake()
    }

    func flushRemoteLinks() {
        for p in remoteLinks.values where !p.queue.inFlight {
            if !p.peer.output.isEmpty {
                p.queue.out.append(p.peer.output.readable)
                p.peer.output.removeAll()
            }
            guard loop.canSend(conn: p.conn), let bytes = p.queue.take() else { continue }
            loop.send(conn: p.conn, bytes: bytes)
        }
    }
}
