import Foundation
import Testing
import SoulfraConfig
import SoulfraPeer
import SoulfraPeerLink
import SoulfraServer
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
