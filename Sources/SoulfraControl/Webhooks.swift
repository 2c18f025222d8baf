import CCurl
import Foundation
import SoulfraDocker
import SoulfraKeys

/// Signing the Standard Webhooks way: `webhook-signature: v1,<base64 HMAC-SHA256>` over `id.timestamp.body`
/// with the secret's bytes (the base64 after `whsec_`); several space-separated while a rotated secret is in
/// its grace.
public enum StandardWebhooks {
    /// `whsec_` and 32 random bytes in base64.
    public static func newSecret() -> String {
        var rng = SystemRandomNumberGenerator()
        return "whsec_" + Data((0..<32).map { _ in UInt8.random(in: 0...255, using: &rng) }).base64EncodedString()
    }

    /// The secret's key bytes (nil: not a `whsec_` secret).
    static func key(_ secret: String) -> [UInt8]? {
        guard secret.hasPrefix("whsec_"), let d = Data(base64Encoded: String(secret.dropFirst(6))), !d.isEmpty else { return nil }
        return Array(d)
    }

    /// `v1,<base64>` for one secret.
    public static func signature(secret: String, id: String, timestamp: Int64, body: [UInt8]) -> String? {
        guard let key = key(secret) else { return nil }
        let mac = hmacSHA256(key: key, message: Array("\(id).\(timestamp).".utf8) + body)
        return "v1," + Data(mac).base64EncodedString()
    }

    /// Whether one of the header's signatures is `secret`'s (what a receiver checks; it should also refuse
    /// timestamps far from its clock).
    public static func verify(secret: String, id: String, timestamp: Int64, body: [UInt8], header: String) -> Bool {
        guard let expected = signature(secret: secret, id: id, timestamp: timestamp, body: body) else { return false }
        return header.split(separator: " ").contains { constantTimeEqual(Array($0.utf8), Array(expected.utf8)) }
    }

    /// A message id: `msg_` and 24 base62 characters.
    static func messageID() -> String {
        let alphabet = Array("0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")
        var rng = SystemRandomNumberGenerator()
        return "msg_" + String((0..<24).map { _ in alphabet[Int.random(in: 0..<62, using: &rng)] })
    }
}

/// One HTTP attempt, ready to send.
public struct WebhookRequest: Sendable {
    public var url: String
    public var id: String
    public var timestamp: Int64
    public var body: [UInt8]
    public var signature: String
}

/// What an attempt came to.
public struct WebhookOutcome: Sendable {
    public var status: Int?
    public var error: String
    public var durationMilliseconds: Int64
    public var response: String
    public var succeeded: Bool { status.map { (200..<300).contains($0) } ?? false }
}

/// Delivers webhook messages: the state (endpoints, messages, attempts) is in SQLite and every decision is
/// made on the control queue with the `now` it is given (so tests drive it with a manual clock); the HTTP
/// calls go out on a queue of their own through libcurl, never on a loop thread, at most `maxInFlight` at once
/// and one at a time per endpoint (so an endpoint sees its messages in order).
public final class WebhookDispatcher: @unchecked Sendable {
    /// When attempts go, after the one before: at once, then 5 s, 5 min, 30 min, 2 h, 5 h, 10 h; then the
    /// message has failed.
    public static let schedule: [Int64] = [0, 5_000, 300_000, 1_800_000, 7_200_000, 18_000_000, 36_000_000]
    public static let events = ["deployment_complete", "scaling_event", "error_alert", "user_milestone", "endpoint.disabled"]

    let store: ControlStore
    let queue: DispatchQueue
    let send: @Sendable (WebhookRequest) -> WebhookOutcome
    let inFlightGroup = DispatchGroup()
    public var maxInFlight = 4
    /// An endpoint whose every attempt has failed for this long is disabled (`endpoint.disabled`).
    public var disableAfterMilliseconds: Int64 = 5 * 86_400_000
    /// Finished messages are forgotten after this long.
    public var keepMilliseconds: Int64 = 30 * 86_400_000
    var busy = Set<Int64>()
    var lastPrune: Int64 = 0
    /// Attempts by outcome since the daemon started (`soulfra_webhook_deliveries_total`).
    public private(set) var outcomes: [String: UInt64] = ["success": 0, "failure": 0, "gave_up": 0]
    var log: (String) -> Void = { _ in }

    /// `send` does one HTTP attempt (blocking); the default posts with libcurl.
    public init(store: ControlStore, queue: DispatchQueue, send: @escaping @Sendable (WebhookRequest) -> WebhookOutcome = WebhookDispatcher.post) {
        self.store = store
        self.queue = queue
        self.send = send
    }

    /// Queues `event` for every enabled endpoint that wants it; returns the message ids. Control queue.
    @discardableResult
    public func emit(_ event: String, world: String, data: [String: Any], now: Int64) -> [String] {
        guard let endpoints = try? store.webhooks().filter({ $0.wants(event, world: world) }), !endpoints.isEmpty else { return [] }
        let stamp = ISO8601DateFormatter().string(from: Date(timeIntervalSince1970: Double(now) / 1000))
        let body: [String: Any] = ["type": event, "timestamp": stamp, "data": data]
        guard let json = try? JSONSerialization.data(withJSONObject: body, options: [.sortedKeys]) else { return [] }
        let payload = String(decoding: json, as: UTF8.self)
        let messages = endpoints.map {
            WebhookMessage(id: StandardWebhooks.messageID(), endpoint: $0.id, event: event, world: world, payload: payload, createdAt: now,
                           state: "pending", attempts: 0, nextAttemptAt: now)
        }
        do { try store.queueWebhookMessages(messages) } catch { log("error_alert webhooks: cannot queue \(event): \(error)") }
        tick(now: now)
        return messages.map(\.id)
    }

    /// Starts the attempts that are due. Control queue.
    public func tick(now: Int64) {
        if now - lastPrune >= 3_600_000 {
            lastPrune = now
            try? store.pruneWebhookMessages(before: now - keepMilliseconds)
        }
        guard busy.count < maxInFlight, let due = try? store.dueWebhookMessages(now: now, limit: 64) else { return }
        for m in due where busy.count < maxInFlight && !busy.contains(m.endpoint) {
            guard let endpoint = try? store.webhook(m.endpoint) else { continue }
            start(m, endpoint, now: now)
        }
    }

    func start(_ m: WebhookMessage, _ endpoint: WebhookEndpoint, now: Int64) {
        busy.insert(m.endpoint)
        let timestamp = now / 1000
        let body = Array(m.payload.utf8)
        let signature = endpoint.signingSecrets(now: now).compactMap {
            StandardWebhooks.signature(secret: $0, id: m.id, timestamp: timestamp, body: body)
        }.joined(separator: " ")
        let request = WebhookRequest(url: endpoint.url, id: m.id, timestamp: timestamp, body: body, signature: signature)
        inFlightGroup.enter()
        // A serial queue of its own: it runs on libdispatch's overcommitting pool, so a send blocked in libcurl
        // for its 10 s holds a thread of its own, never one of the shared pool's few.
        DispatchQueue(label: "soulfra-webhooks.\(m.endpoint)").async { [self] in
            let outcome = send(request)
            queue.async { [self] in
                finish(m, outcome, at: now)
                inFlightGroup.leave()
            }
        }
    }

    /// Records an attempt; schedules the next one or gives up; disables an endpoint that has failed for days.
    func finish(_ m: WebhookMessage, _ o: WebhookOutcome, at: Int64) {
        busy.remove(m.endpoint)
        var next = m
        next.attempts += 1
        let attempt = WebhookAttempt(message: m.id, attempt: next.attempts, at: at, status: o.status, error: o.error,
                                     durationMilliseconds: o.durationMilliseconds, response: o.response)
        let endpoint = try? store.webhook(m.endpoint)
        var failingSince = endpoint?.failingSince
        if o.succeeded {
            next.state = "delivered"
            next.nextAttemptAt = nil
            failingSince = nil
            outcomes["success", default: 0] += 1
        } else {
            outcomes["failure", default: 0] += 1
            failingSince = failingSince ?? at
            if next.attempts < Self.schedule.count {
                next.nextAttemptAt = at + Self.schedule[next.attempts]
            } else {
                next.state = "failed"
                next.nextAttemptAt = nil
                outcomes["gave_up", default: 0] += 1
            }
        }
        do {
            try store.recordWebhookAttempt(attempt, message: next, endpointFailingSince: failingSince)
        } catch {
            log("error_alert webhooks: cannot record an attempt of \(m.id): \(error)")
        }
        if let endpoint, endpoint.state == "enabled", let since = failingSince, at - since >= disableAfterMilliseconds {
            let reason = "every attempt failed for \((at - since) / 3_600_000) h (last: \(o.status.map { "HTTP \($0)" } ?? o.error))"
            try? store.setWebhookState(endpoint.id, enabled: false, reason: reason, actor: "webhooks", now: at)
            log("error_alert webhook \(endpoint.id) (\(endpoint.url)) disabled: \(reason)")
            emit("endpoint.disabled", world: endpoint.world ?? "", data: ["endpoint": endpoint.id, "url": endpoint.url, "reason": reason,
                                                                         "failing_since_ms": since], now: at)
        }
    }

    /// Waits until the attempts in flight have finished and been recorded (the control queue must be free).
    public func drain(timeout: DispatchTime = .now() + 30) -> Bool { inFlightGroup.wait(timeout: timeout) == .success }

    /// One POST with libcurl: the Standard Webhooks headers, a 10 s limit, no redirects, http(s) only; the
    /// answer's first KiB is kept.
    @Sendable public static func post(_ r: WebhookRequest) -> WebhookOutcome {
        final class Sink { var data = [UInt8]() }
        let sink = Sink()
        var status = 0
        var error = [CChar](repeating: 0, count: 256)
        let headers = ["Content-Type: application/json", "User-Agent: soulfra-webhooks/1", "Expect:", "webhook-id: \(r.id)",
                       "webhook-timestamp: \(r.timestamp)", "webhook-signature: \(r.signature)"]
        let started = DispatchTime.now().uptimeNanoseconds
        let rc = withHeaders(headers) { h, n in
            r.body.withUnsafeBytes { raw in
                sf_curl_easy(nil, "POST", r.url, h, n, raw.baseAddress, raw.count, 10_000, { context, bytes, len in
                    let sink = Unmanaged<Sink>.fromOpaque(context!).takeUnretainedValue()
                    let room = max(0, 1_024 - sink.data.count)
                    if room > 0, let bytes { sink.data += UnsafeRawBufferPointer(start: bytes, count: min(room, len)) }
                    return 1
                }, Unmanaged.passUnretained(sink).toOpaque(), &status, &error, error.count)
            }
        }
        let ms = Int64((DispatchTime.now().uptimeNanoseconds - started) / 1_000_000)
        let text = String(decoding: sink.data, as: UTF8.self)
        if rc != 0 {
            let reason = String(decoding: error.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
            return WebhookOutcome(status: nil, error: reason, durationMilliseconds: ms, response: text)
        }
        return WebhookOutcome(status: status, error: (200..<300).contains(status) ? "" : "HTTP \(status)", durationMilliseconds: ms, response: text)
    }
}
