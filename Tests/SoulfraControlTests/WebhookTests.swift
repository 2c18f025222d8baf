import Foundation
import SoulfraTestSupport
import Testing
@testable import SoulfraControl

/// A dispatcher on a store of its own, driven by a manual clock: every decision takes the `now` it is given;
/// the HTTP attempts are real (libcurl to a loopback receiver).
final class WebhookBench {
    let directory = NSTemporaryDirectory() + "soulfra-webhooks-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
    let store: ControlStore
    let queue = DispatchQueue(label: "test-control")
    let dispatcher: WebhookDispatcher
    var now: Int64 = 1_800_000_000_000

    init() throws {
        store = try ControlStore(directory: directory)
        dispatcher = WebhookDispatcher(store: store, queue: queue)
    }

    deinit { try? FileManager.default.removeItem(atPath: directory) }

    func add(_ url: String, events: [String] = WebhookDispatcher.events, world: String? = nil) throws -> (id: Int64, secret: String) {
        let secret = StandardWebhooks.newSecret()
        return (try store.addWebhook(url: url, world: world, events: events, secret: secret, actor: "test", now: now), secret)
    }

    /// Moves the clock, starts what is due and waits for the attempts to be recorded.
    func tick(_ advance: Int64 = 0) {
        now += advance
        queue.sync { dispatcher.tick(now: now) }
        #expect(dispatcher.drain())
    }

    func emit(_ event: String, world: String = "playground") -> [String] {
        let ids = queue.sync { dispatcher.emit(event, world: world, data: ["world": world], now: now) }
        #expect(dispatcher.drain())
        return ids
    }
}

@Suite("Webhooks: Standard Webhooks signatures, retries, redelivery, auto-disable (manual clock, real HTTP)", .serialized)
struct WebhookTests {
    @Test("the signature is the Standard Webhooks test vector; a rotated secret's signature is sent alongside")
    func signatures() {
        let sig = StandardWebhooks.signature(secret: "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", id: "msg_p5jXN8AQM9LWM0D4loKWxJek",
                                             timestamp: 1_614_265_330, body: Array(#"{"test": 2432232314}"#.utf8))
        #expect(sig == "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=")
        #expect(StandardWebhooks.verify(secret: "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", id: "msg_p5jXN8AQM9LWM0D4loKWxJek", timestamp: 1_614_265_330,
                                        body: Array(#"{"test": 2432232314}"#.utf8), header: "v1,bm90IHRoaXMgb25l " + sig!))
        #expect(!StandardWebhooks.verify(secret: "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", id: "msg_p5jXN8AQM9LWM0D4loKWxJek", timestamp: 1_614_265_331,
                                         body: Array(#"{"test": 2432232314}"#.utf8), header: sig!))
        #expect(StandardWebhooks.newSecret().hasPrefix("whsec_") && StandardWebhooks.key(StandardWebhooks.newSecret())?.count == 32)
    }

    @Test("a failing endpoint is retried after 5 s, 5 min, 30 min (not before), with the same id, a fresh timestamp and a valid signature each time")
    func retriesOnSchedule() throws {
        let receiver = try WebhookReceiver()
        defer { receiver.stop() }
        let b = try WebhookBench()
        let (endpoint, secret) = try b.add(receiver.url)
        receiver.answer([500, 502, 503])
        let id = try #require(b.emit("deployment_complete").first)
        #expect(receiver.requests.count == 1, "the first attempt goes at once")
        b.tick(4_999)
        #expect(receiver.requests.count == 1, "not before 5 s")
        b.tick(1)
        #expect(receiver.requests.count == 2)
        b.tick(299_999)
        #expect(receiver.requests.count == 2, "not before 5 min")
        b.tick(1)
        b.tick(1_800_000)
        let got = receiver.requests
        #expect(got.count == 4)
        for (i, r) in got.enumerated() {
            #expect(r.headers["webhook-id"] == id)
            let ts = Int64(r.headers["webhook-timestamp"] ?? "") ?? 0
            #expect(StandardWebhooks.verify(secret: secret, id: id, timestamp: ts, body: r.body, header: r.headers["webhook-signature"] ?? ""), "attempt \(i + 1)")
            #expect(r.headers["content-type"] == "application/json")
        }
        #expect(Set(got.map { $0.headers["webhook-timestamp"] ?? "" }).count == 4, "each attempt is stamped when it goes")
        let body = try JSONSerialization.jsonObject(with: Data(got[0].body)) as? [String: Any]
        #expect(body?["type"] as? String == "deployment_complete" && (body?["data"] as? [String: Any])?["world"] as? String == "playground")
        let m = try #require(try b.store.webhookMessage(id))
        #expect(m.state == "delivered" && m.attempts == 4)
        #expect(try b.store.webhookAttempts(message: id).map(\.status) == [500, 502, 503, 204])
        #expect(try b.store.webhook(endpoint)?.failingSince == nil, "a success ends the failing streak")
        #expect(b.dispatcher.outcomes["success"] == 1 && b.dispatcher.outcomes["failure"] == 3)
    }

    @Test("after the seventh failed attempt (10 h after the sixth) the message has failed; an endpoint failing for 5 days is disabled and endpoint.disabled goes to the others")
    func giveUpAndDisable() throws {
        let dead = try WebhookReceiver(defaultStatus: 503)
        let watcher = try WebhookReceiver()
        defer { dead.stop(); watcher.stop() }
        let b = try WebhookBench()
        let (deadID, _) = try b.add(dead.url)
        _ = try b.add(watcher.url, events: ["endpoint.disabled"])
        let first = try #require(b.emit("error_alert").first)
        for delay in WebhookDispatcher.schedule.dropFirst() { b.tick(delay) }
        #expect(dead.requests.count == 7)
        b.tick(36_000_000)
        #expect(dead.requests.count == 7, "no eighth attempt")
        #expect(try b.store.webhookMessage(first)?.state == "failed")
        #expect(try b.store.webhook(deadID)?.state == "enabled", "17.6 h of failures is not yet days")
        // More events over the next days, all failing: past 5 days since the first failure, it is disabled.
        for _ in 0..<5 {
            b.now += 86_400_000
            _ = b.emit("error_alert")
        }
        let endpoint = try #require(try b.store.webhook(deadID))
        #expect(endpoint.state == "disabled" && endpoint.disabledReason.contains("every attempt failed"), "\(endpoint)")
        let notice = watcher.wait(for: 1)
        let body = try #require(notice.first.flatMap { try? JSONSerialization.jsonObject(with: Data($0.body)) as? [String: Any] })
        #expect(body["type"] as? String == "endpoint.disabled" && (body["data"] as? [String: Any])?["url"] as? String == dead.url)
        // A disabled endpoint gets nothing; enabling it clears the streak and it gets the next event.
        let before = dead.requests.count
        _ = b.emit("error_alert")
        b.tick(5_000)
        #expect(dead.requests.count == before)
        try b.store.setWebhookState(deadID, enabled: true, reason: "", actor: "test", now: b.now)
        dead.setDefault(200)
        _ = b.emit("error_alert")
        #expect(dead.requests.count > before)
    }

    @Test("redelivery sends a delivered message again with the same id; a rotated secret signs alongside the new one until its grace ends")
    func redeliverAndRotate() throws {
        let receiver = try WebhookReceiver()
        defer { receiver.stop() }
        let b = try WebhookBench()
        let (endpoint, oldSecret) = try b.add(receiver.url, world: "playground")
        #expect(b.emit("scaling_event", world: "elsewhere").isEmpty, "an endpoint for one world gets only its events")
        let id = try #require(b.emit("scaling_event").first)
        let newSecret = StandardWebhooks.newSecret()
        try b.store.rotateWebhookSecret(endpoint, secret: newSecret, previousUntil: b.now + 60_000, actor: "test", now: b.now)
        try b.store.redeliverWebhookMessage(id, actor: "test", now: b.now)
        b.tick()
        let got = receiver.requests
        #expect(got.count == 2 && got[1].headers["webhook-id"] == id)
        let r = got[1], ts = Int64(r.headers["webhook-timestamp"] ?? "") ?? 0, header = r.headers["webhook-signature"] ?? ""
        #expect(header.split(separator: " ").count == 2)
        #expect(StandardWebhooks.verify(secret: newSecret, id: id, timestamp: ts, body: r.body, header: header))
        #expect(StandardWebhooks.verify(secret: oldSecret, id: id, timestamp: ts, body: r.body, header: header))
        #expect(try b.store.webhookMessage(id)?.attempts == 2)
        b.now += 60_000
        try b.store.redeliverWebhookMessage(id, actor: "test", now: b.now)
        b.tick()
        let last = try #require(receiver.requests.last)
        #expect(last.headers["webhook-signature"]?.split(separator: " ").count == 1, "the old secret's grace is over")
    }

    @Test("an endpoint with a long queue does not hide another's messages: each tick takes the oldest due message of every endpoint")
    func fairAcrossEndpoints() throws {
        let slow = try WebhookReceiver(defaultStatus: 503)
        let fast = try WebhookReceiver()
        defer { slow.stop(); fast.stop() }
        let b = try WebhookBench()
        let (slowID, _) = try b.add(slow.url, events: ["user_milestone"])
        let (fastID, _) = try b.add(fast.url, events: ["scaling_event"])
        let backlog = (0..<200).map { i in
            WebhookMessage(id: "msg_backlog\(i)", endpoint: slowID, event: "user_milestone", world: "playground", payload: "{}",
                           createdAt: b.now - 10_000 + Int64(i), state: "pending", attempts: 0, nextAttemptAt: b.now - 10_000 + Int64(i))
        }
        try b.store.queueWebhookMessages(backlog)
        try b.store.queueWebhookMessages([WebhookMessage(id: "msg_fast", endpoint: fastID, event: "scaling_event", world: "playground",
                                                         payload: "{}", createdAt: b.now, state: "pending", attempts: 0, nextAttemptAt: b.now)])
        b.tick()
        #expect(fast.requests.count == 1, "the other endpoint's message went in the same tick")
        #expect(slow.requests.count == 1, "one at a time per endpoint")
    }

    @Test("a delivery does not wait for the process's shared dispatch pool, however many of its threads are blocked")
    func sendsHaveTheirOwnThreads() throws {
        let pool = SharedPoolBlocker()
        defer { pool.release() }
        let receiver = try WebhookReceiver()
        defer { receiver.stop() }
        let b = try WebhookBench()
        _ = try b.add(receiver.url)
        let ids = b.queue.sync { b.dispatcher.emit("scaling_event", world: "playground", data: ["world": "playground"], now: b.now) }
        #expect(b.dispatcher.drain(timeout: .now() + 10), "the attempt finished")
        #expect(receiver.requests.map { $0.headers["webhook-id"] } == ids.map { Optional($0) })
    }

    @Test("an endpoint that does not answer (nothing listening) is a failure with curl's reason recorded, retried on schedule")
    func unreachable() throws {
        let receiver = try WebhookReceiver()
        let url = receiver.url
        receiver.stop()  // the port now refuses connections
        let b = try WebhookBench()
        _ = try b.add(url)
        let id = try #require(b.emit("user_milestone").first)
        let a = try #require(try b.store.webhookAttempts(message: id).first)
        #expect(a.status == nil && !a.error.isEmpty, "\(a)")
        #expect(try b.store.webhookMessage(id)?.nextAttemptAt == b.now + 5_000)
    }
}
