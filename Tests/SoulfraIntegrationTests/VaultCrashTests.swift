import Foundation
import Testing
import SoulfraPeer
import SoulfraNet
import SoulfraPeerLink
import SoulfraVault
import SoulfraServer
import SoulfraWire

@Suite("The vault survives kill -9", .enabled(if: uringAvailable, "io_uring is not available here"), .serialized)
struct VaultCrashTests {
    /// A seeded generator, so a failing run can be repeated.
    struct SplitMix: RandomNumberGenerator {
        var state: UInt64
        mutating func next() -> UInt64 {
            state &+= 0x9E37_79B9_7F4A_7C15
            var z = state
            z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
            z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
            return z ^ (z >> 31)
        }
    }

    @Test("SIGKILL at seeded random moments under load: every acknowledged event is there after restart, once, in order")
    func killNineLoop() throws {
        let dir = NSTemporaryDirectory() + "soulfra-crash-\(getpid())"
        try? FileManager.default.removeItem(atPath: dir)
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let configPath = dir + "/soulfra.json"
        try """
        {"loop": {"count": 2}, "vault": {"directory": "\(dir)/vault", "segment_bytes": 65536},
         "tokens": {"vault": "crash-vault-token-0001", "instances": {"crash": "crash-instance-token-1"}}}
        """.write(toFile: configPath, atomically: true, encoding: .utf8)
        var rng = SplitMix(state: 0x5EED_0009)
        var acknowledged: [UInt64] = []  // event ids the producer saw acknowledged, over every run
        var nextID: UInt64 = 1
        let iterations = 12
        for iteration in 0..<iterations {
            let p = try startDaemon(configPath: configPath, dir: dir)
            defer { if p.isRunning { kill(p.processIdentifier, SIGKILL); p.waitUntilExit() } }
            let conn = PeerConnection(address: .unix(path: dir + "/b.sock"),
                                      identity: PeerIdentity(kind: .instance, world: "crash", token: "crash-instance-token-1"))
            let r = Recorder()
            conn.link.delegate = r
            try conn.handshake()
            // After a restart, everything acknowledged before is there, once and in order.
            try checkStored(conn, r, acknowledged: acknowledged, iteration: iteration)
            let s = conn.link.open(Open(target: .vault, world: "crash", session: "p", detail: "append"))
            var sent: [UInt64] = []  // ids sent on this stream, not yet answered, oldest first
            var answered = 0
            let runFor = UInt64.random(in: 30...400, using: &rng)
            let until = monotonicMilliseconds() + runFor
            while monotonicMilliseconds() < until {
                while sent.count < 512, conn.link.window(s).map({ $0.bytes > 64 && $0.frames > 0 }) ?? false {
                    let payload = [UInt8(1)] + Array("event \(nextID) ".utf8) + Array(repeating: UInt8(0x61), count: 200)
                    guard payload.withUnsafeBytes({ conn.link.send(stream: s, payload: $0) }) else { break }
                    sent.append(nextID)
                    nextID += 1
                }
                conn.pump(timeoutMilliseconds: 1)
                let messages = r.data[answered...].filter { $0.0 == s }
                answered = r.data.count
                for m in messages {
                    switch m.1.withUnsafeBytes({ VaultMessage.decode($0) }) {
                    case .ack(let acks)?:
                        acknowledged += sent.prefix(acks.count)
                        sent.removeFirst(acks.count)
                    case .fail(let count, _, _, _)?:
                        sent.removeFirst(Int(count))
                    default:
                        Issue.record("an unexpected message on an append stream")
                    }
                }
            }
            kill(p.processIdentifier, SIGKILL)
            p.waitUntilExit()
            conn.close()
        }
        // The last restart's check.
        let p = try startDaemon(configPath: configPath, dir: dir)
        defer { kill(p.processIdentifier, SIGKILL); p.waitUntilExit() }
        let conn = PeerConnection(address: .unix(path: dir + "/b.sock"),
                                  identity: PeerIdentity(kind: .instance, world: "crash", token: "crash-instance-token-1"))
        let r = Recorder()
        conn.link.delegate = r
        try conn.handshake()
        try checkStored(conn, r, acknowledged: acknowledged, iteration: iterations)
        #expect(acknowledged.count > 1_000, "too little load to prove anything: \(acknowledged.count) acknowledged")
        print("kill -9 loop: \(iterations) kills, \(acknowledged.count) acknowledged events checked, \(nextID - 1) sent")
    }

    private func startDaemon(configPath: String, dir: String) throws -> Process {
        let ready = dir + "/ready"
        try? FileManager.default.removeItem(atPath: ready)
        let p = Process()
        p.executableURL = URL(fileURLWithPath: soulfraBinary)
        p.arguments = ["serve", "--control-dir", "", "--config", configPath, "--broker-unix", dir + "/b.sock", "--broker-tcp", "", "--admin-tcp", "",
                       "--gateway-tcp", "", "--gateway-tls", "", "--ready-file", ready]
        p.standardError = FileHandle.nullDevice
        try p.run()
        for _ in 0..<1_000 where (try? String(contentsOfFile: ready, encoding: .utf8)) == nil && p.isRunning { usleep(10_000) }
        return p
    }

    /// Reads session "p" whole and checks it against what was acknowledged.
    private func checkStored(_ conn: PeerConnection, _ r: Recorder, acknowledged: [UInt64], iteration: Int) throws {
        var stored: [UInt64] = []
        var sessionSequences: [UInt64] = []
        var after: UInt64 = 0
        var more = true
        while more {
            let s = conn.link.open(Open(target: .vault, world: "crash", session: "p", detail: VaultRequest.read(after: after, limit: 1_000).detail))
            conn.flush()
            var end: (UInt64, Bool)?
            let ok = pumpUntil([conn], milliseconds: 20_000) {
                for m in r.data where m.0 == s {
                    if case .end(let n, let m)? = m.1.withUnsafeBytes({ VaultMessage.decode($0) }) { end = (n, m) }
                }
                return end != nil
            }
            try #require(ok, "run \(iteration): no END from the vault")
            for m in r.data where m.0 == s {
                guard case .record(let e)? = m.1.withUnsafeBytes({ VaultMessage.decode($0) }) else { continue }
                let text = String(decoding: e.payload, as: UTF8.self)
                stored.append(UInt64(text.split(separator: " ")[1])!)
                sessionSequences.append(e.sessionSequence)
            }
            r.data.removeAll { $0.0 == s }
            (after, more) = end!
        }
        #expect(sessionSequences == (0..<sessionSequences.count).map { UInt64($0 + 1) },
                "run \(iteration): session sequence numbers have a gap")
        #expect(zip(stored, stored.dropFirst()).allSatisfy { $0 < $1 }, "run \(iteration): an event is duplicated or out of order")
        let present = Set(stored)
        let lost = acknowledged.filter { !present.contains($0) }
        #expect(lost.isEmpty, "run \(iteration): \(lost.count) acknowledged events lost, first \(lost.prefix(5))")
    }
}

@Suite("soulfra vault on its own", .enabled(if: uringAvailable, "io_uring is not available here"), .serialized)
struct VaultProcessTests {
    @Test("a separate vault process attaches to every broker loop, stores and serves events, and stops on SIGTERM")
    func separateProcess() throws {
        let dir = NSTemporaryDirectory() + "soulfra-vaultproc-\(getpid())"
        try? FileManager.default.removeItem(atPath: dir)
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try "{}".write(toFile: dir + "/empty.json", atomically: true, encoding: .utf8)
        let server = try BrokerServer.start(testConfig {
            $0.vaultDirectory = ""
            $0.loopCount = 2
        })
        defer { server.stop() }
        func startVault() throws -> (Process, Pipe) {
            let p = Process()
            p.executableURL = URL(fileURLWithPath: soulfraBinary)
            p.arguments = ["vault", "--config", dir + "/empty.json", "--broker", server.unixPath!, "--directory", dir + "/vault"]
            p.environment = ["SOULFRA_VAULT_TOKEN": testTokens.vault]
            let err = Pipe()
            p.standardError = err
            try p.run()
            return (p, err)
        }
        var (vault, log) = try startVault()
        defer { if vault.isRunning { kill(vault.processIdentifier, SIGKILL); vault.waitUntilExit() } }
        // Both loops get a vault link (worlds on either loop are stored).
        for _ in 0..<3_000 where (server.snapshotNow()?.linksByKind[Int(PeerKind.vault.rawValue)] ?? 0) < 2 { usleep(10_000) }
        #expect(server.snapshotNow()?.linksByKind[Int(PeerKind.vault.rawValue)] == 2)
        var stored: [String: Int] = [:]
        for world in ["playground", "arena"] {
            let inst = VaultClient(try server.connect(.instance, world: world))
            let s = inst.conn.link.open(Open(target: .vault, world: world, session: "x", detail: "append"))
            for i in 0..<30 { #expect(inst.append(s, "\(world) \(i)")) }
            inst.conn.flush()
            #expect(pumpUntil([inst.conn], milliseconds: 10_000) { inst.acks(s).count == 30 }, "\(world)")
            stored[world] = inst.read(world: world, session: "x", .read(after: 0, limit: 100)).events.count
            inst.conn.close()
        }
        #expect(stored == ["playground": 30, "arena": 30])
        kill(vault.processIdentifier, SIGTERM)
        for _ in 0..<500 where vault.isRunning { usleep(10_000) }
        #expect(!vault.isRunning && vault.terminationStatus == 0)
        if vault.isRunning { kill(vault.processIdentifier, SIGKILL) }  // a read to the end waits for the writer to go
        vault.waitUntilExit()
        let text = String(decoding: log.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        #expect(text.contains("attached to broker loop 0 of 2") && text.contains("attached to broker loop 1 of 2"), "\(text)")

        // A new vault process finds what the first stored.
        (vault, log) = try startVault()
        for _ in 0..<3_000 where (server.snapshotNow()?.linksByKind[Int(PeerKind.vault.rawValue)] ?? 0) < 2 { usleep(10_000) }
        let inst = VaultClient(try server.connect(.instance, world: "arena"))
        #expect(inst.read(world: "arena", session: "x", .read(after: 0, limit: 100)).events.map { String(decoding: $0.payload, as: UTF8.self) }
                == (0..<30).map { "arena \($0)" })
    }

    @Test("a stalled vault (SIGSTOP) slows its producers through credit; the broker holds a bounded amount; all flows again on SIGCONT")
    func stalledVault() throws {
        let dir = NSTemporaryDirectory() + "soulfra-vaultstall-\(getpid())"
        try? FileManager.default.removeItem(atPath: dir)
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try "{}".write(toFile: dir + "/empty.json", atomically: true, encoding: .utf8)
        let server = try BrokerServer.start(testConfig { $0.vaultDirectory = "" })
        defer { server.stop() }
        let vault = Process()
        vault.executableURL = URL(fileURLWithPath: soulfraBinary)
        vault.arguments = ["vault", "--config", dir + "/empty.json", "--broker", server.unixPath!, "--directory", dir + "/vault"]
        vault.environment = ["SOULFRA_VAULT_TOKEN": testTokens.vault]
        vault.standardError = FileHandle.nullDevice
        try vault.run()
        defer {
            kill(vault.processIdentifier, SIGCONT)
            kill(vault.processIdentifier, SIGKILL)
            vault.waitUntilExit()
        }
        for _ in 0..<3_000 where (server.snapshotNow()?.linksByKind[Int(PeerKind.vault.rawValue)] ?? 0) < 1 { usleep(10_000) }
        let inst = VaultClient(try server.connect(.instance, world: "playground"))
        let streams = (0..<4).map { inst.conn.link.open(Open(target: .vault, world: "playground", session: "p\($0)", detail: "append")) }
        var sent = [Int](repeating: 0, count: 4)
        let event = String(repeating: "e", count: 500)
        func produce() {
            for (k, s) in streams.enumerated() {
                while inst.conn.link.window(s).map({ $0.bytes > 600 && $0.frames > 0 }) ?? false, inst.append(s, event) { sent[k] += 1 }
            }
        }
        let acked = { streams.map { inst.acks($0).count } }
        // Flowing: the producers send as fast as acks and credit allow.
        pumpUntil([inst.conn], milliseconds: 3_000) {
            produce()
            return acked().reduce(0, +) > 200
        }
        #expect(acked().reduce(0, +) > 200)
        kill(vault.processIdentifier, SIGSTOP)
        // Stalled: whatever the producers try, they run out of window; the broker holds at most what credit allowed.
        let stalledAt = sent
        pumpUntil([inst.conn], milliseconds: 1_500) {
            produce()
            return false
        }
        let grown = zip(sent, stalledAt).map { $0 - $1 }
        let credit = Int(inst.conn.link.welcome!.streamCreditBytes)
        #expect(grown.allSatisfy { $0 * 501 <= credit + 501 }, "a producer kept sending into a stalled vault: \(grown)")
        let held = try #require(server.snapshotNow()).queueBytesByKind[Int(PeerKind.vault.rawValue)]
        #expect(held <= 4 * credit + (64 << 10), "the broker holds \(held) bytes for the stalled vault")
        let sentWhileStalled = sent.reduce(0, +)
        kill(vault.processIdentifier, SIGCONT)
        // Flowing again: every event sent is acknowledged.
        let drained = pumpUntil([inst.conn], milliseconds: 10_000) {
            acked().reduce(0, +) == sentWhileStalled
        }
        #expect(drained, "acked \(acked()) of \(sent)")
    }
}

