#if canImport(Glibc)
import Glibc
#endif

/// A world as wanted: what `deploy` asked for (the template's name, the spec as JSON) and how many instances.
public struct WorldRecord: Equatable, Sendable {
    public var name: String
    public var template: String
    public var spec: String
    public var instances: Int
    public var state: String
    public var createdAt: Int64
    public var updatedAt: Int64
    /// When `deployment_complete` went out (nil: not yet).
    public var announcedAt: Int64?

    public init(name: String, template: String, spec: String, instances: Int, state: String = "active",
                createdAt: Int64 = 0, updatedAt: Int64 = 0, announcedAt: Int64? = nil) {
        self.name = name
        self.template = template
        self.spec = spec
        self.instances = instances
        self.state = state
        self.createdAt = createdAt
        self.updatedAt = updatedAt
        self.announcedAt = announcedAt
    }
}

/// An instance as last observed: which driver runs it, its handle there (a pid, a container id), its state.
public struct InstanceRecord: Equatable, Sendable {
    public var world: String
    public var id: String
    public var driver: String
    public var handle: String
    public var state: String
    public var restarts: Int
    public var startedAt: Int64
    public var seenAt: Int64

    public init(world: String, id: String, driver: String, handle: String, state: String, restarts: Int = 0,
                startedAt: Int64, seenAt: Int64) {
        self.world = world
        self.id = id
        self.driver = driver
        self.handle = handle
        self.state = state
        self.restarts = restarts
        self.startedAt = startedAt
        self.seenAt = seenAt
    }
}

/// A key as stored: its SHA-256 digest and visible prefix, never the key.
public struct StoredKey: Equatable, Sendable {
    public var id: Int64
    public var world: String
    public var prefix: String
    public var digest: [UInt8]
    public var permissions: [String]
    public var quotas: String
    public var createdAt: Int64
    public var expiresAt: Int64?
    public var revokedAt: Int64?
    public var lastUsedAt: Int64?

    public init(id: Int64 = 0, world: String, prefix: String, digest: [UInt8], permissions: [String], quotas: String = "{}",
                createdAt: Int64, expiresAt: Int64? = nil, revokedAt: Int64? = nil, lastUsedAt: Int64? = nil) {
        self.id = id
        self.world = world
        self.prefix = prefix
        self.digest = digest
        self.permissions = permissions
        self.quotas = quotas
        self.createdAt = createdAt
        self.expiresAt = expiresAt
        self.revokedAt = revokedAt
        self.lastUsedAt = lastUsedAt
    }

    /// Usable at `now`: not revoked, not expired.
    public func live(at now: Int64) -> Bool { revokedAt.map { $0 > now } ?? true && (expiresAt.map { $0 > now } ?? true) }
}

/// Counts to add to a key's usage for one day.
public struct UsageDelta: Equatable, Sendable {
    public var requests: Int64 = 0
    public var interactions: Int64 = 0
    public var bytesIn: Int64 = 0
    public var bytesOut: Int64 = 0
    public var tokensIn: Int64 = 0
    public var tokensOut: Int64 = 0
    public init(requests: Int64 = 0, interactions: Int64 = 0, bytesIn: Int64 = 0, bytesOut: Int64 = 0, tokensIn: Int64 = 0, tokensOut: Int64 = 0) {
        self.requests = requests
        self.interactions = interactions
        self.bytesIn = bytesIn
        self.bytesOut = bytesOut
        self.tokensIn = tokensIn
        self.tokensOut = tokensOut
    }
}

/// How usage is grouped within each world.
public enum UsageGroup: String, Sendable { case world, key, day }

/// One world's usage, or one key's or day's within it (`group`: the key id or the day).
public struct UsageRow: Equatable, Sendable {
    public var world: String
    public var group: String
    public var prefix: String
    public var delta: UsageDelta
}

/// One admin action, as the audit log keeps it.
public struct AuditEntry: Equatable, Sendable {
    public var seq: Int64
    public var at: Int64
    public var actor: String
    public var action: String
    public var target: String
    public var detail: String
}

/// The control plane's state in `<data directory>/control.db` (SQLite, WAL): worlds as wanted, instances as
/// observed, keys, usage roll-ups, releases and the audit log. One writer: the daemon that holds
/// `control.lock` (flock) — a second daemon on the same directory is refused, readers (the CLI reading
/// directly, backups) may open the database read-only alongside. Every change that an operator made is in
/// the same transaction as its audit entry.
public final class ControlStore {
    public let db: SQLiteDatabase
    public let directory: String
    private var lockFD: Int32 = -1

    /// Opens the state under `directory` (made if missing) as its one writer, bringing the schema up to date.
    public init(directory: String) throws(ControlError) {
        self.directory = directory
        var path = ""
        for part in directory.split(separator: "/") {
            path += "/" + part
            if mkdir(path, 0o700) != 0 && errno != EEXIST {
                throw .database(SQLiteError(code: 14, message: "cannot make \(path): \(String(cString: strerror(errno)))", sql: ""))
            }
        }
        let lockPath = directory + "/control.lock"
        lockFD = open(lockPath, O_RDWR | O_CREAT | O_CLOEXEC, 0o600)
        guard lockFD >= 0, flock(lockFD, LOCK_EX | LOCK_NB) == 0 else {
            if lockFD >= 0 { close(lockFD) }
            throw .locked(path: directory + "/control.db")
        }
        do {
            db = try SQLiteDatabase(path: directory + "/control.db")
        } catch {
            close(lockFD)
            throw .database(error)
        }
        try ControlSchema.migrate(db)
    }

    deinit {
        if lockFD >= 0 { close(lockFD) }
    }

    /// The schema version of the database.
    public var schemaVersion: Int {
        (try? db.rows("PRAGMA user_version") { Int($0.int(0)) }.first) ?? 0
    }

    @discardableResult
    func wrap<T>(_ body: () throws(SQLiteError) -> T) throws(ControlError) -> T {
        do { return try body() } catch { throw .database(error) }
    }

    func audited<T>(_ actor: String, _ action: String, _ target: String, _ detail: String, now: Int64,
                            _ body: () throws(ControlError) -> T) throws(ControlError) -> T {
        var inner: ControlError?
        do throws(SQLiteError) {
            return try db.transaction { () throws(SQLiteError) -> T in
                let value: T
                do throws(ControlError) { value = try body() } catch {
                    inner = error
                    throw SQLiteError(code: 4, message: "rolled back", sql: "")
                }
                try db.run("INSERT INTO audit (at, actor, action, target, detail) VALUES (?, ?, ?, ?, ?)",
                           [.integer(now), .text(actor), .text(action), .text(target), .text(detail)])
                return value
            }
        } catch {
            throw inner ?? .database(error)
        }
    }

    // MARK: - Worlds

    /// Records a new world (its first release too), audited; `.exists` if the name is taken.
    public func createWorld(_ w: WorldRecord, actor: String, now: Int64) throws(ControlError) {
        try audited(actor, "world.create", w.name, w.spec, now: now) { () throws(ControlError) in
            do throws(SQLiteError) {
                try db.run("INSERT INTO worlds (name, template, spec, instances, state, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                           [.text(w.name), .text(w.template), .text(w.spec), .int(w.instances), .text(w.state), .integer(now), .integer(now)])
                // A name used before keeps its releases: the new world's first release follows them.
                try db.run("INSERT INTO releases (world, version, spec, created_at) SELECT ?, coalesce(max(version), 0) + 1, ?, ? FROM releases WHERE world = ?",
                           [.text(w.name), .text(w.spec), .integer(now), .text(w.name)])
            } catch {
                throw error.isConstraint ? .exists("world \(w.name)") : .database(error)
            }
        }
    }

    public func world(_ name: String) throws(ControlError) -> WorldRecord? {
        try wrap { () throws(SQLiteError) in
            try db.rows("SELECT name, template, spec, instances, state, created_at, updated_at, announced_at FROM worlds WHERE name = ?", [.text(name)], Self.world).first
        }
    }

    public func worlds() throws(ControlError) -> [WorldRecord] {
        try wrap { () throws(SQLiteError) in
            try db.rows("SELECT name, template, spec, instances, state, created_at, updated_at, announced_at FROM worlds ORDER BY name", [], Self.world)
        }
    }

    private static func world(_ s: SQLiteStatement) -> WorldRecord {
        WorldRecord(name: s.text(0), template: s.text(1), spec: s.text(2), instances: Int(s.int(3)), state: s.text(4),
                    createdAt: s.int(5), updatedAt: s.int(6), announcedAt: s.isNull(7) ? nil : s.int(7))
    }

    /// Sets how many instances a world wants, audited.
    public func scale(world name: String, instances: Int, actor: String, now: Int64) throws(ControlError) {
        try audited(actor, "world.scale", name, "instances=\(instances)", now: now) { () throws(ControlError) in
            let changed = try wrap { () throws(SQLiteError) in
                try db.run("UPDATE worlds SET instances = ?, updated_at = ? WHERE name = ?", [.int(instances), .integer(now), .text(name)])
            }
            if changed == 0 { throw .notFound("world \(name)") }
        }
    }

    /// Replaces a world's spec (its settings that can change while it runs), audited.
    public func updateSpec(world name: String, spec: String, detail: String, actor: String, now: Int64) throws(ControlError) {
        try audited(actor, "world.update", name, detail, now: now) { () throws(ControlError) in
            let changed = try wrap { () throws(SQLiteError) in
                try db.run("UPDATE worlds SET spec = ?, updated_at = ? WHERE name = ?", [.text(spec), .integer(now), .text(name)])
            }
            if changed == 0 { throw .notFound("world \(name)") }
        }
    }

    /// Starts a world's shutdown, audited: no instance is wanted any more and its keys are revoked now; the
    /// world is removed once its instances have drained and stopped (`deleteWorld`).
    /// `purge`: the world's vault goes too once its instances have stopped (state `purging`).
    public func beginShutdown(world name: String, purge: Bool = false, actor: String, now: Int64) throws(ControlError) {
        try audited(actor, "world.shutdown", name, purge ? "purge" : "", now: now) { () throws(ControlError) in
            let changed = try wrap { () throws(SQLiteError) in
                try db.run("UPDATE worlds SET state = ?, instances = 0, updated_at = ? WHERE name = ? AND state = 'active'",
                           [.text(purge ? "purging" : "stopping"), .integer(now), .text(name)])
            }
            if changed == 0 { throw .notFound("world \(name)") }
            _ = try wrap { () throws(SQLiteError) in
                try db.run("UPDATE keys SET revoked_at = ? WHERE world = ? AND (revoked_at IS NULL OR revoked_at > ?)",
                           [.integer(now), .text(name), .integer(now)])
            }
        }
    }

    /// Removes a world with its instances and keys (usage and releases stay, for the record), audited.
    public func deleteWorld(_ name: String, actor: String, now: Int64) throws(ControlError) {
        try audited(actor, "world.delete", name, "", now: now) { () throws(ControlError) in
            let changed = try wrap { () throws(SQLiteError) in try db.run("DELETE FROM worlds WHERE name = ?", [.text(name)]) }
            if changed == 0 { throw .notFound("world \(name)") }
        }
    }

    // MARK: - Instances (observed; the reconciler's, not audited)

    public func record(instance i: InstanceRecord) throws(ControlError) {
        try wrap { () throws(SQLiteError) in
            try db.run("""
                INSERT INTO instances (world, id, driver, handle, state, restarts, started_at, seen_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)
                ON CONFLICT (world, id) DO UPDATE SET driver = excluded.driver, handle = excluded.handle, state = excluded.state,
                    restarts = excluded.restarts, started_at = excluded.started_at, seen_at = excluded.seen_at
                """, [.text(i.world), .text(i.id), .text(i.driver), .text(i.handle), .text(i.state), .int(i.restarts),
                      .integer(i.startedAt), .integer(i.seenAt)])
        }
    }

    public func instances(world: String) throws(ControlError) -> [InstanceRecord] {
        try wrap { () throws(SQLiteError) in
            try db.rows("SELECT world, id, driver, handle, state, restarts, started_at, seen_at FROM instances WHERE world = ? ORDER BY id",
                        [.text(world)]) { s in
                InstanceRecord(world: s.text(0), id: s.text(1), driver: s.text(2), handle: s.text(3), state: s.text(4),
                               restarts: Int(s.int(5)), startedAt: s.int(6), seenAt: s.int(7))
            }
        }
    }

    public func forget(instance id: String, world: String) throws(ControlError) {
        try wrap { () throws(SQLiteError) in _ = try db.run("DELETE FROM instances WHERE world = ? AND id = ?", [.text(world), .text(id)]) }
    }

    // MARK: - Keys

    /// Stores a key's digest and prefix (never the key), audited; returns its id.
    @discardableResult
    public func addKey(_ k: StoredKey, actor: String, now: Int64) throws(ControlError) -> Int64 {
        try audited(actor, "key.create", k.world, "prefix=\(k.prefix)", now: now) { () throws(ControlError) -> Int64 in
            do throws(SQLiteError) {
                try db.run("INSERT INTO keys (world, prefix, digest, permissions, quotas, created_at, expires_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                           [.text(k.world), .text(k.prefix), .blob(k.digest), .text(k.permissions.joined(separator: ",")), .text(k.quotas),
                            .integer(now), .optional(k.expiresAt)])
                return db.lastInsertRowID
            } catch {
                if error.isConstraint {
                    throw (try? world(k.world)) == nil ? .notFound("world \(k.world)") : .exists("a key with this digest")
                }
                throw .database(error)
            }
        }
    }

    public func keys(world: String? = nil) throws(ControlError) -> [StoredKey] {
        let filter = world == nil ? "" : " WHERE world = ?"
        return try wrap { () throws(SQLiteError) in
            try db.rows("SELECT id, world, prefix, digest, permissions, quotas, created_at, expires_at, revoked_at, last_used_at FROM keys\(filter) ORDER BY id",
                        world.map { [.text($0)] } ?? []) { s in
                StoredKey(id: s.int(0), world: s.text(1), prefix: s.text(2), digest: s.blob(3),
                          permissions: s.text(4).split(separator: ",").map(String.init), quotas: s.text(5), createdAt: s.int(6),
                          expiresAt: s.optionalInt(7), revokedAt: s.optionalInt(8), lastUsedAt: s.optionalInt(9))
            }
        }
    }

    /// Revokes a key from `at` (now, or later: a rotation's grace period), audited.
    public func revokeKey(id: Int64, at: Int64, actor: String, now: Int64) throws(ControlError) {
        try audited(actor, "key.revoke", "key \(id)", "at=\(at)", now: now) { () throws(ControlError) in
            let changed = try wrap { () throws(SQLiteError) in
                try db.run("UPDATE keys SET revoked_at = ? WHERE id = ? AND (revoked_at IS NULL OR revoked_at > ?)", [.integer(at), .integer(id), .integer(at)])
            }
            if changed == 0 { throw .notFound("live key \(id)") }
        }
    }

    /// Notes when keys were last used (from the gateway's counters; not audited).
    public func touch(keys: [(id: Int64, at: Int64)]) throws(ControlError) {
        try wrap { () throws(SQLiteError) in
            try db.transaction { () throws(SQLiteError) in
                for k in keys {
                    try db.run("UPDATE keys SET last_used_at = max(coalesce(last_used_at, 0), ?) WHERE id = ?", [.integer(k.at), .integer(k.id)])
                }
            }
        }
    }

    // MARK: - Usage

    /// Adds counts to keys' usage for `day` (YYYY-MM-DD, UTC) and instance time to worlds', all in one
    /// transaction: a roll-up is written whole or not at all.
    public func addUsage(_ rows: [(keyID: Int64, world: String, day: String, delta: UsageDelta)], prefixes: [Int64: String] = [:],
                         instanceTime: [(world: String, template: String, day: String, milliseconds: Int64)] = []) throws(ControlError) {
        try wrap { () throws(SQLiteError) in
            try db.transaction { () throws(SQLiteError) in
                for r in rows {
                    let d = r.delta
                    try db.run("""
                        INSERT INTO usage (key_id, world, day, requests, interactions, bytes_in, bytes_out, tokens_in, tokens_out, prefix)
                        VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
                        ON CONFLICT (key_id, world, day) DO UPDATE SET requests = requests + excluded.requests,
                            interactions = interactions + excluded.interactions, bytes_in = bytes_in + excluded.bytes_in,
                            bytes_out = bytes_out + excluded.bytes_out, tokens_in = tokens_in + excluded.tokens_in,
                            tokens_out = tokens_out + excluded.tokens_out
                        """, [.integer(r.keyID), .text(r.world), .text(r.day), .integer(d.requests), .integer(d.interactions),
                              .integer(d.bytesIn), .integer(d.bytesOut), .integer(d.tokensIn), .integer(d.tokensOut),
                              .text(prefixes[r.keyID] ?? "")])
                }
                for t in instanceTime where t.milliseconds > 0 {
                    try db.run("""
                        INSERT INTO world_usage (world, day, template, instance_ms) VALUES (?, ?, ?, ?)
                        ON CONFLICT (world, day) DO UPDATE SET instance_ms = instance_ms + excluded.instance_ms
                        """, [.text(t.world), .text(t.day), .text(t.template), .integer(t.milliseconds)])
                }
            }
        }
    }

    /// Interactions per key id from `since` (a day, inclusive) on: what monthly budgets are checked against.
    public func interactionsByKey(since: String) throws(ControlError) -> [Int64: Int64] {
        try wrap { () throws(SQLiteError) in
            var out: [Int64: Int64] = [:]
            for (k, n) in try db.rows("SELECT key_id, sum(interactions) FROM usage WHERE day >= ? GROUP BY key_id", [.text(since)], { ($0.int(0), $0.int(1)) }) {
                out[k] = n
            }
            return out
        }
    }

    /// Usage rows from `since` on (one world, or all), grouped by world and `group` (`key`, `day` or nothing).
    public func usageRows(world: String?, since: String, group: UsageGroup) throws(ControlError) -> [UsageRow] {
        let column = switch group {
        case .key: "key_id, max(prefix)"
        case .day: "day, ''"
        case .world: "'', ''"
        }
        let by = switch group {
        case .key: ", key_id"
        case .day: ", day"
        case .world: ""
        }
        let filter = world == nil ? "" : " AND world = ?"
        var args: [SQLiteValue] = [.text(since)]
        if let world { args.append(.text(world)) }
        return try wrap { () throws(SQLiteError) in
            try db.rows("""
                SELECT world, \(column), sum(requests), sum(interactions), sum(bytes_in), sum(bytes_out), sum(tokens_in), sum(tokens_out)
                FROM usage WHERE day >= ?\(filter) GROUP BY world\(by) ORDER BY world\(by)
                """, args) { s in
                UsageRow(world: s.text(0), group: s.text(1), prefix: s.text(2),
                         delta: UsageDelta(requests: s.int(3), interactions: s.int(4), bytesIn: s.int(5), bytesOut: s.int(6),
                                           tokensIn: s.int(7), tokensOut: s.int(8)))
            }
        }
    }

    /// Instance time per world (and template) from `since` on, grouped like `usageRows` (`key` groups by world).
    public func instanceTime(world: String?, since: String, byDay: Bool) throws(ControlError) -> [(world: String, day: String, template: String, milliseconds: Int64)] {
        let filter = world == nil ? "" : " AND world = ?"
        var args: [SQLiteValue] = [.text(since)]
        if let world { args.append(.text(world)) }
        let day = byDay ? "day" : "''"
        return try wrap { () throws(SQLiteError) in
            try db.rows("""
                SELECT world, \(day), max(template), sum(instance_ms) FROM world_usage WHERE day >= ?\(filter)
                GROUP BY world\(byDay ? ", day" : "") ORDER BY world
                """, args) { ($0.text(0), $0.text(1), $0.text(2), $0.int(3)) }
        }
    }

    /// A world's usage summed over its keys, from `since` (a day, inclusive) on.
    public func usage(world: String, since: String = "0000-00-00") throws(ControlError) -> UsageDelta {
        try wrap { () throws(SQLiteError) in
            try db.rows("""
                SELECT coalesce(sum(requests), 0), coalesce(sum(interactions), 0), coalesce(sum(bytes_in), 0), coalesce(sum(bytes_out), 0),
                       coalesce(sum(tokens_in), 0), coalesce(sum(tokens_out), 0) FROM usage WHERE world = ? AND day >= ?
                """, [.text(world), .text(since)]) { s in
                UsageDelta(requests: s.int(0), interactions: s.int(1), bytesIn: s.int(2), bytesOut: s.int(3), tokensIn: s.int(4), tokensOut: s.int(5))
            }.first ?? UsageDelta()
        }
    }

    // MARK: - Audit

    /// The audit log, newest last; `after` a sequence number, at most `limit` entries.
    public func auditLog(after: Int64 = 0, limit: Int = 100) throws(ControlError) -> [AuditEntry] {
        try wrap { () throws(SQLiteError) in
            try db.rows("SELECT seq, at, actor, action, target, detail FROM audit WHERE seq > ? ORDER BY seq LIMIT ?", [.integer(after), .int(limit)]) { s in
                AuditEntry(seq: s.int(0), at: s.int(1), actor: s.text(2), action: s.text(3), target: s.text(4), detail: s.text(5))
            }
        }
    }
}
