import Foundation
import Synchronization
import Testing
import SoulfraClient
import SoulfraServer
import SoulfraVault
import SoulfraWire

/// Whether this process may mount a tmpfs (root only: the full-disk test is skipped elsewhere).
let canMountTmpfs: Bool = {
    let dir = "\(NSTemporaryDirectory())soulfra-mount-probe-i-\(getpid())"
    mkdir(dir, 0o700)
    defer { rmdir(dir) }
    guard mount("tmpfs", dir, "tmpfs", 0, "size=64k") == 0 else { return false }
    umount(dir)
    return true
}()

/// A small tmpfs mounted for the test (root only; `canMountTmpfs`), unmounted and removed when it returns.
final class Tmpfs {
    let path: String
    init(_ name: String, size: String) throws {
        path = "\(NSTemporaryDirectory())soulfra-\(name)-\(getpid())"
        mkdir(path, 0o700)
        guard mount("tmpfs", path, "tmpfs", 0, "size=\(size)") == 0 else {
            rmdir(path)
            throw ClientError("mount tmpfs at \(path): errno \(errno)")
        }
    }
    /// Gives it more room (the disk is no longer full).
    func grow(to size: String) { mount("tmpfs", path, "tmpfs", UInt(MS_REMOUNT), "size=\(size)") }
    deinit {
        // A file can stay referenced for a moment after the server stopped (an I/O completing in the kernel, a
        // child process of a test running alongside between its fork and exec): retry, then detach.
        var tries = 0
        while umount(path) != 0 && errno == EBUSY && tries < 100 {
            usleep(20_000)
            tries += 1
        }
        if tries == 100 { umount2(path, Int32(MNT_DETACH)) }
        rmdir(path)
    }
}

@Suite("The vault on a full disk", .enabled(if: uringAvailable && canMountTmpfs, "needs io_uring and root (tmpfs mounts)"), .serialized)
struct VaultDiskTests {
    @Test("a full disk: FAIL ENOSPC to the producer, an error_alert line and a metric; nothing acknowledged lost; reads work; appends resume")
    func fullDisk() throws {
        let disk = try Tmpfs("vault-fulldisk", size: "256k")
        defer { withExtendedLifetime(disk) {} }  // unmounted only after the server below has stopped
        let dir = disk.path
        let lines = Mutex<[String]>([])
        let server = try BrokerServer.start(testConfig { $0.vaultDirectory = dir + "/vault" }) { line in lines.withLock { $0.append(line) } }
        defer { server.stop() }
        let inst = VaultClient(try server.connect(.instance, world: "playground"))
        let s = inst.conn.link.open(Open(target: .vault, world: "playground", session: "d", detail: "append"))
        var nextID = 1
        var inFlight: [Int] = []
        var acked: [Int] = []
        var failed: [(id: Int, errno: UInt16, retry: UInt32)] = []
        var seen = 0
        func send(_ n: Int) {
            for _ in 0..<n {
                let text = "event \(nextID) " + String(repeating: "x", count: 1_000)
                guard inst.append(s, text) else { return }
                inFlight.append(nextID)
                nextID += 1
            }
            inst.conn.flush()
        }
        func settle() {
            let messages = inst.messages(s)
            for m in messages[seen...] {
                switch m {
                case .ack(let a):
                    acked += inFlight.prefix(a.count)
                    inFlight.removeFirst(a.count)
                case .fail(let count, let errno, let retry, _):
                    failed += inFlight.prefix(Int(count)).map { ($0, errno, retry) }
                    inFlight.removeFirst(Int(count))
                default:
                    Issue.record("unexpected \(m)")
                }
            }
            seen = messages.count
        }
        // Fill the disk.
        let filled = pumpUntil([inst.conn], milliseconds: 20_000) {
            settle()
            if inFlight.count < 8 { send(8) }
            return !failed.isEmpty
        }
        try #require(filled, "the disk never filled: \(acked.count) acknowledged")
        #expect(failed.allSatisfy { $0.errno == UInt16(ENOSPC) && $0.retry > 0 }, "\(failed.prefix(3))")
        pumpUntil([inst.conn], milliseconds: 5_000) {
            settle()
            return inFlight.isEmpty
        }
        #expect(lines.withLock { $0.contains { $0.hasPrefix("error_alert vault: world playground") && $0.contains("No space left") } })
        let (_, metrics) = try curl(["-H", "Authorization: Bearer test-admin-token-0001", "http://127.0.0.1:\(server.adminPort)/metrics"])
        #expect(metrics.contains("soulfra_vault_appends_failed_total ") && !metrics.contains("soulfra_vault_appends_failed_total 0\n"))

        // Reads keep working on a full disk: every acknowledged event, in order, no failed one.
        func stored() -> [Int] {
            var ids: [Int] = []
            var after: UInt64 = 0
            while true {
                let page = inst.read(world: "playground", session: "d", .read(after: after, limit: 1_000))
                ids += page.events.map { Int(String(decoding: $0.payload, as: UTF8.self).split(separator: " ")[1])! }
                guard case .end(let next, true)? = page.end else { return ids }
                after = next
            }
        }
        #expect(stored() == acked)

        // Space returns: appends resume by themselves (after the retry delay), nothing lost or doubled.
        disk.grow(to: "4m")
        let before = acked.count
        send(5)
        let resumed = pumpUntil([inst.conn], milliseconds: 15_000) {
            settle()
            if inFlight.isEmpty && acked.count < before + 5 { send(5 - (acked.count - before)) }
            return acked.count >= before + 5
        }
        #expect(resumed, "appends did not resume: \(failed.count) failed")
        #expect(stored() == acked)
    }
}
