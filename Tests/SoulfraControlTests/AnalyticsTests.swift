import Foundation
import Testing
@testable import SoulfraControl

@Suite("Analytics roll-up (pure)")
struct AnalyticsTests {
    func event(_ session: String, _ kind: UInt8, _ json: String, at ms: UInt64) -> EventPage.Event {
        EventPage.Event(session: session, kind: kind, unixMilliseconds: ms, payload: Array(json.utf8))
    }

    @Test("users, interactions, replies by agent, refusals and reply-time percentiles; folded page by page; the directory session is not a user")
    func folds() {
        var a = WorldAnalytics()
        a.fold(EventPage(events: [
            event("tim", 1, #"{"event":"user","text":"hi"}"#, at: 10),
            event("tim", 2, #"{"event":"token","text":"Hi"}"#, at: 11),
            event("tim", 3, #"{"event":"done","agent":"cal","usage":{"total_ms":80.0}}"#, at: 12),
            event("ana", 1, #"{"event":"user","text":"gun"}"#, at: 13),
            event("ana", 3, #"{"event":"done","agent":"cal","moderated":true}"#, at: 14),
            event("_users", 6, #"{"status":201,"op":"create","user":{"id":"u_1","name":"x"}}"#, at: 15),
        ], next: 6, more: true))
        a.fold(EventPage(events: [
            event("tim", 1, #"{"event":"user","text":"more"}"#, at: 20),
            event("tim", 3, #"{"event":"done","agent":"arty","usage":{"total_ms":700.0}}"#, at: 21),
        ], next: 8, more: false))
        #expect(a.users == ["tim", "ana"] && a.interactions == 3 && a.refused == 1)
        #expect(a.replies == ["cal": 1, "arty": 1])
        #expect(a.percentile(0.5) == 100 && a.percentile(0.99) == 1_000, "bucket bounds: 80 ms ≤ 100, 700 ms ≤ 1000")
        #expect(a.after == 8 && a.firstMilliseconds == 10 && a.lastMilliseconds == 21)
        let doc = (try? JSONSerialization.jsonObject(with: Data(a.document(world: "w", asOf: 99)))) as? [String: Any] ?? [:]
        #expect(doc["users"] as? Int == 2 && doc["replies"] as? Int == 2 && doc["events_read_through"] as? Int == 8)
        #expect(WorldAnalytics().percentile(0.5) == nil, "no replies: no percentile")
    }
}
