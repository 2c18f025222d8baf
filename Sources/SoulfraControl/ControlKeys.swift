import Foundation
import SoulfraConfig
import SoulfraKeys
import SoulfraLimits

/// Keys through the admin API: made here (the secret is shown once and never stored), listed by prefix,
/// revoked, rotated with a grace period.
extension ControlService {
    /// Rotation keeps the old key working this long by default.
    static let defaultGraceSeconds: Int64 = 3_600
    /// The longest expiry or grace period taken: ten years (times are kept in milliseconds).
    static let maxSeconds = 315_360_000

    func keyList(_ world: String) throws(APIError) -> [[String: Any]] {
        let now = Self.now()
        return try wrap { () throws(ControlError) in try store.keys(world: world) }.map { k in
            var o: [String: Any] = ["id": k.id, "prefix": k.prefix, "permissions": k.permissions, "created_at_ms": k.createdAt,
                                    "state": k.revokedAt.map { $0 <= now ? "revoked" : "rotating" } ?? (k.expiresAt.map { $0 <= now } == true ? "expired" : "active")]
            o["quotas"] = KeyQuotas(json: k.quotas).object
            if let e = k.expiresAt { o["expires_at_ms"] = e }
            if let r = k.revokedAt { o["revoked_at_ms"] = r }
            if let u = k.lastUsedAt { o["last_used_at_ms"] = u }
            return o
        }
    }

    /// Makes and stores a key for `world` with the template's permissions and quotas, as overridden by
    /// `options` (permissions, expires_in_seconds, requests_per_second, burst, concurrent_streams,
    /// monthly_interactions); returns what the caller sees, the secret included.
    func issueKey(world: String, template: WorldTemplate, options: [String: Any], now: Int64) throws(APIError) -> [String: Any] {
        let known: Set = ["permissions", "expires_in_seconds", "requests_per_second", "burst", "concurrent_streams", "monthly_interactions"]
        if let extra = options.keys.sorted().first(where: { !known.contains($0) }) {
            throw APIError(400, "invalid_request", "unknown field \"\(extra)\" (fields: \(known.sorted().joined(separator: ", ")))")
        }
        var permissions = template.keys.permissions
        if let p = options["permissions"] {
            guard let list = p as? [String], !list.isEmpty else { throw APIError(400, "invalid_permissions", "permissions must be a non-empty list of names") }
            let allowed = Permissions.names.map(\.0)
            for name in list where !allowed.contains(name) {
                throw APIError(400, "invalid_permissions", "permission \"\(name)\" is unknown — use some of: \(allowed.joined(separator: ", "))")
            }
            permissions = list
        }
        var quotas = KeyQuotas(template.keys)
        for (field, path) in [("requests_per_second", \KeyQuotas.requestsPerSecond), ("burst", \.burst), ("concurrent_streams", \.concurrentStreams),
                              ("monthly_interactions", \.monthlyInteractions)] {
            guard let v = options[field] else { continue }
            guard let n = jsonInteger(v), n >= 0 else { throw APIError(400, "invalid_quota", "\(field) must be a whole number ≥ 0 (0: unlimited)") }
            quotas[keyPath: path] = n
        }
        var expires: Int64?
        if let v = options["expires_in_seconds"] {
            guard let n = jsonInteger(v), (1...Self.maxSeconds).contains(n) else {
                throw APIError(400, "invalid_expiry", "expires_in_seconds must be a whole number from 1 to \(Self.maxSeconds) (ten years)")
            }
            expires = now + Int64(n) * 1000
        }
        var rng = SystemRandomNumberGenerator()
        guard let key = APIKey.generate(type: template.kind.rawValue, using: &rng) else {
            throw APIError(500, "internal", "cannot make a key of type \(template.kind.rawValue)")
        }
        let stored = StoredKey(world: world, prefix: key.prefix, digest: key.digest.raw, permissions: permissions, quotas: quotas.json,
                               createdAt: now, expiresAt: expires)
        let id = try wrap { () throws(ControlError) in try store.addKey(stored, actor: "admin", now: now) }
        var out: [String: Any] = ["id": id, "prefix": key.prefix, "secret": key.plaintext, "permissions": permissions, "quotas": quotas.object,
                                  "note": "the secret is shown this once: store it now"]
        if let expires { out["expires_at_ms"] = expires }
        return out
    }

    func createKey(_ r: ControlRequest) throws(APIError) -> [String: Any] {
        let w = try existingWorld(r.world)
        let spec = try WorldSpec.decode(name: w.name, json: w.spec)
        return try issueKey(world: w.name, template: spec.template, options: try r.object(), now: Self.now())
    }

    func key(_ r: ControlRequest) throws(APIError) -> StoredKey {
        guard let id = Int64(r.parameters["key"] ?? "") else { throw APIError(400, "invalid_key_id", "a key is named by its id (`soulfra keys list <world>`)") }
        guard let k = try wrap({ () throws(ControlError) in try store.keys(world: r.world) }).first(where: { $0.id == id }) else {
            throw APIError(404, "key_not_found", "world \(r.world) has no key \(id) — `soulfra keys list \(r.world)` shows its keys")
        }
        return k
    }

    func revokeKey(_ r: ControlRequest) throws(APIError) -> [String: Any] {
        _ = try existingWorld(r.world)
        let k = try key(r)
        let now = Self.now()
        try wrap { () throws(ControlError) in try store.revokeKey(id: k.id, at: now, actor: "admin", now: now) }
        note(world: r.world, "key \(k.prefix) revoked")
        return ["id": k.id, "prefix": k.prefix, "state": "revoked"]
    }

    /// A new key with the old one's permissions and quotas; the old one keeps working for `grace_seconds`
    /// (default an hour, never past its own expiry).
    func rotateKey(_ r: ControlRequest) throws(APIError) -> [String: Any] {
        let w = try existingWorld(r.world)
        let old = try key(r)
        let now = Self.now()
        guard old.live(at: now), old.revokedAt == nil else {
            throw APIError(409, "key_not_live", "key \(old.id) is revoked, rotating or expired: create a new key instead")
        }
        let body = try r.object()
        var grace = Self.defaultGraceSeconds
        if let v = body["grace_seconds"] {
            guard let n = jsonInteger(v), (0...Self.maxSeconds).contains(n) else {
                throw APIError(400, "invalid_grace", "grace_seconds must be a whole number from 0 to \(Self.maxSeconds) (ten years)")
            }
            grace = Int64(n)
        }
        var until = now + grace * 1000
        if let e = old.expiresAt { until = min(until, e) }
        let spec = try WorldSpec.decode(name: w.name, json: w.spec)
        var options: [String: Any] = KeyQuotas(json: old.quotas).object
        options["permissions"] = old.permissions
        if let e = old.expiresAt { options["expires_in_seconds"] = max(1, Int((e - now + 999) / 1000)) }
        var fresh = try issueKey(world: w.name, template: spec.template, options: options, now: now)
        try wrap { () throws(ControlError) in try store.revokeKey(id: old.id, at: until, actor: "admin", now: now) }
        fresh["replaces"] = ["id": old.id, "prefix": old.prefix, "valid_until_ms": until]
        note(world: w.name, "key \(old.prefix) rotated to \(fresh["prefix"] ?? ""); the old one works for \(max(0, until - now) / 1000) s more")
        return fresh
    }
}
