import Foundation
import Testing
import SoulfraConfig
import SoulfraPeer
import SoulfraPeerLink
import SoulfraServer
import SoulfraTestSupport
import SoulfraVault
import SoulfraWire

/// What a producer or reader saw on its vault streams.
final class VaultClient {
    let conn: PeerConnection
    let recorder = Recorder()
    init(_ conn: PeerConnection) {
        self.conn = conn
        conn.link.delegate = recorder
    }

    func messages(_ stream: UInt32) -> [VaultMessage] {
        recorder.data.filter { $0.0 == stream }.compactMap { d in d.1.withUnsafeBytes { VaultMessage.decode($0) } }
    }

    func acks(_ stream: UInt32) -> [VaultMessage.Acknowledged] {
        messages(stream).flatMap { m -> [VaultMessage.Acknowledged] in
            if case .ack(let a) = m { return a }
            return []
        }
    }

    /// Sends `kind` · `text` as one append.
    func append(_ stream: UInt32, kind: UInt8 = 1, _ text: String) -> Bool {
        ([kind] + Array(text.utf8)).withUnsafeBytes { conn.link.send(stream: stream, payload: $0) }
    }

    /// One page of `request` for `session` of `world`: its events and its END.
    func read(world: String, session: String, _ request: VaultRequest) -> (events: [StoredEvent], end: VaultMessage?) {
        let s = conn.link.open(Open(target: .vault, world: world, session: session, detail: request.detail))
        conn.flush()
        var end: VaultMessage?
        pumpUntil([conn], milliseconds: 10_000) {
            end = messages(s).first { if case .end = $0 { true } else { false } }
            return end != nil || recorder.closedStreams.contains { $0.0 == s }
        }
        let events = messages(s).compactMap { if case .record(let e) = $0 { e } else { nil } }
        return (events, end)
    }
}

@Suite("The vault in the daemon", .enabled(if: uringAvailable, "io_uring is not available here"), .serialized)
struct VaultPeerTests {
    @Test("an instance's appends are acknowledged once durable, read back in order, and survive a restart")
    func appendReadRestart() throws {
        var config = testConfig()
        config.vaultDirectory = NSTemporaryDirectory() + "soulfra-vault-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        defer { try? FileManager.default.removeItem(atPath: config.vaultDirectory) }
        var server = try BrokerServer.start(config)
        var inst = VaultClient(try server.connect(.instance, world: "playground"))
        let s = inst.conn.link.open(Open(target: .vault, world: "playground", session: "u1", detail: "append"))
        for i in 0..<50 { #expect(inst.append(s, "event \(i)")) }
        inst.conn.flush()
        #expect(pumpUntil([inst.conn], milliseconds: 10_000) { inst.acks(s).count == 50 }, "acks: \(inst.acks(s).count)")
        #expect(inst.acks(s).map(\.sessionSequence) == Array(1...50))
        #expect(inst.acks(s).map(\.sequence) == Array(1...50))
        let page = inst.read(world: "playground", session: "u1", .read(after: 20, limit: 10))
        #expect(page.events.map(\.sessionSequence) == Array(21...30))
        #expect(page.events.map { String(decoding: $0.payload, as: UTF8.self) } == (20..<30).map { "event \($0)" })
        #expect(page.end == .end(next: 30, more: true))
        let other = inst.read(world: "playground", session: "nobody", .read(after: 0, limit: 10))
        #expect(other.events.isEmpty && other.end == .end(next: 0, more: false))
        inst.conn.close()
        server.stop()

        // A new daemon on the same directory finds all of it, and numbers go on.
        server = try BrokerServer.start(config)
        defer { server.stop() }
        inst = VaultClient(try server.connect(.instance, world: "playground"))
        let all = inst.read(world: "playground", session: "u1", .read(after: 0, limit: 1_000))
        #expect(all.events.count == 50 && all.end == .end(next: 50, more: false))
        let s2 = inst.conn.link.open(Open(target: .vault, world: "playground", session: "u1", detail: "append"))
        #expect(inst.append(s2, "after restart"))
        inst.conn.flush()
        #expect(pumpUntil([inst.conn], milliseconds: 10_000) { inst.acks(s2).count == 1 })
        #expect(inst.acks(s2).first == .init(sequence: 51, sessionSequence: 51))
        let replay = inst.read(world: "playground", session: "", .replay(fromMilliseconds: 0, toMilliseconds: .max, after: 45, limit: 100))
        #expect(replay.events.map(\.sequence) == Array(46...51))
        let (status, metrics) = try curl(["-H", "Authorization: Bearer test-admin-token-0001", "http://127.0.0.1:\(server.adminPort)/metrics"])
        #expect(status == 200)
        #expect(metrics.contains("soulfra_vault_appends_acknowledged_total 1\n"), "\(metrics)")
        #expect(metrics.contains("soulfra_vault_batch_appends_count 1\n") && metrics.contains("soulfra_vault_worlds 1\n"))
        #expect(metrics.contains("soulfra_loop_file_reads_total{loop=\"0\"}"))
    }

    @Test("a world seen for the first time is opened off the loop: appends that came meanwhile are stored in order; one that cannot be opened fails them with its errno")
    func openedOffTheLoop() throws {
        let config = testConfig {
            $0.instanceTokens["blocked"] = testTokens.instance
            $0.instanceTokens["fresh"] = testTokens.instance
        }
        let server = try BrokerServer.start(config)
        defer { server.stop() }
        // A file where a world's directory would go: that world cannot be opened (ENOTDIR).
        #expect(FileManager.default.createFile(atPath: config.vaultDirectory + "/blocked", contents: Data("x".utf8)))
        let blocked = VaultClient(try server.connect(.instance, world: "blocked"))
        let b = blocked.conn.link.open(Open(target: .vault, world: "blocked", session: "a", detail: "append"))
        for i in 0..<5 { #expect(blocked.append(b, "e\(i)")) }
        blocked.conn.flush()
        func failed() -> [(count: UInt32, errno: UInt16)] {
            blocked.messages(b).compactMap { if case .fail(let n, let e, _, _) = $0 { (n, e) } else { nil } }
        }
        #expect(pumpUntil([blocked.conn], milliseconds: 10_000) { failed().reduce(0) { $0 + $1.count } == 5 })
        #expect(failed().allSatisfy { $0.errno == UInt16(ENOTDIR) }, "\(failed())")
        #expect(blocked.acks(b).isEmpty)

        // A new world next to it: 300 appends sent at once, the first of them while its directory is made.
        #expect(!FileManager.default.fileExists(atPath: config.vaultDirectory + "/fresh"))
        let inst = VaultClient(try server.connect(.instance, world: "fresh"))
        let s = inst.conn.link.open(Open(target: .vault, world: "fresh", session: "f", detail: "append"))
        for i in 0..<300 { #expect(inst.append(s, "event \(i)")) }
        inst.conn.flush()
        #expect(pumpUntil([inst.conn], milliseconds: 10_000) { inst.acks(s).count == 300 }, "acks: \(inst.acks(s).count)")
        #expect(inst.acks(s).map(\.sessionSequence) == Array(1...300))
        let page = inst.read(world: "fresh", session: "f", .read(after: 0, limit: 1_000))
        #expect(page.events.map { String(decoding: $0.payload, as: UTF8.self) } == (0..<300).map { "event \($0)" })
        #expect(FileManager.default.fileExists(atPath: config.vaultDirectory + "/fresh/00000001.seg"))
    }

    @Test("a world whose opening blocks (its key file is a FIFO no one writes) holds only its own appends: the loop serves other worlds meanwhile")
    func slowOpenBlocksNoLoop() throws {
        let keys = NSTemporaryDirectory() + "soulfra-keys-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        defer { try? FileManager.default.removeItem(atPath: keys) }
        try FileManager.default.createDirectory(atPath: keys, withIntermediateDirectories: true)
        #expect(mkfifo(keys + "/slow.key", 0o600) == 0)
        let config = testConfig {
            $0.vaultKeyDirectory = keys
            $0.instanceTokens["slow"] = testTokens.instance
            $0.instanceTokens["fresh"] = testTokens.instance
        }
        let server = try BrokerServer.start(config)
        // Whatever happens, the opener is let go before the daemon stops (a writer for the FIFO: a key).
        var released = false
        func release() {
            guard !released else { return }
            released = true
            var fd = open(keys + "/slow.key", O_WRONLY | O_NONBLOCK)
            for _ in 0..<300 where fd < 0 && errno == ENXIO {  // no reader yet: the opener has not reached it
                usleep(10_000)
                fd = open(keys + "/slow.key", O_WRONLY | O_NONBLOCK)
            }
            guard fd >= 0 else { return }
            let key = [UInt8](repeating: 7, count: 32) + [0, 0, 0, 1]
            _ = key.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
            close(fd)
        }
        defer {
            release()
            server.stop()
        }
        let slow = VaultClient(try server.connect(.instance, world: "slow"))
        let a = slow.conn.link.open(Open(target: .vault, world: "slow", session: "s", detail: "append"))
        for i in 0..<3 { #expect(slow.append(a, "waiting \(i)")) }
        slow.conn.flush()
        usleep(100_000)  // the opener is now blocked reading the key
        let fresh = VaultClient(try server.connect(.instance, world: "fresh"))
        let f = fresh.conn.link.open(Open(target: .vault, world: "fresh", session: "f", detail: "append"))
        for i in 0..<10 { #expect(fresh.append(f, "e\(i)")) }
        fresh.conn.flush()
        #expect(pumpUntil([fresh.conn], milliseconds: 5_000) { fresh.acks(f).count == 10 }, "the loop stopped while a world opened")
        #expect(slow.acks(a).isEmpty, "acknowledged before its world was open")
        release()
        #expect(pumpUntil([slow.conn], milliseconds: 10_000) { slow.acks(a).count == 3 })
        #expect(slow.acks(a).map(\.sessionSequence) == [1, 2, 3])
    }

    @Test("a stream that is not a vault request is refused; the link goes on")
    func badRequest() throws {
        let server = try BrokerServer.start(testConfig())
        defer { server.stop() }
        let inst = VaultClient(try server.connect(.instance, world: "playground"))
        let s = inst.conn.link.open(Open(target: .vault, world: "playground", session: "u1", detail: "delete everything"))
        inst.conn.flush()
        #expect(pumpUntil([inst.conn]) { inst.recorder.closedStreams.contains { $0.0 == s } })
        #expect(inst.recorder.closedStreams.first { $0.0 == s }?.1 == .protocolError)
        let page = inst.read(world: "playground", session: "u1", .read(after: 0, limit: 5))
        #expect(page.end == .end(next: 0, more: false))
    }
}

@Suite("Session history through the gateway", .enabled(if: uringAvailable, "io_uring is not available here"), .serialized)
struct SessionHistoryTests {
    @Test("GET /v1/worlds/{w}/sessions/{s} pages a session's history in order with a cursor; permissions and worlds hold")
    func historyPages() throws {
        let server = try BrokerServer.start(gatewayConfig {
            $0.loopCount = 2
            $0.gatewayKeys[0] = TestKeys.record(TestKeys.playground, id: 1, world: "playground",
                                                permissions: [.worldAccess, .agentInteraction, .vaultStorage])
        })
        defer { server.stop() }
        let inst = VaultClient(try server.connect(.instance, world: "playground"))
        let s = inst.conn.link.open(Open(target: .vault, world: "playground", session: "u7", detail: "append"))
        for i in 0..<25 { #expect(inst.append(s, #"{"text":"line \#(i)\n\"quoted\""}"#)) }
        inst.conn.flush()
        #expect(pumpUntil([inst.conn], milliseconds: 10_000) { inst.acks(s).count == 25 })
        let base = server.h2c + "/v1/worlds/playground/sessions/u7"
        var seqs: [Int] = []
        var texts: [String] = []
        var url = base + "?limit=10"
        var pages = 0
        while pages < 10 {
            pages += 1
            let (status, body) = try call(url)
            try #require(status == 200, "\(status) \(body)")
            let page = try #require(try JSONSerialization.jsonObject(with: Data(body.utf8)) as? [String: Any])
            #expect(page["world"] as? String == "playground" && page["session"] as? String == "u7")
            for e in page["events"] as? [[String: Any]] ?? [] {
                seqs.append(e["seq"] as? Int ?? -1)
                texts.append(e["data"] as? String ?? "")
            }
            guard page["more"] as? Bool == true, let next = page["next"] as? String else { break }
            url = server.h2c + next
        }
        #expect(pages == 3)
        #expect(seqs == Array(1...25))
        #expect(texts.first == #"{"text":"line 0\n\"quoted\""}"#)
        // An empty session is an empty page; a bad cursor is 400; the key must allow vault_storage and the world.
        let (emptyStatus, empty) = try call(server.h2c + "/v1/worlds/playground/sessions/nobody")
        #expect(emptyStatus == 200 && empty.contains(#""events":[]"#) && empty.contains(#""more":false"#), "\(empty)")
        #expect(try call(base + "?after=x").0 == 400)
        #expect(try call(base + "?limit=0").0 == 400)
        #expect(try call(base, key: TestKeys.limited).0 == 403)
        #expect(try call(server.h2c + "/v1/worlds/arena/sessions/u7", key: TestKeys.playground).0 == 403)
    }

    @Test("with no vault in the daemon, a history read is 503 vault_unavailable with Retry-After")
    func noVault() throws {
        let server = try BrokerServer.start(gatewayConfig {
            $0.vaultDirectory = ""
            $0.gatewayKeys[0] = TestKeys.record(TestKeys.playground, id: 1, world: "playground",
                                                permissions: [.worldAccess, .agentInteraction, .vaultStorage])
        })
        defer { server.stop() }
        let (status, body) = try call(server.h2c + "/v1/worlds/playground/sessions/u1", key: TestKeys.playground, ["-i"])
        #expect(status == 503 && body.contains("vault_unavailable") && body.lowercased().contains("retry-after: 1"), "\(body)")
    }
}

@Suite("The vault encrypted at rest", .enabled(if: uringAvailable, "io_uring is not available here"), .serialized)
struct VaultEncryptionTests {
    /// Every file under `dir`, whole.
    func filesUnder(_ dir: String) -> [(String, [UInt8])] {
        let e = FileManager.default.enumerator(atPath: dir)
        var out: [(String, [UInt8])] = []
        while let rel = e?.nextObject() as? String {
            if let d = FileManager.default.contents(atPath: dir + "/" + rel) { out.append((rel, Array(d))) }
        }
        return out
    }

    @Test("an encrypted world's files hold no plaintext; reads decrypt; the key lives outside and survives a restart")
    func encryptedAtRest() throws {
        let root = NSTemporaryDirectory() + "soulfra-sealed-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        defer { try? FileManager.default.removeItem(atPath: root) }
        var config = testConfig {
            $0.vaultDirectory = root + "/vault"
            $0.vaultKeyDirectory = root + "/keys"
            $0.vaultEncryptedWorlds = ["playground"]
        }
        let secret = "TOP-SECRET-PLAINTEXT-4242"
        var server = try BrokerServer.start(config)
        var inst = VaultClient(try server.connect(.instance, world: "playground"))
        let s = inst.conn.link.open(Open(target: .vault, world: "playground", session: "private", detail: "append"))
        for i in 0..<20 { #expect(inst.append(s, "\(secret) number \(i)")) }
        inst.conn.flush()
        #expect(pumpUntil([inst.conn], milliseconds: 10_000) { inst.acks(s).count == 20 })
        let page = inst.read(world: "playground", session: "private", .read(after: 0, limit: 100))
        #expect(page.events.map { String(decoding: $0.payload, as: UTF8.self) } == (0..<20).map { "\(secret) number \($0)" })
        inst.conn.close()
        server.stop()

        let onDisk = filesUnder(root + "/vault")
        #expect(onDisk.contains { $0.0.hasSuffix(".seg") && $0.1.count > 20 * 40 }, "no segment written: \(onDisk.map(\.0))")
        let needle = Array(secret.utf8)
        for (name, bytes) in onDisk {
            #expect(!bytes.windows(ofCount: needle.count).contains { $0.elementsEqual(needle) }, "plaintext found in \(name)")
        }
        #expect(FileManager.default.fileExists(atPath: root + "/keys/playground.key"))
        #expect(!onDisk.contains { $0.0.hasSuffix(".key") }, "a key inside the vault directory")

        // A new daemon reads it back with the stored key, and writes on under a new epoch.
        server = try BrokerServer.start(config)
        inst = VaultClient(try server.connect(.instance, world: "playground"))
        let again = inst.read(world: "playground", session: "private", .read(after: 0, limit: 100))
        #expect(again.events.count == 20 && again.events.last.map { String(decoding: $0.payload, as: UTF8.self) } == "\(secret) number 19")
        inst.conn.close()
        server.stop()

        // Without the key the events do not open: the read fails rather than return ciphertext as data.
        try FileManager.default.removeItem(atPath: root + "/keys/playground.key")
        config.vaultEncryptedWorlds = []
        server = try BrokerServer.start(config)
        defer { server.stop() }
        inst = VaultClient(try server.connect(.instance, world: "playground"))
        let locked = inst.read(world: "playground", session: "private", .read(after: 0, limit: 100))
        #expect(locked.events.isEmpty && locked.end == nil)
        #expect(inst.recorder.closedStreams.last?.1 == .internalError)
    }
}

extension Array where Element == UInt8 {
    /// Every run of `n` consecutive bytes.
    func windows(ofCount n: Int) -> [ArraySlice<UInt8>] {
        count < n ? [] : (0...(count - n)).map { self[$0..<($0 + n)] }
    }
}

@Suite("Replay on the admin listener", .enabled(if: uringAvailable, "io_uring is not available here"), .serialized)
struct VaultReplayTests {
    @Test("GET /admin/v1/worlds/{w}/replay pages every session's events by time, from whichever loop stores the world")
    func replay() throws {
        let server = try BrokerServer.start(testConfig { $0.loopCount = 3 })
        defer { server.stop() }
        // "playground" lives on loop 0 of three, with the admin listener; "arena" on loop 1.
        #expect(Wire.loop(forWorld: "playground", count: 3) == 0 && Wire.loop(forWorld: "arena", count: 3) == 1)
        for world in ["playground", "arena"] {
            let inst = VaultClient(try server.connect(.instance, world: world))
            var streams: [UInt32] = []
            for session in ["a", "b"] {
                let s = inst.conn.link.open(Open(target: .vault, world: world, session: session, detail: "append"))
                for i in 0..<6 { #expect(inst.append(s, "\(world) \(session) \(i)")) }
                streams.append(s)
            }
            inst.conn.flush()
            #expect(pumpUntil([inst.conn], milliseconds: 10_000) { streams.allSatisfy { inst.acks($0).count == 6 } })
            inst.conn.close()
        }
        let base = "http://127.0.0.1:\(server.adminPort)/admin/v1/worlds"
        let auth = ["-H", "Authorization: Bearer test-admin-token-0001"]
        for world in ["playground", "arena"] {
            var seen: [String] = []
            var url = "\(base)/\(world)/replay?limit=5"
            for _ in 0..<5 {
                let (status, body) = try curl(auth + [url])
                try #require(status == 200, "\(status) \(body)")
                let page = try #require(try JSONSerialization.jsonObject(with: Data(body.utf8)) as? [String: Any])
                seen += (page["events"] as? [[String: Any]] ?? []).map { "\($0["session"] ?? "")/\($0["seq"] ?? "")" }
                guard page["more"] as? Bool == true, let next = page["next"] as? String else { break }
                url = "http://127.0.0.1:\(server.adminPort)" + next
            }
            #expect(seen.count == 12 && Set(seen).count == 12, "\(world): \(seen)")
        }
        // A time window with nothing in it; bad fields; the token is required.
        let (_, empty) = try curl(auth + ["\(base)/arena/replay?from_ms=1&to_ms=2"])
        #expect(empty.contains(#""events":[]"#), "\(empty)")
        #expect(try curl(auth + ["\(base)/arena/replay?limit=0"]).0 == 400)
        #expect(try curl(auth + ["\(base)/arena/replay?when=now"]).0 == 400)
        #expect(try curl(["\(base)/arena/replay"]).0 == 401)
    }
}

extension VaultClient {
    /// Appends ten ~110-byte events a round, each round acknowledged before the next (so a small segment size
    /// rotates the log between rounds); how many were acknowledged when it stopped (at the first round not
    /// acknowledged within 10 s).
    func appendInRounds(_ s: UInt32, rounds: Int) -> Int {
        var sent = 0
        for round in 0..<rounds {
            for _ in 0..<10 {
                #expect(append(s, "event \(sent) " + String(repeating: "r", count: 100)))
                sent += 1
            }
            conn.flush()
            guard pumpUntil([conn], milliseconds: 10_000, { acks(s).count == sent }) else {
                Issue.record("round \(round): \(acks(s).count) of \(sent) acknowledged")
                return acks(s).count
            }
        }
        return sent
    }
}

@Suite("Vault purge", .enabled(if: uringAvailable, "io_uring is not available here"), .serialized)
struct VaultPurgeTests {
    @Test("a purge that comes while the world is still being opened: the opening is given up, and the next append makes a fresh world on disk (never one on deleted files)")
    func purgeDuringOpening() throws {
        let config = testConfig()
        let server = try BrokerServer.start(config)
        defer { server.stop() }
        let inst = VaultClient(try server.connect(.instance, world: "playground"))
        // The purge lands at different points of the opening: before it, during it, after it.
        for round in 0..<12 {
            let s = inst.conn.link.open(Open(target: .vault, world: "playground", session: "before-\(round)", detail: "append"))
            #expect(inst.append(s, "before the purge"))
            inst.conn.flush()
            usleep(useconds_t(round * 150))
            let purged = DispatchSemaphore(value: 0)
            server.purgeVault(world: "playground") { _ in purged.signal() }
            #expect(purged.wait(timeout: .now() + 10) == .success, "round \(round): the purge finished")
            let after = inst.conn.link.open(Open(target: .vault, world: "playground", session: "after-\(round)", detail: "append"))
            #expect(inst.append(after, "after the purge \(round)"))
            inst.conn.flush()
            try #require(pumpUntil([inst.conn], milliseconds: 10_000) { inst.acks(after).count == 1 }, "round \(round): the append after the purge is stored")
            let files = (try? FileManager.default.contentsOfDirectory(atPath: config.vaultDirectory + "/playground")) ?? []
            try #require(files.contains { $0.hasSuffix(".seg") }, "round \(round): the acknowledged event is in a file on disk: \(files)")
            let read = inst.read(world: "playground", session: "after-\(round)", .read(after: 0, limit: 10)).events
            #expect(read.count == 1, "round \(round): \(read.count) events")
        }
    }
}

@Suite("Vault retention", .enabled(if: uringAvailable, "io_uring is not available here"), .serialized)
struct VaultRetentionTests {
    @Test("opening worlds and making segments does not wait for the process's shared dispatch pool, however many of its threads are blocked")
    func offLoopWorkHasItsOwnThreads() throws {
        // Other code in the process (a concurrent queue's callers stuck in reads) can hold every thread of
        // libdispatch's shared pool; the vault's blocking work must go on regardless.
        let pool = SharedPoolBlocker()
        defer { pool.release() }
        let config = testConfig { $0.vault.segmentBytes = 4_096 }
        let server = try BrokerServer.start(config)
        defer { server.stop() }
        let inst = VaultClient(try server.connect(.instance, world: "playground"))
        let s = inst.conn.link.open(Open(target: .vault, world: "playground", session: "p", detail: "append"))
        try #require(inst.appendInRounds(s, rounds: 6) == 60)
        let segments = ((try? FileManager.default.contentsOfDirectory(atPath: config.vaultDirectory + "/playground")) ?? []).filter { $0.hasSuffix(".seg") }
        #expect(segments.count > 1, "the log moved to new segments: \(segments)")
    }

    @Test("a world's log moves to new segments as it grows, and retention drops whole oldest segments past the byte bound")
    func retentionBySize() throws {
        let config = testConfig {
            $0.vault.segmentBytes = 4_096
            $0.vault.retentionMaxBytes = 8_192
        }
        let server = try BrokerServer.start(config)
        defer { server.stop() }
        let inst = VaultClient(try server.connect(.instance, world: "playground"))
        let s = inst.conn.link.open(Open(target: .vault, world: "playground", session: "r", detail: "append"))
        let sent = inst.appendInRounds(s, rounds: 30)
        #expect(sent == 300)
        // Retention runs once a second on the loop's tick, once rotation has made segments to drop: each new segment
        // is made (and synced) off the loop, which a disk busy with other tests' syncs can slow to seconds.
        var first: UInt64 = 1
        for _ in 0..<3_000 where first == 1 {
            usleep(10_000)
            first = inst.read(world: "playground", session: "r", .read(after: 0, limit: 1)).events.first?.sessionSequence ?? 1
        }
        #expect(first > 1, "nothing was dropped")
        // Files are removed through the ring, oldest first, one at a time: they go shortly after the index drops them.
        func files() -> [String] {
            ((try? FileManager.default.contentsOfDirectory(atPath: config.vaultDirectory + "/playground")) ?? []).filter { $0.hasSuffix(".seg") }.sorted()
        }
        for _ in 0..<500 where files().count > 4 { usleep(10_000) }
        #expect(files().count <= 4, "\(files())")
        // Retention may take a segment a tick until the log is under its bound (a loaded machine sees several
        // ticks' worth at once): what is kept is read once the oldest event has stayed put across two ticks.
        var settled = inst.read(world: "playground", session: "r", .read(after: 0, limit: 1)).events.first?.sessionSequence ?? 0
        for _ in 0..<20 {
            usleep(1_200_000)
            let now = inst.read(world: "playground", session: "r", .read(after: 0, limit: 1)).events.first?.sessionSequence ?? 0
            if now == settled { break }
            settled = now
        }
        let kept = inst.read(world: "playground", session: "r", .read(after: 0, limit: 1_000)).events
        #expect(kept.last?.sessionSequence == UInt64(sent), "the newest events are kept")
        #expect(kept.map(\.sessionSequence) == Array(settled...UInt64(sent)), "what is kept has no gap")
        let (_, metrics) = try curl(["-H", "Authorization: Bearer test-admin-token-0001", "http://127.0.0.1:\(server.adminPort)/metrics"])
        #expect(!metrics.contains("soulfra_vault_segments_dropped_total 0\n") && metrics.contains("soulfra_vault_segments_dropped_total "))
        inst.conn.close()
        server.stop()

        // Started again on the same directory: the oldest segment left starts past record 1, and that is fine.
        let again = try BrokerServer.start(config)
        defer { again.stop() }
        let reader = VaultClient(try again.connect(.instance, world: "playground"))
        let reopened = reader.read(world: "playground", session: "r", .read(after: 0, limit: 1_000)).events
        // What was kept, or less from its start if retention took one more segment before the stop (a rotation
        // finishing late): always the newest events, with no gap.
        let reopenedFirst = reopened.first?.sessionSequence ?? 0
        #expect(reopenedFirst >= (kept.first?.sessionSequence ?? 0) && reopened.map(\.sessionSequence) == Array(reopenedFirst...UInt64(sent)),
                "the world did not open again after retention: \(reopened.map(\.sessionSequence).prefix(5))…")
        let s2 = reader.conn.link.open(Open(target: .vault, world: "playground", session: "r", detail: "append"))
        #expect(reader.append(s2, "after restart"))
        reader.conn.flush()
        #expect(pumpUntil([reader.conn], milliseconds: 10_000) { reader.acks(s2).count == 1 })
        #expect(reader.acks(s2).first?.sessionSequence == UInt64(sent + 1))
    }
}
