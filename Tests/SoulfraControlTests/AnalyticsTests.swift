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
        a.fold(EventPage(events: [event("s-41", 1, #"{"event":"user","text":"anonymous"}"#, at: 30)], next: 9, more: false))
        #expect(a.interactions == 4 && a.users.count == 2, "a message without a session is an interaction, not a user")
    }
}

@Suite("Instance logs are bounded")
struct LogRotationTests {
    @Test("a log past the bound is copied to .log.1 and truncated; its appending writer goes on at the new start; a small one is left alone")
    func rotates() throws {
        let dir = NSTemporaryDirectory() + "soulfra-rotate-\(getpid())"
        try FileManager.default.createDirectory(atPath: dir + "/w", withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let big = dir + "/w/w-1.log", small = dir + "/w/w-2.log"
        FileManager.default.createFile(atPath: big, contents: Data(repeating: 0x61, count: LogFollowers.rotateBytes + 1))
        FileManager.default.createFile(atPath: small, contents: Data("[2026-11-30T00:00:00Z] INFO: hi\n".utf8))
        let writer = open(big, O_WRONLY | O_APPEND | O_CLOEXEC)
        defer { close(writer) }
        let logs = LogFollowers(directory: dir)
        #expect(logs.rotate() == 1)
        #expect(LogFollowers.size(big + ".1") == LogFollowers.rotateBytes + 1)
        _ = "next\n".withCString { write(writer, $0, 5) }
        #expect(LogFollowers.size(big) == 5, "the writer appends at the new start (no hole)")
        #expect(LogFollowers.size(small) > 0 && !FileManager.default.fileExists(atPath: small + ".1"))
        #expect(logs.rotate() == 0)
    }
}
