/// The control plane's tables, as versioned migrations: migration N (counted from 1) takes a database at
/// `PRAGMA user_version` N-1 to N, in one transaction. Migrations are only ever appended; a database whose
/// version is newer than the last one here was made by a newer soulfra and is not opened.
public enum ControlSchema {
    public static let migrations: [String] = [
        // 1: worlds (desired), instances (observed), keys, usage roll-ups, releases, the audit log.
        """
        CREATE TABLE worlds (
            name            TEXT PRIMARY KEY,
            template        TEXT NOT NULL,
            spec            TEXT NOT NULL,            -- the desired spec, JSON
            instances       INTEGER NOT NULL CHECK (instances >= 0),
            state           TEXT NOT NULL DEFAULT 'active',
            created_at      INTEGER NOT NULL,         -- unix milliseconds
            updated_at      INTEGER NOT NULL
        ) STRICT;
        CREATE TABLE instances (
            world           TEXT NOT NULL REFERENCES worlds(name) ON DELETE CASCADE,
            id              TEXT NOT NULL,
            driver          TEXT NOT NULL,
            handle          TEXT NOT NULL,            -- pid or container id
            state           TEXT NOT NULL,
            restarts        INTEGER NOT NULL DEFAULT 0,
            started_at      INTEGER NOT NULL,
            seen_at         INTEGER NOT NULL,
            PRIMARY KEY (world, id)
        ) STRICT;
        CREATE TABLE keys (
            id              INTEGER PRIMARY KEY AUTOINCREMENT,   -- never reused: usage rows name keys by id
            world           TEXT NOT NULL REFERENCES worlds(name) ON DELETE CASCADE,
            prefix          TEXT NOT NULL,            -- the visible start of the key, for people
            digest          BLOB NOT NULL UNIQUE,     -- SHA-256 of the key; the key itself is never stored
            permissions     TEXT NOT NULL,            -- comma-separated
            quotas          TEXT NOT NULL,            -- JSON
            created_at      INTEGER NOT NULL,
            expires_at      INTEGER,
            revoked_at      INTEGER,
            last_used_at    INTEGER
        ) STRICT;
        CREATE INDEX keys_by_world ON keys(world);
        CREATE TABLE usage (
            key_id          INTEGER NOT NULL,
            world           TEXT NOT NULL,
            day             TEXT NOT NULL,            -- YYYY-MM-DD, UTC
            requests        INTEGER NOT NULL DEFAULT 0,
            interactions    INTEGER NOT NULL DEFAULT 0,
            bytes_in        INTEGER NOT NULL DEFAULT 0,
            bytes_out       INTEGER NOT NULL DEFAULT 0,
            tokens_in       INTEGER NOT NULL DEFAULT 0,
            tokens_out      INTEGER NOT NULL DEFAULT 0,
            PRIMARY KEY (key_id, world, day)
        ) STRICT;
        CREATE TABLE releases (
            world           TEXT NOT NULL,
            version         INTEGER NOT NULL,
            spec            TEXT NOT NULL,
            created_at      INTEGER NOT NULL,
            PRIMARY KEY (world, version)
        ) STRICT;
        CREATE TABLE audit (
            seq             INTEGER PRIMARY KEY AUTOINCREMENT,
            at              INTEGER NOT NULL,
            actor           TEXT NOT NULL,
            action          TEXT NOT NULL,
            target          TEXT NOT NULL,
            detail          TEXT NOT NULL
        ) STRICT;
        """,
        // 2: usage keeps the key's prefix (keys go with their world; their usage stays), and each world's
        // instance time per day, with its template (for cost).
        """
        ALTER TABLE usage ADD COLUMN prefix TEXT NOT NULL DEFAULT '';
        CREATE INDEX usage_by_day ON usage(day);
        CREATE TABLE world_usage (
            world           TEXT NOT NULL,
            day             TEXT NOT NULL,            -- YYYY-MM-DD, UTC
            template        TEXT NOT NULL,
            instance_ms     INTEGER NOT NULL DEFAULT 0,
            PRIMARY KEY (world, day)
        ) STRICT;
        """,
        // 3: webhook endpoints, the messages sent to them and every attempt; when a world's deployment was
        // announced (deployment_complete goes once, also across restarts).
        """
        ALTER TABLE worlds ADD COLUMN announced_at INTEGER;
        UPDATE worlds SET announced_at = updated_at;
        CREATE TABLE webhooks (
            id              INTEGER PRIMARY KEY AUTOINCREMENT,
            url             TEXT NOT NULL,
            world           TEXT,                     -- NULL: every world
            events          TEXT NOT NULL,            -- comma-separated event types
            secret          TEXT NOT NULL,            -- whsec_…: needed to sign, so kept (control.db is 0600)
            previous_secret TEXT,                     -- a rotated secret still signing until previous_until
            previous_until  INTEGER,
            state           TEXT NOT NULL DEFAULT 'enabled',   -- enabled · disabled
            disabled_reason TEXT NOT NULL DEFAULT '',
            failing_since   INTEGER,                  -- the first failure since the last success
            created_at      INTEGER NOT NULL
        ) STRICT;
        CREATE TABLE webhook_messages (
            id              TEXT PRIMARY KEY,         -- the webhook-id header: msg_…
            endpoint        INTEGER NOT NULL REFERENCES webhooks(id) ON DELETE CASCADE,
            event           TEXT NOT NULL,
            world           TEXT NOT NULL,
            payload         TEXT NOT NULL,
            created_at      INTEGER NOT NULL,
            state           TEXT NOT NULL,            -- pending · delivered · failed
            attempts        INTEGER NOT NULL DEFAULT 0,
            next_attempt_at INTEGER                   -- NULL once delivered or given up
        ) STRICT;
        CREATE INDEX webhook_messages_due ON webhook_messages(state, next_attempt_at);
        CREATE INDEX webhook_messages_by_endpoint ON webhook_messages(endpoint, created_at);
        CREATE TABLE webhook_attempts (
            message         TEXT NOT NULL REFERENCES webhook_messages(id) ON DELETE CASCADE,
            attempt         INTEGER NOT NULL,
            at              INTEGER NOT NULL,
            status          INTEGER,                  -- the HTTP status; NULL when none came
            error           TEXT NOT NULL DEFAULT '',
            duration_ms     INTEGER NOT NULL,
            response        TEXT NOT NULL DEFAULT '', -- the start of the answer's body
            PRIMARY KEY (message, attempt)
        ) STRICT;
        """,
    ]

    /// Brings `db` to the last version, each migration in its own transaction; returns the versions applied.
    @discardableResult
    public static func migrate(_ db: SQLiteDatabase) throws(ControlError) -> ClosedRange<Int>? {
        let current: Int
        do { current = Int(try db.rows("PRAGMA user_version") { $0.int(0) }.first ?? 0) } catch { throw .database(error) }
        guard current <= migrations.count else {
            throw .newerDatabase(path: db.path, version: current, known: migrations.count)
        }
        guard current < migrations.count else { return nil }
        for version in (current + 1)...migrations.count {
            do {
                try db.transaction { () throws(SQLiteError) in
                    try db.exec(migrations[version - 1])
                    try db.exec("PRAGMA user_version = \(version)")
                }
            } catch {
                throw .migration(version: version, error)
            }
        }
        return (current + 1)...migrations.count
    }
}

/// What the control plane's store can fail with, each saying what to do.
public enum ControlError: Error, CustomStringConvertible, Equatable {
    case database(SQLiteError)
    case migration(version: Int, SQLiteError)
    case newerDatabase(path: String, version: Int, known: Int)
    case locked(path: String)
    case exists(String)
    case notFound(String)

    public var description: String {
        switch self {
        case .database(let e): "control plane state: \(e)"
        case .migration(let v, let e): "control plane state: migration \(v) failed, nothing of it applied: \(e)"
        case .newerDatabase(let path, let v, let known):
            "\(path) is at schema version \(v), newer than this soulfra knows (\(known)): run the soulfra that wrote it, or a newer one"
        case .locked(let path): "\(path) is in use by another soulfra daemon (its lock is held): stop that one first"
        case .exists(let what): "\(what) already exists"
        case .notFound(let what): "no \(what)"
        }
    }
}
