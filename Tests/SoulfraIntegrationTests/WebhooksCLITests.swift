import Foundation
import SoulfraControl
import SoulfraTestSupport
import Testing

@Suite("Webhooks through the daemon (process driver, a loopback receiver)", .serialized, .enabled(if: uringAvailable && curlAvailable))
struct WebhooksCLITests {
    func event(_ r: WebhookReceiver.Request) -> [String: Any] {
        (try? JSONSerialization.jsonObject(with: Data(r.body))) as? [String: Any] ?? [:]
    }

    @Test("webhooks add → deploy: deployment_complete, signed; scale: scaling_event; a killed instance: error_alert; deliveries lists every attempt; redeliver sends it again; bad input refused")
    func journey() throws {
        let receiver = try WebhookReceiver()
        defer { receiver.stop() }
        let w = try CLIWorld("hooks")
        defer { w.tearDown() }
        #expect(try w.initDaemon())
        let added = try w.json(["webhooks", "add", receiver.url])
        let secret = added["secret"] as? String ?? ""
        let id = added["id"] as? Int ?? 0
        #expect(secret.hasPrefix("whsec_"))
        #expect(try w.cli(["webhooks", "add", "ftp://example.com/x"]).status == 5, "only http(s) endpoints")
        #expect(try w.cli(["webhooks", "add", receiver.url, "--events", "deployment_done"]).err.contains("unknown event"))
        _ = try w.json(["deploy", "--type", "kids", "--name", "hooked"])
        var got = receiver.wait(for: 1)
        let first = try #require(got.first)
        #expect(event(first)["type"] as? String == "deployment_complete", "\(event(first))")
        let ts = Int64(first.headers["webhook-timestamp"] ?? "") ?? 0
        #expect(StandardWebhooks.verify(secret: secret, id: first.headers["webhook-id"] ?? "", timestamp: ts, body: first.body,
                                        header: first.headers["webhook-signature"] ?? ""), "signed with the secret add printed")
        #expect(abs(ts - Int64(Date().timeIntervalSince1970)) < 30)
        #expect(try w.cli(["scale", "hooked", "--instances", "2"]).status == 0)
        got = receiver.wait(for: 2)
        #expect(got.contains { event($0)["type"] as? String == "scaling_event" && ($0.body.count > 0) })
        // Kill an instance: the control plane says so (error_alert) and restarts it.
        let pidFile = w.home + "/control/instances/hooked/hooked-1.pid"
        if let text = try? String(contentsOfFile: pidFile, encoding: .utf8), let pid = pid_t(text.split(separator: " ").first ?? "") {
            kill(pid, SIGKILL)
        }
        let deadline = Date().addingTimeInterval(10)
        while !receiver.requests.contains(where: { event($0)["type"] as? String == "error_alert" }) && Date() < deadline { usleep(50_000) }
        let alert = receiver.requests.first { event($0)["type"] as? String == "error_alert" }
        #expect(((alert.map(event)?["data"] as? [String: Any])?["message"] as? String)?.contains("exited") == true, "\(alert.map(event) ?? [:])")
        // The receiver has them; the daemon records each once libcurl has the answer.
        var deliveries: [[String: Any]] = []
        _ = try retry(for: 15) {
            deliveries = try w.json(["webhooks", "deliveries", "\(id)"])["deliveries"] as? [[String: Any]] ?? []
            return deliveries.count >= 3 && deliveries.allSatisfy { $0["state"] as? String == "delivered" }
        }
        #expect(deliveries.count >= 3 && deliveries.allSatisfy { $0["state"] as? String == "delivered" }, "\(deliveries)")
        let message = deliveries.last?["id"] as? String ?? ""
        let before = receiver.requests.count
        #expect(try w.cli(["webhooks", "redeliver", "\(id)", message]).status == 0)
        let again = receiver.wait(for: before + 1)
        #expect(again.last?.headers["webhook-id"] == message, "the same message again")
        let list = try w.json(["webhooks", "list"])["webhooks"] as? [[String: Any]] ?? []
        #expect(list.first?["secret"] == nil && (list.first?["secret_prefix"] as? String)?.hasSuffix("…") == true, "the secret is never listed")
        #expect(try w.cli(["webhooks", "remove", "\(id)"]).status == 0)
        #expect(try w.cli(["webhooks", "deliveries", "\(id)"]).status == 3)
    }
}
