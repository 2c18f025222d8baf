import Foundation
import Testing
@testable import SoulfraControl

func scratchDirectory() -> String {
    "\(NSTemporaryDirectory())soulfra-control-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
}

@Suite("Control plane state (SQLite)")
struct ControlStoreTests {
    @Test("a new directory gets the schema at the last version, in WAL mode; reopened, the data and version are kept")
    func migrationsAndReopen() throws {
        let dir = scratchDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        do {
            let store = try ControlStore(directory: dir)
            #expect(store.schemaVersion == ControlSchema.migrations.count)
            #expect(try store.db.rows("PRAGMA journal_mode") { $0.text(0) } == ["wal"])
            try store.createWorld(WorldRecord(name: "playground", template: "kids", spec: #"{"agents":["cal"]}"#, instances: 1),
                                  actor: "admin", now: 1_000)
        }
        let again = try ControlStore(directory: dir)
        #expect(again.schemaVersion == ControlSchema.migrations.count)
        #expect(try ControlSchema.migrate(again.db) == nil, "nothing left to apply")
        let w = try #require(try again.world("playground"))
        #expect(w.template == "kids" && w.instances == 1 && w.createdAt == 1_000 && w.spec == #"{"agents":["cal"]}"#)
    }

    @Test("a database made by a newer soulfra is refused with what to do; a failed migration applies nothing")
    func newerAndFailedMigrations() throws {
        let dir = scratchDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        do {
            let db = try SQLiteDatabase(path: dir + "/control.db")
            try db.exec("PRAGMA user_version = \(ControlSchema.migrations.count + 1)")
        }
        #expect(throws: ControlError.newerDatabase(path: dir + "/control.db", version: ControlSchema.migrations.count + 1,
                                                   known: ControlSchema.migrations.count)) {
            _ = try ControlStore(directory: dir)
        }
        // A database where migration 1 cannot apply (its table exists already): the error names it, and the
        // version is not moved.
        let other = dir + "/other.db"
        let db = try SQLiteDatabase(path: other)
        try db.exec("CREATE TABLE worlds (x INTEGER)")
        do {
            try ControlSchema.migrate(db)
            Issue.record("the migration applied over a conflicting table")
        } catch {
            guard case .migration(let version, _) = error else { Issue.record("\(error)"); return }
            #expect(version == 1)
        }
        #expect(try db.rows("PRAGMA user_version") { $0.int(0) } == [0])
        #expect(try db.rows("SELECT count(*) FROM sqlite_master WHERE name = 'keys'") { $0.int(0) } == [0], "half a migration stayed")
    }

    @Test("one writer: a second store on the same directory is refused while the first is open, and opens once it closed")
    func oneWriter() throws {
        let dir = scratchDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        var first: ControlStore? = try ControlStore(directory: dir)
        #expect(throws: ControlError.locked(path: dir + "/control.db")) { _ = try ControlStore(directory: dir) }
        // Readers may open it alongside.
        let reader = try SQLiteDatabase(path: dir + "/control.db", readOnly: true)
        #expect(try reader.rows("SELECT count(*) FROM worlds") { $0.int(0) } == [0])
        _ = first
        first = nil
        #expect(try ControlStore(directory: dir).schemaVersion == ControlSchema.migrations.count)
    }

    @Test("worlds: created once (a taken name is refused), scaled, listed, deleted with their instances and keys; every change audited")
    func worlds() throws {
        let dir = scratchDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let store = try ControlStore(directory: dir)
        try store.createWorld(WorldRecord(name: "playground", template: "kids", spec: "{}", instances: 1), actor: "cli", now: 10)
        try store.createWorld(WorldRecord(name: "arena", template: "sports", spec: "{}", instances: 2), actor: "cli", now: 11)
        #expect(throws: ControlError.exists("world playground")) {
            try store.createWorld(WorldRecord(name: "playground", template: "executive", spec: "{}", instances: 1), actor: "cli", now: 12)
        }
        #expect(try store.world("playground")?.template == "kids", "the refused create changed nothing")
        try store.scale(world: "playground", instances: 5, actor: "cli", now: 13)
        #expect(try store.world("playground")?.instances == 5 && store.world("playground")?.updatedAt == 13)
        #expect(throws: ControlError.notFound("world nowhere")) { try store.scale(world: "nowhere", instances: 1, actor: "cli", now: 14) }
        #expect(try store.worlds().map(\.name) == ["arena", "playground"])

        try store.record(instance: InstanceRecord(world: "playground", id: "i-1", driver: "process", handle: "4242", state: "ready",
                                                  startedAt: 13, seenAt: 13))
        try store.record(instance: InstanceRecord(world: "playground", id: "i-1", driver: "process", handle: "4343", state: "ready",
                                                  restarts: 1, startedAt: 20, seenAt: 21))
        #expect(try store.instances(world: "playground").map(\.handle) == ["4343"], "one row per instance, updated")
        try store.addKey(StoredKey(world: "playground", prefix: "sk-slfr_kids_ab", digest: [UInt8](repeating: 1, count: 32),
                                   permissions: ["world_access"], createdAt: 0), actor: "cli", now: 22)
        try store.deleteWorld("playground", actor: "cli", now: 30)
        #expect(try store.world("playground") == nil)
        #expect(try store.instances(world: "playground").isEmpty && store.keys(world: "playground").isEmpty)
        #expect(throws: ControlError.notFound("world playground")) { try store.deleteWorld("playground", actor: "cli", now: 31) }
        // The name can be used again; its releases go on from the old world's.
        try store.createWorld(WorldRecord(name: "playground", template: "custom", spec: #"{"v":2}"#, instances: 1), actor: "cli", now: 32)
        #expect(try store.db.rows("SELECT version, spec FROM releases WHERE world = 'playground' ORDER BY version") { "\($0.int(0)):\($0.text(1))" }
                == ["1:{}", #"2:{"v":2}"#])

        let log = try store.auditLog()
        #expect(log.map(\.action) == ["world.create", "world.create", "world.scale", "key.create", "world.delete", "world.create"],
                "refused and failed actions leave no entry: \(log.map(\.action))")
        #expect(log.map(\.seq) == log.map(\.seq).sorted() && log.allSatisfy { $0.actor == "cli" })
        #expect(log[2].target == "playground" && log[2].detail == "instances=5" && log[2].at == 13)
        #expect(try store.auditLog(after: log[2].seq).count == 3)
    }

    @Test("keys: only the digest and prefix are stored; revoked now or later (a rotation's grace); last use noted; a world's keys go with it")
    func keys() throws {
        let dir = scratchDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let store = try ControlStore(directory: dir)
        try store.createWorld(WorldRecord(name: "playground", template: "kids", spec: "{}", instances: 1), actor: "cli", now: 0)
        let secret = "sk-slfr_kids_ztys355NrAlpgsJGcDc2bhARePpktW1LdIsn"
        let digest = (0..<32).map { UInt8($0 * 7 & 0xFF) }
        let a = try store.addKey(StoredKey(world: "playground", prefix: String(secret.prefix(16)), digest: digest,
                                           permissions: ["world_access", "agent_interaction"], quotas: #"{"rps":50}"#,
                                           createdAt: 0, expiresAt: 1_000), actor: "cli", now: 5)
        #expect(throws: ControlError.exists("a key with this digest")) {
            try store.addKey(StoredKey(world: "playground", prefix: "x", digest: digest, permissions: [], createdAt: 0), actor: "cli", now: 6)
        }
        #expect(throws: ControlError.notFound("world nowhere")) {
            try store.addKey(StoredKey(world: "nowhere", prefix: "x", digest: [9], permissions: [], createdAt: 0), actor: "cli", now: 6)
        }
        let k = try #require(try store.keys(world: "playground").first)
        #expect(k.id == a && k.digest == digest && k.permissions == ["world_access", "agent_interaction"] && k.quotas == #"{"rps":50}"#)
        #expect(k.createdAt == 5 && k.expiresAt == 1_000 && k.live(at: 999) && !k.live(at: 1_000))
        // The secret itself is nowhere in the database file.
        let wal = (try? Data(contentsOf: URL(fileURLWithPath: dir + "/control.db-wal"))) ?? Data()
        let bytes = try Data(contentsOf: URL(fileURLWithPath: dir + "/control.db")) + wal
        #expect(bytes.range(of: Data(secret.utf8)) == nil)

        // Rotation: the old key stays valid for a grace period, then is revoked.
        try store.revokeKey(id: a, at: 500, actor: "cli", now: 100)
        let graced = try #require(try store.keys(world: "playground").first)
        #expect(graced.live(at: 499) && !graced.live(at: 500))
        try store.revokeKey(id: a, at: 200, actor: "cli", now: 150)  // sooner: allowed
        #expect(throws: ControlError.notFound("live key \(a)")) { try store.revokeKey(id: a, at: 300, actor: "cli", now: 160) }
        try store.touch(keys: [(a, 120), (a, 110)])
        #expect(try store.keys().first?.lastUsedAt == 120, "last use never goes back")
        // A key id is never given again, even after its key went with its world: usage rows name keys by id.
        try store.deleteWorld("playground", actor: "cli", now: 200)
        try store.createWorld(WorldRecord(name: "playground", template: "kids", spec: "{}", instances: 1), actor: "cli", now: 201)
        let b = try store.addKey(StoredKey(world: "playground", prefix: "p", digest: [7], permissions: [], createdAt: 0), actor: "cli", now: 202)
        #expect(b > a, "key id \(a) was given again")
    }

    @Test("usage roll-ups add up per key, world and day, and sum per world from a day on")
    func usage() throws {
        let dir = scratchDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let store = try ControlStore(directory: dir)
        try store.addUsage([(1, "playground", "2026-11-28", UsageDelta(requests: 3, interactions: 2, bytesIn: 100, bytesOut: 900, tokensIn: 10, tokensOut: 40)),
                            (2, "playground", "2026-11-29", UsageDelta(requests: 1, interactions: 1, bytesIn: 10, bytesOut: 90, tokensIn: 1, tokensOut: 4))])
        try store.addUsage([(1, "playground", "2026-11-28", UsageDelta(requests: 2, interactions: 1)),
                            (1, "arena", "2026-11-29", UsageDelta(requests: 7))])
        #expect(try store.usage(world: "playground") == UsageDelta(requests: 6, interactions: 4, bytesIn: 110, bytesOut: 990, tokensIn: 11, tokensOut: 44))
        #expect(try store.usage(world: "playground", since: "2026-11-29").requests == 1)
        #expect(try store.usage(world: "arena").requests == 7 && store.usage(world: "nowhere") == UsageDelta())
        #expect(try store.db.rows("SELECT count(*) FROM usage") { $0.int(0) } == [3], "one row per key, world and day")
    }
}
