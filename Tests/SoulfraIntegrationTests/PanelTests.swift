import Foundation
import Testing
@testable import SoulfraServer

/// The Python that has Playwright (the test command makes `.build/panel-venv`), and Debian's chromium.
let panelPython: String = ProcessInfo.processInfo.environment["SOULFRA_PANEL_PYTHON"] ?? repoRoot.appendingPathComponent(".build/panel-venv/bin/python").path
let panelBrowserAvailable: Bool = {
    let ok = FileManager.default.isExecutableFile(atPath: panelPython) && FileManager.default.isExecutableFile(atPath: "/usr/bin/chromium")
    if !ok {
        print("SKIPPED: the control panel's browser test needs Playwright in \(panelPython) and /usr/bin/chromium — run ./soulfra-deploy.sh test, which installs both")
    }
    return ok
}()

/// One admin-listener request with curl: status, response head and body.
func adminCall(_ url: String, _ method: String = "GET", headers: [String] = [], body: String? = nil) throws -> (status: Int, head: String, body: String) {
    var args = ["-s", "--max-time", "15", "-D", "-", "-X", method, url]
    for h in headers { args += ["-H", h] }
    if let body { args += ["-H", "Content-Type: application/json", "--data-binary", body] }
    let out = try runCapturing("/usr/bin/curl", args, timeout: 20).out
    let parts = out.components(separatedBy: "\r\n\r\n")
    let head = parts.first ?? ""
    let status = Int(head.split(separator: " ").dropFirst().first ?? "") ?? 0
    return (status, head, parts.dropFirst().joined(separator: "\r\n\r\n"))
}

@Suite("The control panel: sign-in, cookie and CSRF rules, and the browser journey", .serialized, .enabled(if: uringAvailable && curlAvailable))
struct PanelTests {
    @Test("sign-in sets an HttpOnly SameSite=Strict cookie; cookie reads pass; changes need the CSRF token and the panel's origin; sign-out ends it; failures are rate-limited; the token never comes back")
    func cookieAndCSRF() throws {
        let w = try CLIWorld("panel-auth")
        defer { w.tearDown() }
        #expect(try w.initDaemon())
        let admin = try adminOf(w)
        let page = try adminCall(admin.url + "/panel")
        #expect(page.status == 200 && page.body.contains("/panel/app.js"))
        #expect(page.head.lowercased().contains("content-security-policy: default-src 'self'") && page.head.lowercased().contains("x-frame-options: deny"))
        #expect(try adminCall(admin.url + "/").head.lowercased().contains("location: /panel"))
        #expect(try adminCall(admin.url + "/panel/login", "POST", body: #"{"token":"wrong"}"#).status == 401)
        let login = try adminCall(admin.url + "/panel/login", "POST", body: #"{"token":"\#(admin.token)"}"#)
        #expect(login.status == 200 && !login.body.contains(admin.token) && !login.head.contains(admin.token))
        let setCookie = login.head.split(separator: "\r\n").first { $0.lowercased().hasPrefix("set-cookie:") }.map(String.init) ?? ""
        #expect(setCookie.contains("HttpOnly") && setCookie.contains("SameSite=Strict") && setCookie.contains("Path=/"), "\(setCookie)")
        let session = setCookie.split(separator: ";").first?.split(separator: "=", maxSplits: 1).last.map(String.init) ?? ""
        let csrf = ((try? JSONSerialization.jsonObject(with: Data(login.body.utf8))) as? [String: Any])?["csrf"] as? String ?? ""
        let cookie = "Cookie: soulfra_session=\(session)"
        let host = "Host: " + admin.url.replacingOccurrences(of: "http://", with: "")
        #expect(try adminCall(admin.url + "/admin/v1/worlds", headers: [cookie]).status == 200, "a read with the cookie")
        let deploy = #"{"type":"kids","name":"viapanel","instances":0}"#
        let noToken = try adminCall(admin.url + "/admin/v1/worlds", "POST", headers: [cookie], body: deploy)
        #expect(noToken.status == 403 && noToken.body.contains("csrf_failed"), "\(noToken.body)")
        #expect(try adminCall(admin.url + "/admin/v1/worlds", "POST", headers: [cookie, "X-CSRF-Token: \(String(csrf.reversed()))"], body: deploy).status == 403)
        #expect(try adminCall(admin.url + "/admin/v1/worlds", "POST", headers: [cookie, "X-CSRF-Token: \(csrf)", "Origin: http://evil.example"], body: deploy).status == 403,
                "another site's page, even with a stolen CSRF token")
        #expect(try adminCall(admin.url + "/admin/v1/worlds", "POST", headers: [cookie, "X-CSRF-Token: \(csrf)", "Origin: \(admin.url)", host], body: deploy).status == 201)
        #expect(try adminCall(admin.url + "/admin/v1/worlds", "POST", headers: ["Authorization: Bearer \(admin.token)"],
                              body: #"{"type":"kids","name":"viatoken","instances":0}"#).status == 201, "the token needs no CSRF token (it is not ambient)")
        #expect(try adminCall(admin.url + "/panel/logout", "POST", headers: [cookie]).status == 401, "sign-out is a change too")
        #expect(try adminCall(admin.url + "/panel/logout", "POST", headers: [cookie, "X-CSRF-Token: \(csrf)"]).status == 200)
        #expect(try adminCall(admin.url + "/admin/v1/worlds", headers: [cookie]).status == 401, "the session is gone")
        // Failures are counted per clock minute: 42 guesses put more than 20 in one minute even when a minute
        // turns during the loop.
        var limited = (status: 0, head: "", body: "")
        for _ in 0..<42 where limited.status != 429 { limited = try adminCall(admin.url + "/panel/login", "POST", body: #"{"token":"guess"}"#) }
        #expect(limited.status == 429 && limited.head.lowercased().contains("retry-after"), "guessing is slowed: \(limited.status)")
        #expect(try adminCall(admin.url + "/panel/login", "POST", body: #"{"token":"\#(admin.token)"}"#).status == 200,
                "a flood of wrong guesses does not lock the operator out")
        let log = (try? String(contentsOfFile: w.home + "/serve.log", encoding: .utf8)) ?? ""
        #expect(!log.contains(admin.token) && !log.contains(session), "neither the token nor a session id is logged")
    }

    @Test("the live feed is bounded: 32 followers at once, the 33rd is told 503 too_many_followers; a follower that leaves frees its place")
    func liveFollowersBounded() throws {
        let w = try CLIWorld("panel-live")
        defer { w.tearDown() }
        #expect(try w.initDaemon())
        let admin = try adminOf(w)
        var followers: [Process] = []
        defer { for p in followers where p.isRunning { kill(p.processIdentifier, SIGKILL) } }
        let feeds = w.home + "/feeds"
        try FileManager.default.createDirectory(atPath: feeds, withIntermediateDirectories: true)
        for i in 0..<32 {
            let p = Process()
            p.executableURL = URL(fileURLWithPath: "/usr/bin/curl")
            p.arguments = ["-sN", "--max-time", "600", "-o", "\(feeds)/\(i)", admin.url + "/admin/v1/live?follow=1", "-H", "Authorization: Bearer \(admin.token)"]
            try p.run()
            followers.append(p)
        }
        // A follower is in place once it has its first document (sent as it is added, on the control queue).
        // Probing before that would race the followers' own connects, and a probe that got in would hold a place.
        func placed() -> Int {
            (0..<32).filter { ((try? String(contentsOfFile: "\(feeds)/\($0)", encoding: .utf8)) ?? "").contains("data:") }.count
        }
        for _ in 0..<600 where placed() < 32 && followers.allSatisfy(\.isRunning) { usleep(100_000) }
        #expect(placed() == 32, "every follower has its first document")
        let refused = try runCapturing("/usr/bin/curl", ["-sN", "--max-time", "5", "-w", "\n%{http_code}", admin.url + "/admin/v1/live?follow=1",
                                                         "-H", "Authorization: Bearer \(admin.token)"], timeout: 10).out
        #expect(refused.hasSuffix("\n503") && refused.contains("too_many_followers"), "\(refused.suffix(300))")
        #expect(try adminCall(admin.url + "/admin/v1/live", headers: ["Authorization: Bearer \(admin.token)"]).status == 200, "a one-off read still works")
        kill(followers[0].processIdentifier, SIGKILL)
        followers[0].waitUntilExit()
        var again = 0
        for _ in 0..<50 where again != 200 {
            usleep(200_000)  // the feed notices a gone follower at its next document (1 s)
            let r = try runCapturing("/usr/bin/curl", ["-sN", "--max-time", "2", "-o", "/dev/null", "-w", "%{http_code}",
                                                       admin.url + "/admin/v1/live?follow=1", "-H", "Authorization: Bearer \(admin.token)"], timeout: 10)
            again = Int(r.out) ?? 0
        }
        #expect(again == 200, "the place was freed")
    }

    @Test("the browser journey (Playwright, Debian's chromium): sign in, deploy, see it live, message and counters, key copy, a signed webhook, scale, logs, deliveries and redeliver, secret rotation, shut down", .enabled(if: panelBrowserAvailable))
    func browserJourney() throws {
        let w = try CLIWorld("panel-browser")
        defer { w.tearDown() }
        #expect(try w.initDaemon())
        let admin = try adminOf(w)
        let shots = w.home + "/screenshots"
        try FileManager.default.createDirectory(atPath: shots, withIntermediateDirectories: true)
        let r = try runCapturing(panelPython, [repoRoot.appendingPathComponent("Tests/panel/journey.py").path, "--panel", admin.url,
                                               "--token-file", w.home + "/admin.token", "--screenshots", shots], timeout: 240, group: true)
        #expect(r.status == 0, "\(r.out.suffix(2_000))\n\(r.err.suffix(3_000))")
        print(r.out.split(separator: "\n").last.map(String.init) ?? "")
        for page in ["signin", "worlds", "deploy", "world", "usage", "webhooks"] {
            #expect(FileManager.default.fileExists(atPath: "\(shots)/\(page).png"), "\(page) screenshot")
        }
    }
}

@Suite("Panel sessions (sans-IO)")
struct PanelSessionTests {
    @Test("a wall clock that steps back, or another loop's later stamp, neither crashes nor ends a session")
    func clockStepsBack() {
        let s = PanelSessions()
        let (id, _) = s.create(now: 1_000_000)
        #expect(s.session(id, now: 1_000_010) != nil)
        #expect(s.session(id, now: 999_990) != nil, "an earlier second than the session's last")
        _ = s.create(now: 999_000)  // a sign-in on a clock stepped back sweeps the table too
        #expect(s.session(id, now: 1_000_020) != nil)
        #expect(s.session(id, now: 1_000_020 + 13 * 3_600) == nil, "idle past 12 h")
    }

    @Test("sessions are bounded: past 256, signing in ends the least recently used")
    func bounded() {
        let s = PanelSessions()
        let first = s.create(now: 1_000).id
        let kept = s.create(now: 1_001).id
        for i in 0..<300 { _ = s.create(now: 1_002 + UInt64(i)) }
        #expect(s.count == PanelSessions.maxSessions)
        #expect(s.session(first, now: 2_000) == nil && s.session(kept, now: 2_000) == nil, "the oldest went first")
    }
}
