import Foundation
import Synchronization
import Testing
import SoulfraClient
import SoulfraNet
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
        unmount(path)
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

/// Unmounts `path`. A file can stay referenced for a moment after a server stopped (an I/O completing in the
/// kernel, a child process of a test running alongside between its fork and exec): retried, then detached.
func unmount(_ path: String) {
    var tries = 0
    while umount(path) != 0 && errno == EBUSY && tries < 100 {
        usleep(20_000)
        tries += 1
    }
    if tries == 100 { umount2(path, Int32(MNT_DETACH)) }
}

/// Whether a FUSE filesystem can be mounted here (root, /dev/fuse, python3-fuse): for the slow-sync disk.
let canMountFuse: Bool = {
    guard getuid() == 0, access("/dev/fuse", R_OK | W_OK) == 0 else { return false }
    let p = Process()
    p.executableURL = URL(fileURLWithPath: "/usr/bin/python3")
    p.arguments = ["-c", "import fuse"]
    p.standardError = FileHandle.nullDevice
    guard (try? p.run()) != nil else { return false }
    p.waitUntilExit()
    return p.terminationStatus == 0
}()

/// A disk whose syncs take `delayMilliseconds`: `Tests/tools/slow-fsync-fs.py`, a FUSE passthrough of a
/// directory, mounted for the test and unmounted (its server stopped by PID) when it is released.
final class SlowSyncDisk {
    let base: String
    let mountpoint: String
    let server = Process()

    init(delayMilliseconds: Int) throws {
        base = "\(NSTemporaryDirectory())soulfra-slowsync-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        mountpoint = base + "/mnt"
        try FileManager.default.createDirectory(atPath: base + "/backing", withIntermediateDirectories: true)
        try FileManager.default.createDirectory(atPath: mountpoint, withIntermediateDirectories: true)
        server.executableURL = URL(fileURLWithPath: "/usr/bin/python3")
        server.arguments = [repoRoot.appendingPathComponent("Tests/tools/slow-fsync-fs.py").path, base + "/backing", mountpoint,
                            String(delayMilliseconds)]
        server.standardError = FileHandle.nullDevice
        try server.run()
        for _ in 0..<500 where !mounted { usleep(10_000) }
        guard mounted else { throw ClientError("the slow-sync filesystem did not mount at \(mountpoint)") }
    }

    var mounted: Bool {
        ((try? String(contentsOfFile: "/proc/mounts", encoding: .utf8)) ?? "").contains(" \(mountpoint) ")
    }

    deinit {
        unmount(mountpoint)
        if server.isRunning { kill(server.processIdentifier, SIGTERM) }
        for _ in 0..<200 where server.isRunning { usleep(10_000) }
        if server.isRunning { kill(server.processIdentifier, SIGKILL) }
        server.waitUntilExit()
        try? FileManager.default.removeItem(atPath: base)
    }
}

@Suite("The vault on a disk whose syncs are slow", .enabled(if: uringAvailable && canMountFuse, "needs io_uring, root and FUSE (python3-fuse)"),
       .serialized)
struct VaultSlowSyncTests {
    @Test("fsyncs of 150 ms: the vault withholds credit, the producers slow down, memory stays bounded, and everything sent is stored")
    func slowSyncs() throws {
        let disk = try SlowSyncDisk(delayMilliseconds: 150)
        defer { withExtendedLifetime(disk) {} }  // unmounted only after the server below has stopped
        let highWater = 65_536
        let server = try BrokerServer.start(testConfig {
            $0.vaultDirectory = disk.mountpoint + "/vault"
            $0.vault.highWaterBytes = highWater
        })
        defer { server.stop() }
        let inst = VaultClient(try server.connect(.instance, world: "playground"))
        let streams = (0..<4).map { inst.conn.link.open(Open(target: .vault, world: "playground", session: "w\($0)", detail: "append")) }
        var sent = 0
        let event = String(repeating: "e", count: 500)
        func produce() {
            for s in streams {
                while inst.conn.link.window(s).map({ $0.bytes > 600 && $0.frames > 0 }) ?? false, inst.append(s, event) { sent += 1 }
            }
        }
        let acked = { streams.reduce(0) { $0 + inst.acks($1).count } }
        // Three seconds of producers sending whenever credit lets them.
        let started = monotonicMilliseconds()
        pumpUntil([inst.conn], milliseconds: 3_000) {
            produce()
            return false
        }
        let seconds = Double(monotonicMilliseconds() - started) / 1_000
        let (_, metrics) = try curl(["-H", "Authorization: Bearer test-admin-token-0001", "http://127.0.0.1:\(server.adminPort)/metrics"])
        func value(_ name: String) -> Double {
            metrics.split(separator: "\n").first { $0.hasPrefix(name + " ") }.flatMap { Double($0.split(separator: " ").last!) } ?? -1
        }
        // The syncs were slow: each group commit took at least the delay.
        let commits = value("soulfra_vault_commit_seconds_count")
        #expect(commits > 0 && value("soulfra_vault_commit_seconds_sum") / commits >= 0.15, "\(metrics)")
        // The vault withheld credit, so the producers sent about what the slow disk could take, not more: what is
        // unanswered is at most the batch waiting for its sync (≤ 1 MiB), the watermark, and one window a stream.
        #expect(value("soulfra_vault_credit_stalls_total") > 0, "no credit was withheld")
        let credit = Int(inst.conn.link.welcome!.streamCreditBytes)
        let unanswered = (sent - acked()) * 501
        #expect(unanswered <= (1 << 20) + highWater + 4 * credit + 4 * 501, "sent \(sent), acknowledged \(acked()) in \(seconds) s")
        // Memory: what the vault holds unwritten stays under the watermark plus what credit let in before it.
        // (Pending bytes are records: a 501-byte message is a 539-byte record, header and session id added.)
        let record = 36 + 2 + 501
        #expect(value("soulfra_vault_pending_bytes") <= Double(highWater + record + (4 * credit / 501 + 4) * record))
        let held = try #require(server.snapshotNow()).queueBytesByKind[Int(PeerKind.vault.rawValue)]
        #expect(held <= 4 * credit + (64 << 10), "the broker holds \(held) bytes for the slow vault")
        // Slow, not stuck: once the producers stop, everything sent is stored.
        #expect(pumpUntil([inst.conn], milliseconds: 20_000) { acked() == sent }, "acknowledged \(acked()) of \(sent)")
        #expect(sent > 0)
    }
}
