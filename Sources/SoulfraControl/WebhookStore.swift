/// A webhook endpoint as stored.
public struct WebhookEndpoint: Equatable, Sendable {
    public var id: Int64
    public var url: String
    /// nil: every world.
    public var world: String?
    public var events: [String]
    public var secret: String
    public var previousSecret: String?
    public var previousUntil: Int64?
    public var state: String
    public var disabledReason: String
    public var failingSince: Int64?
    public var createdAt: Int64

    /// Whether it wants `event` from `world`.
    public func wants(_ event: String, world w: String) -> Bool {
        state == "enabled" && (world == nil || world == w) && (events.contains(event) || events.contains("*"))
    }

    /// The secrets to sign with at `now`: the current one, and a rotated one still in its grace.
    public func signingSecrets(now: Int64) -> [String] {
        guard let p = previousSecret, let until = previousUntil, until > now else { return [secret] }
        return [secret, p]
    }
}

/// One message to one endpoint, and where its delivery is.
public struct WebhookMessage: Equatable, Sendable {
    public var id: String
    public var endpoint: Int64
    public var event: String
    public var world: String
    public var payload: String
    public var createdAt: Int64
    public var state: String
    public var attempts: Int
    public var nextAttemptAt: Int64?
}

/// One attempt to deliver a message.
public struct WebhookAttempt: Equatable, Sendable {
    public var message: String
    public var attempt: Int
    public var at: Int64
    public var status: Int?
    public var error: String
    public var durationMilliseconds: Int64
    public var response: String
}

extension ControlStore {
    static let endpointColumns = "id, url, world, events, secret, previous_secret, previous_until, state, disabled_reason, failing_since, created_at"

    private static func endpoint(_ s: SQLiteStatement) -> WebhookEndpoint {
        WebhookEndpoint(id: s.int(0), url: s.text(1), world: s.isNull(2) ? nil : s.text(2), events: s.text(3).split(separator: ",").map(String.init),
                        secret: s.text(4), previousSecret: s.isNull(5) ? nil : s.text(5), previousUntil: s.isNull(6) ? nil : s.int(6),
                        state: s.text(7), disabledReason: s.text(8), failingSince: s.isNull(9) ? nil : s.int(9), createdAt: s.int(10))
    }

    private static func message(_ s: SQLiteStatement) -> WebhookMessage {
        WebhookMessage(id: s.text(0), endpoint: s.int(1), event: s.text(2), world: s.text(3), payload: s.text(4), createdAt: s.int(5),
                       state: s.text(6), attempts: Int(s.int(7)), nextAttemptAt: s.isNull(8) ? nil : s.int(8))
    }

    static let messageColumns = "id, endpoint, event, world, payload, created_at, state, attempts, next_attempt_at"

    /// Adds an endpoint, audited; returns its id.
    public func addWebhook(url: String, world: String?, events: [String], secret: String, actor: String, now: Int64) throws(ControlError) -> Int64 {
        try audited(actor, "webhook.add", url, "events=\(events.joined(separator: ","))" + (world.map { " world=\($0)" } ?? ""), now: now) { () throws(ControlError) in
            try wrap { () throws(SQLiteError) in
                try db.run("INSERT INTO webhooks (url, world, events, secret, created_at) VALUES (?, ?, ?, ?, ?)",
                           [.text(url), world.map { .text($0) } ?? .null, .text(events.joined(separator: ",")), .text(secret), .integer(now)])
                return db.lastInsertRowID
            }
        }
    }

    public func webhooks() throws(ControlError) -> [WebhookEndpoint] {
        try wrap { () throws(SQLiteError) in try db.rows("SELECT \(Self.endpointColumns) FROM webhooks ORDER BY id", [], Self.endpoint) }
    }

    public func webhook(_ id: Int64) throws(ControlError) -> WebhookEndpoint? {
        try wrap { () throws(SQLiteError) in try db.rows("SELECT \(Self.endpointColumns) FROM webhooks WHERE id = ?", [.integer(id)], Self.endpoint).first }
    }

    /// Removes an endpoint with its messages and attempts, audited.
    public func removeWebhook(_ id: Int64, actor: String, now: Int64) throws(ControlError) {
        try audited(actor, "webhook.remove", "webhook \(id)", "", now: now) { () throws(ControlError) in
            let n = try wrap { () throws(SQLiteError) in try db.run("DELETE FROM webhooks WHERE id = ?", [.integer(id)]) }
            if n == 0 { throw .notFound("webhook \(id)") }
        }
    }

    /// A new secret; the old one keeps signing until `previousUntil`. Audited.
    public func rotateWebhookSecret(_ id: Int64, secret: String, previousUntil: Int64, actor: String, now: Int64) throws(ControlError) {
        try audited(actor, "webhook.rotate", "webhook \(id)", "previous valid until \(previousUntil)", now: now) { () throws(ControlError) in
            let n = try wrap { () throws(SQLiteError) in
                try db.run("UPDATE webhooks SET previous_secret = secret, previous_until = ?, secret = ? WHERE id = ?",
                           [.integer(previousUntil), .text(secret), .integer(id)])
            }
            if n == 0 { throw .notFound("webhook \(id)") }
        }
    }

    /// Enables or disables an endpoint (`reason` says why it was disabled); enabling clears its failing streak.
    public func setWebhookState(_ id: Int64, enabled: Bool, reason: String, actor: String, now: Int64) throws(ControlError) {
        try audited(actor, enabled ? "webhook.enable" : "webhook.disable", "webhook \(id)", reason, now: now) { () throws(ControlError) in
            let n = try wrap { () throws(SQLiteError) in
                try db.run(enabled ? "UPDATE webhooks SET state = 'enabled', disabled_reason = '', failing_since = NULL WHERE id = ?"
                                   : "UPDATE webhooks SET state = 'disabled', disabled_reason = ? WHERE id = ?",
                           enabled ? [.integer(id)] : [.text(reason), .integer(id)])
            }
            if n == 0 { throw .notFound("webhook \(id)") }
        }
    }

    /// Queues messages (one per endpoint) in one transaction, due at once.
    public func queueWebhookMessages(_ messages: [WebhookMessage]) throws(ControlError) {
        try wrap { () throws(SQLiteError) in
            try db.transaction { () throws(SQLiteError) in
                for m in messages {
                    try db.run("INSERT INTO webhook_messages (\(Self.messageColumns)) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                               [.text(m.id), .integer(m.endpoint), .text(m.event), .text(m.world), .text(m.payload), .integer(m.createdAt),
                                .text(m.state), .int(m.attempts), m.nextAttemptAt.map { .integer($0) } ?? .null])
                }
            }
        }
    }

    /// The oldest pending message due at `now` of each enabled endpoint (one per endpoint: an endpoint takes one
    /// at a time, so a slow one with a long queue never hides another's), oldest first.
    public func dueWebhookMessages(now: Int64, limit: Int) throws(ControlError) -> [WebhookMessage] {
        try wrap { () throws(SQLiteError) in
            // SQLite takes a bare column's value from the row that holds the min() (documented behaviour).
            try db.rows("""
                SELECT \(Self.messageColumns.split(separator: ",").map { "m." + $0.trimmingCharacters(in: .whitespaces) }.joined(separator: ", ")),
                       min(m.next_attempt_at)
                FROM webhook_messages m JOIN webhooks w ON w.id = m.endpoint
                WHERE m.state = 'pending' AND m.next_attempt_at <= ? AND w.state = 'enabled'
                GROUP BY m.endpoint ORDER BY m.next_attempt_at LIMIT ?
                """, [.integer(now), .int(limit)], Self.message)
        }
    }

    public func webhookMessage(_ id: String) throws(ControlError) -> WebhookMessage? {
        try wrap { () throws(SQLiteError) in try db.rows("SELECT \(Self.messageColumns) FROM webhook_messages WHERE id = ?", [.text(id)], Self.message).first }
    }

    /// An endpoint's latest messages, newest first.
    public func webhookMessages(endpoint: Int64, limit: Int) throws(ControlError) -> [WebhookMessage] {
        try wrap { () throws(SQLiteError) in
            try db.rows("SELECT \(Self.messageColumns) FROM webhook_messages WHERE endpoint = ? ORDER BY created_at DESC, rowid DESC LIMIT ?",
                        [.integer(endpoint), .int(limit)], Self.message)
        }
    }

    /// The latest messages about one world (any endpoint), newest first.
    public func webhookMessages(world: String, limit: Int) throws(ControlError) -> [WebhookMessage] {
        try wrap { () throws(SQLiteError) in
            try db.rows("SELECT \(Self.messageColumns) FROM webhook_messages WHERE world = ? ORDER BY created_at DESC, rowid DESC LIMIT ?",
                        [.text(world), .int(limit)], Self.message)
        }
    }

    public func webhookAttempts(message: String) throws(ControlError) -> [WebhookAttempt] {
        try wrap { () throws(SQLiteError) in
            try db.rows("SELECT message, attempt, at, status, error, duration_ms, response FROM webhook_attempts WHERE message = ? ORDER BY attempt",
                        [.text(message)]) { s in
                WebhookAttempt(message: s.text(0), attempt: Int(s.int(1)), at: s.int(2), status: s.isNull(3) ? nil : Int(s.int(3)), error: s.text(4),
                               durationMilliseconds: s.int(5), response: s.text(6))
            }
        }
    }

    /// Records an attempt and where the message and its endpoint are after it, in one transaction.
    public func recordWebhookAttempt(_ a: WebhookAttempt, message: WebhookMessage, endpointFailingSince: Int64?) throws(ControlError) {
        try wrap { () throws(SQLiteError) in
            try db.transaction { () throws(SQLiteError) in
                try db.run("INSERT OR REPLACE INTO webhook_attempts (message, attempt, at, status, error, duration_ms, response) VALUES (?, ?, ?, ?, ?, ?, ?)",
                           [.text(a.message), .int(a.attempt), .integer(a.at), a.status.map { .int($0) } ?? .null, .text(a.error),
                            .integer(a.durationMilliseconds), .text(a.response)])
                try db.run("UPDATE webhook_messages SET state = ?, attempts = ?, next_attempt_at = ? WHERE id = ?",
                           [.text(message.state), .int(message.attempts), message.nextAttemptAt.map { .integer($0) } ?? .null, .text(message.id)])
                try db.run("UPDATE webhooks SET failing_since = ? WHERE id = ?",
                           [endpointFailingSince.map { .integer($0) } ?? .null, .integer(message.endpoint)])
            }
        }
    }

    /// Sends a message again from now (its attempts go on being numbered). Audited.
    public func redeliverWebhookMessage(_ id: String, actor: String, now: Int64) throws(ControlError) {
        try audited(actor, "webhook.redeliver", id, "", now: now) { () throws(ControlError) in
            let n = try wrap { () throws(SQLiteError) in
                try db.run("UPDATE webhook_messages SET state = 'pending', next_attempt_at = ? WHERE id = ?", [.integer(now), .text(id)])
            }
            if n == 0 { throw .notFound("webhook message \(id)") }
        }
    }

    /// Forgets finished messages (and their attempts) older than `before`; returns how many went.
    @discardableResult
    public func pruneWebhookMessages(before: Int64) throws(ControlError) -> Int {
        try wrap { () throws(SQLiteError) in
            try db.run("DELETE FROM webhook_messages WHERE state != 'pending' AND created_at < ?", [.integer(before)])
        }
    }

    /// Pending messages per endpoint (for `/metrics` and lists).
    public func pendingWebhookMessages() throws(ControlError) -> [Int64: Int] {
        try wrap { () throws(SQLiteError) in
            var out: [Int64: Int] = [:]
            for (e, n) in try db.rows("SELECT endpoint, count(*) FROM webhook_messages WHERE state = 'pending' GROUP BY endpoint", [], { ($0.int(0), Int($0.int(1))) }) {
                out[e] = n
            }
            return out
        }
    }

    /// Marks that a world's deployment was announced; false if it already was.
    public func markAnnounced(world: String, now: Int64) throws(ControlError) -> Bool {
        try wrap { () throws(SQLiteError) in
            try db.run("UPDATE worlds SET announced_at = ? WHERE name = ? AND announced_at IS NULL", [.integer(now), .text(world)]) > 0
        }
    }
}
