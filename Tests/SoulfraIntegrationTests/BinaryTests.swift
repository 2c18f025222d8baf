import Foundation
import Testing
@testable import SoulfraLoop
import SoulfraPeer
import SoulfraPeerLink
import SoulfraWire

/// The built `soulfra` binary, next to the test bundle.
let soulfraBinary: String = URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent()
    .appendingPathComponent("soulfra").path

let repoRoot = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()

/// Runs a process to completion (bounded) and returns its exit status and its output (stdout, then stderr).
func run(_ path: String, _ args: [String], timeoutSeconds: Double = 20) throws -> (Int32, String) {
    let r = try runCapturing(path, args, timeout: timeoutSeconds)
    return (r.status, r.out + r.err)
}

@Suite("The soulfra binary", .serialized)
struct BinaryTests {
    @Test("SIGTERM: GOAWAY, drain, exit 0", .enabled(if: uringAvailable))
    func sigtermExitsCleanly() throws {
        #expect(FileManager.default.fileExists(atPath: soulfraBinary), "build the soulfra product first")
        let dir = NSTemporaryDirectory() + "soulfra-bin-\(getpid())"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        let ready = dir + "/port"
        let p = Process()
        p.executableURL = URL(fileURLWithPath: soulfraBinary)
        p.arguments = ["serve", "--control-dir", "", "--config", repoRoot.appendingPathComponent("config/soulfra.json").path,
                       "--broker-unix", dir + "/b.sock", "--broker-tcp", "127.0.0.1:0", "--admin-tcp", "127.0.0.1:0", "--gateway-tcp", "", "--gateway-tls", "", "--ready-file", ready]
        let err = Pipe()
        p.standardError = err
        try p.run()
        for _ in 0..<3_000 where !FileManager.default.fileExists(atPath: ready) { usleep(10_000) }
        #expect(FileManager.default.fileExists(atPath: ready), "the daemon started")
        kill(p.processIdentifier, SIGTERM)
        for _ in 0..<1000 where p.isRunning { usleep(10_000) }
        if p.isRunning { kill(p.processIdentifier, SIGKILL) }  // a read to the end waits for the writer to go
        p.waitUntilExit()
        let log = String(decoding: err.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        #expect(p.terminationStatus == 0, "log: \(log)")
        #expect(log.contains("graceful shutdown"))
        #expect(log.contains("broker stopped"))
        #expect(!FileManager.default.fileExists(atPath: dir + "/b.sock"), "the unix socket is removed")
    }

    @Test("out of file descriptors: accept recovers once sockets close, and the daemon keeps serving", .enabled(if: uringAvailable))
    func acceptRecoversFromEMFILE() throws {
        let dir = NSTemporaryDirectory() + "soulfra-emfile-\(getpid())"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        let ready = dir + "/port"
        try? FileManager.default.removeItem(atPath: ready)
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/bin/sh")
        // A hard limit of 48 descriptors: the broker runs out after a few dozen links.
        p.arguments = ["-c", "ulimit -n 48 && exec \"$0\" serve --config \"$1\" --loops 1 --broker-unix \"$2\" --broker-tcp 127.0.0.1:0 --admin-tcp 127.0.0.1:0 --gateway-tcp \"\" --gateway-tls \"\" --ready-file \"$3\"",
                       soulfraBinary, repoRoot.appendingPathComponent("config/soulfra.json").path, dir + "/b.sock", ready]
        p.standardError = FileHandle.nullDevice
        try p.run()
        defer { kill(p.processIdentifier, SIGKILL); p.waitUntilExit() }
        for _ in 0..<3_000 where (try? String(contentsOfFile: ready, encoding: .utf8)) == nil { usleep(10_000) }
        let port = try #require(UInt16((try String(contentsOfFile: ready, encoding: .utf8)).split(separator: "\n").first ?? ""))
        let address = PeerAddress.tcp(host: "127.0.0.1", port: port)
        let identity = PeerIdentity(kind: .runtime, token: "dev-runtime-token-0001")
        // Far more connections than descriptors; the kernel queues what the broker cannot accept.
        var flood: [PeerConnection] = []
        for _ in 0..<80 {
            let c = PeerConnection(address: address, identity: identity)
            try c.connect()
            flood.append(c)
        }
        let served = flood.filter { c in pumpUntil([c], milliseconds: 50) { c.link.isReady } }.count
        #expect(served > 0 && served < 80, "some links were served, the rest waited: \(served)")
        for c in flood { c.close() }
        // Descriptors come back; accept is re-armed on the next tick and a new peer is served.
        let fresh = PeerConnection(address: address, identity: identity)
        var attached = false
        for _ in 0..<50 where !attached {
            do { try fresh.handshake(timeoutMilliseconds: 500); attached = true } catch { usleep(50_000) }
        }
        #expect(attached, "the daemon serves again after running out of descriptors")
        #expect(p.isRunning)
    }

    @Test("SIGHUP swaps in the config file's keys: a new key works, a removed key's stream ends", .enabled(if: uringAvailable))
    func sighupReloadsKeys() throws {
        let dir = NSTemporaryDirectory() + "soulfra-hup-\(getpid())"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        let configPath = dir + "/soulfra.json"
        func writeConfig(keys: String) throws {
            try """
            {"loop": {"count": 1}, "tokens": {"gateway": "hup-gateway-token-001", "instances": {"bench": "hup-instance-token-01"}},
             "keys": [\(keys)]}
            """.write(toFile: configPath, atomically: true, encoding: .utf8)
        }
        try writeConfig(keys: #"{"id": 1, "world": "bench"}"#)
        let ready = dir + "/port"
        try? FileManager.default.removeItem(atPath: ready)
        let p = Process()
        p.executableURL = URL(fileURLWithPath: soulfraBinary)
        p.arguments = ["serve", "--control-dir", "", "--config", configPath, "--broker-unix", dir + "/b.sock", "--broker-tcp", "127.0.0.1:0", "--admin-tcp", "127.0.0.1:0", "--gateway-tcp", "", "--gateway-tls", "", "--ready-file", ready]
        let err = Pipe()
        p.standardError = err
        try p.run()
        defer { kill(p.processIdentifier, SIGKILL); p.waitUntilExit() }
        for _ in 0..<3_000 where (try? String(contentsOfFile: ready, encoding: .utf8)) == nil { usleep(10_000) }
        let address = PeerAddress.unix(path: dir + "/b.sock")
        let ri = Recorder(), rg = Recorder()
        let inst = PeerConnection(address: address, identity: PeerIdentity(kind: .instance, world: "bench", token: "hup-instance-token-01"))
        inst.link.delegate = ri
        try inst.handshake()
        let gw = PeerConnection(address: address, identity: PeerIdentity(kind: .gateway, token: "hup-gateway-token-001"))
        gw.link.delegate = rg
        try gw.handshake()
        let s1 = gw.link.open(Open(target: .instance, keyID: 1, world: "bench"))
        let s2 = gw.link.open(Open(target: .instance, keyID: 2, world: "bench"))
        #expect(pumpUntil([inst, gw]) { rg.closedStreams.contains { $0.0 == s2 } })
        #expect(rg.closedStreams.first { $0.0 == s2 }?.1 == .notPermitted, "key 2 is not known yet")
        // Key 2 in, key 1 out.
        try writeConfig(keys: #"{"id": 2, "world": "bench"}"#)
        kill(p.processIdentifier, SIGHUP)
        #expect(pumpUntil([inst, gw]) { rg.closedStreams.contains { $0.0 == s1 } }, "key 1's stream ends on revoke")
        #expect(rg.closedStreams.first { $0.0 == s1 }?.1 == .notPermitted)
        let s3 = gw.link.open(Open(target: .instance, keyID: 2, world: "bench"))
        #expect(gw.link.send(stream: s3, payload: bytes("now allowed")))
        #expect(pumpUntil([inst, gw]) { ri.data.contains { $0.1 == Array("now allowed".utf8) } })
        // A broken file keeps the current table.
        try "{ not json".write(toFile: configPath, atomically: true, encoding: .utf8)
        kill(p.processIdentifier, SIGHUP)
        let s4 = gw.link.open(Open(target: .instance, keyID: 2, world: "bench"))
        #expect(gw.link.send(stream: s4, payload: bytes("still allowed")))
        #expect(pumpUntil([inst, gw]) { ri.data.contains { $0.1 == Array("still allowed".utf8) } })
        inst.close()
        gw.close()
        kill(p.processIdentifier, SIGTERM)
        for _ in 0..<1000 where p.isRunning { usleep(10_000) }
        if p.isRunning { kill(p.processIdentifier, SIGKILL) }  // a read to the end waits for the writer to go
        p.waitUntilExit()
        let log = String(decoding: err.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        #expect(log.contains("SIGHUP: reloaded 1 keys"))
        #expect(log.contains("SIGHUP: kept the current keys and tokens"))
    }

    @Test("a bad config value exits 78 naming the key")
    func badConfig() throws {
        let dir = NSTemporaryDirectory() + "soulfra-bin-\(getpid())"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        try #"{"broker": {"link_queue_bytes_high": 1}}"#.write(toFile: dir + "/bad.json", atomically: true, encoding: .utf8)
        let (status, out) = try run(soulfraBinary, ["serve", "--control-dir", "", "--config", dir + "/bad.json", "--admin-tcp", "127.0.0.1:0", "--gateway-tcp", "", "--gateway-tls", ""])
        #expect(status == 78)
        #expect(out.contains("broker.link_queue_bytes_low"), "got: \(out)")
    }

    @Test("io_uring blocked by seccomp: exits 69 with a paragraph saying which and how to fix it",
          arguments: ["EPERM", "ENOSYS"])
    func uringBlockedBySeccomp(errno name: String) throws {
        // Any C compiler will do; the Swift toolchain ships clang, so one is on PATH wherever swift is.
        let path = (ProcessInfo.processInfo.environment["PATH"] ?? "").split(separator: ":").map(String.init) + ["/opt/swift/usr/bin"]
        let cc = ["cc", "gcc", "clang"].lazy.flatMap { name in path.map { "\($0)/\(name)" } }
            .first { FileManager.default.isExecutableFile(atPath: $0) }
        try #require(cc != nil, "a C compiler builds the seccomp launcher")
        let launcher = NSTemporaryDirectory() + "deny-io-uring-\(getpid())"
        let (ccStatus, ccOut) = try run(cc!, ["-O1", "-o", launcher, repoRoot.appendingPathComponent("Tests/tools/deny-io-uring.c").path])
        try #require(ccStatus == 0, "cc: \(ccOut)")
        let (status, out) = try run(launcher, [name, soulfraBinary, "probe"])
        #expect(status == 69, "output: \(out)")
        if name == "ENOSYS" {
            #expect(out.contains("ENOSYS") && out.contains("seccomp"), "got: \(out)")
        } else {
            #expect(out.contains("EPERM") && out.contains("seccomp"), "got: \(out)")
        }
        #expect(out.contains("Fix:") || out.contains("fix"), "the message says how to fix it")
        let (serveStatus, serveOut) = try run(launcher, [name, soulfraBinary, "serve", "--control-dir", "", "--broker-tcp", "127.0.0.1:0", "--admin-tcp", "127.0.0.1:0", "--gateway-tcp", "", "--gateway-tls", "",
                                                         "--broker-unix", NSTemporaryDirectory() + "sf-seccomp-\(getpid()).sock"])
        #expect(serveStatus == 69, "serve refuses to start: \(serveOut)")
        #expect(serveOut.contains("cannot start the broker"))
    }

    @Test("the io_uring sysctl switch is explained with the fix")
    func sysctlExplanation() {
        // The sysctl cannot be flipped inside a test without affecting the machine; the text that the
        // EPERM path shows when /proc reports it disabled is checked here instead.
        let text = UringProbe.explainSetupFailure(errno: EPERM, kernel: "6.6.0")
        let disabled = (readSmallFile("/proc/sys/kernel/io_uring_disabled").flatMap { Int($0.trimmingWhitespace) } ?? 0) != 0
        #expect(text.contains(disabled ? "sysctl -w kernel.io_uring_disabled=0" : "seccomp"))
    }
}
