import Foundation

/// The webhooks part of the admin API (docs/api.md, Webhooks).
extension ControlService {
    static let webhookRoutes: [(method: String, pattern: String, handler: Handler)] = [
        ("GET", "/admin/v1/webhooks", { s, _, _ in (200, ["webhooks": try s.webhookList()]) }),
        ("POST", "/admin/v1/webhooks", { s, r, _ in (201, try s.addWebhook(r)) }),
        ("GET", "/admin/v1/webhooks/deliveries", { s, r, _ in (200, try s.worldDeliveries(r)) }),
        ("DELETE", "/admin/v1/webhooks/{id}", { s, r, _ in (200, try s.removeWebhook(r)) }),
        ("POST", "/admin/v1/webhooks/{id}/rotate", { s, r, _ in (201, try s.rotateWebhook(r)) }),
        ("POST", "/admin/v1/webhooks/{id}/enable", { s, r, _ in (200, try s.enableWebhook(r)) }),
        ("GET", "/admin/v1/webhooks/{id}/deliveries", { s, r, _ in (200, try s.deliveries(r)) }),
        ("POST", "/admin/v1/webhooks/{id}/deliveries/{message}/redeliver", { s, r, _ in (202, try s.redeliver(r)) }),
    ]

    func existingWebhook(_ r: ControlRequest) throws(APIError) -> WebhookEndpoint {
        guard let id = Int64(r.parameters["id"] ?? ""), let w = try wrap({ () throws(ControlError) in try store.webhook(id) }) else {
            throw APIError(404, "webhook_not_found", "no webhook \(r.parameters["id"] ?? "") — soulfra webhooks list shows them")
        }
        return w
    }

    func webhookObject(_ e: WebhookEndpoint, pending: Int) -> [String: Any] {
        var o: [String: Any] = ["id": e.id, "url": e.url, "events": e.events, "state": e.state, "created_at_ms": e.createdAt,
                                "secret_prefix": String(e.secret.prefix(12)) + "…", "pending": pending]
        o["world"] = e.world ?? NSNull()
        o["disabled_reason"] = e.disabledReason
        o["failing_since_ms"] = e.failingSince ?? NSNull()
        o["previous_secret_valid_until_ms"] = e.previousUntil.flatMap { $0 > Self.now() ? $0 : nil } ?? NSNull()
        return o
    }

    func webhookList() throws(APIError) -> [[String: Any]] {
        let pending = (try? store.pendingWebhookMessages()) ?? [:]
        return try wrap { () throws(ControlError) in try store.webhooks() }.map { webhookObject($0, pending: pending[$0.id] ?? 0) }
    }

    func addWebhook(_ r: ControlRequest) throws(APIError) -> [String: Any] {
        let o = try r.object()
        let known: Set = ["url", "events", "world"]
        if let extra = o.keys.sorted().first(where: { !known.contains($0) }) {
            throw APIError(400, "invalid_request", "unknown field \"\(extra)\" (fields: events, url, world)")
        }
        guard let url = o["url"] as? String, let parsed = URL(string: url), ["http", "https"].contains(parsed.scheme ?? ""),
              !(parsed.host ?? "").isEmpty, url.utf8.count <= 2_048 else {
            throw APIError(400, "invalid_url", "url must be an http:// or https:// address with a host (the endpoint that receives the events)")
        }
        var events = WebhookDispatcher.events
        if let e = o["events"] {
            let list = (e as? [String]) ?? (e as? String)?.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }
            guard let list, !list.isEmpty else { throw APIError(400, "invalid_events", "events must name at least one event") }
            for name in list where !WebhookDispatcher.events.contains(name) && name != "*" {
                throw APIError(400, "invalid_events", "unknown event \"\(name)\" — use some of: \(WebhookDispatcher.events.joined(separator: ", "))")
            }
            events = list
        }
        var world: String?
        if let w = o["world"] {
            guard let name = w as? String else { throw APIError(400, "invalid_request", "world must be a world's name") }
            try DeployRequest.checkName(name)
            world = name
        }
        let secret = StandardWebhooks.newSecret()
        let now = Self.now()
        let id = try wrap { () throws(ControlError) in try store.addWebhook(url: url, world: world, events: events, secret: secret, actor: "admin", now: now) }
        log("webhook \(id): \(url) for \(events.joined(separator: ", "))" + (world.map { " of world \($0)" } ?? ""))
        guard let e = try wrap({ () throws(ControlError) in try store.webhook(id) }) else { throw APIError(500, "internal", "the webhook was not stored") }
        var out = webhookObject(e, pending: 0)
        out["secret"] = secret
        return out
    }

    func removeWebhook(_ r: ControlRequest) throws(APIError) -> [String: Any] {
        let e = try existingWebhook(r)
        try wrap { () throws(ControlError) in try store.removeWebhook(e.id, actor: "admin", now: Self.now()) }
        log("webhook \(e.id): removed (\(e.url))")
        return ["id": e.id, "removed": true]
    }

    func rotateWebhook(_ r: ControlRequest) throws(APIError) -> [String: Any] {
        let e = try existingWebhook(r)
        let graceValue = try r.object()["grace_seconds"]
        let grace = graceValue == nil ? 86_400 : jsonInteger(graceValue) ?? -1
        guard (0...30 * 86_400).contains(grace) else { throw APIError(400, "invalid_grace", "grace_seconds must be 0 to 2592000 (30 days)") }
        let now = Self.now(), secret = StandardWebhooks.newSecret()
        try wrap { () throws(ControlError) in
            try store.rotateWebhookSecret(e.id, secret: secret, previousUntil: now + Int64(grace) * 1000, actor: "admin", now: now)
        }
        log("webhook \(e.id): secret rotated; the old one signs too for \(grace) s")
        return ["id": e.id, "secret": secret, "previous_secret_valid_until_ms": now + Int64(grace) * 1000]
    }

    func enableWebhook(_ r: ControlRequest) throws(APIError) -> [String: Any] {
        let e = try existingWebhook(r)
        try wrap { () throws(ControlError) in try store.setWebhookState(e.id, enabled: true, reason: "", actor: "admin", now: Self.now()) }
        log("webhook \(e.id): enabled")
        return webhookObject(try existingWebhook(r), pending: 0)
    }

    func deliveryObjects(_ messages: [WebhookMessage]) -> [[String: Any]] {
        messages.map { m in
            let attempts = ((try? store.webhookAttempts(message: m.id)) ?? []).map { a -> [String: Any] in
                ["attempt": a.attempt, "at_ms": a.at, "status": a.status.map { $0 as Any } ?? NSNull(), "error": a.error,
                 "duration_ms": a.durationMilliseconds, "response": a.response]
            }
            return ["id": m.id, "endpoint": m.endpoint, "event": m.event, "world": m.world, "state": m.state, "created_at_ms": m.createdAt,
                    "next_attempt_at_ms": m.nextAttemptAt.map { $0 as Any } ?? NSNull(), "attempts": attempts,
                    "payload": (try? JSONSerialization.jsonObject(with: Data(m.payload.utf8))) ?? m.payload]
        }
    }

    func limit(_ r: ControlRequest) throws(APIError) -> Int {
        guard let text = r.value("limit") else { return 20 }
        guard let n = Int(text), (1...200).contains(n) else { throw APIError(400, "invalid_request", "limit must be 1 to 200") }
        return n
    }

    func deliveries(_ r: ControlRequest) throws(APIError) -> [String: Any] {
        let e = try existingWebhook(r)
        let n = try limit(r)
        return ["deliveries": deliveryObjects(try wrap { () throws(ControlError) in try store.webhookMessages(endpoint: e.id, limit: n) })]
    }

    func worldDeliveries(_ r: ControlRequest) throws(APIError) -> [String: Any] {
        guard let world = r.value("world") else { throw APIError(400, "invalid_request", "world is required: ?world=playground") }
        let n = try limit(r)
        return ["deliveries": deliveryObjects(try wrap { () throws(ControlError) in try store.webhookMessages(world: world, limit: n) })]
    }

    func redeliver(_ r: ControlRequest) throws(APIError) -> [String: Any] {
        let e = try existingWebhook(r)
        let id = r.parameters["message"] ?? ""
        guard let m = try wrap({ () throws(ControlError) in try store.webhookMessage(id) }), m.endpoint == e.id else {
            throw APIError(404, "message_not_found", "webhook \(e.id) has no message \(id)")
        }
        try wrap { () throws(ControlError) in try store.redeliverWebhookMessage(m.id, actor: "admin", now: Self.now()) }
        webhooks.tick(now: Self.now())
        return ["id": m.id, "state": "pending"]
    }
}
