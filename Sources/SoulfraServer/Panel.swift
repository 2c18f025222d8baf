import Foundation
import Synchronization
import SoulfraGateway
import SoulfraHTTP
import SoulfraKeys

/// The master control panel's sign-ins: a session per browser, made by `POST /panel/login` with the admin
/// token and carried by an `HttpOnly; SameSite=Strict` cookie. Only the session id's SHA-256 is kept. Every
/// state-changing call made with the cookie must carry the session's CSRF token (`X-CSRF-Token`) and, when
/// the browser names its `Origin`, come from the panel's own. Shared by every loop.
public final class PanelSessions: Sendable {
    struct Session {
        var csrf: String
        var created: UInt64
        var lastSeen: UInt64
    }

    public static let cookie = "soulfra_session"
    /// Sessions end after this long unused, and this long after sign-in in any case.
    static let idleSeconds: UInt64 = 12 * 3_600
    static let maxAgeSeconds: UInt64 = 7 * 86_400
    /// The most sessions kept; signing in past it ends the least recently used.
    static let maxSessions = 256
    private let sessions = Mutex<[SecretDigest: Session]>([:])
    /// Failed sign-ins in the current minute (more than `maxFailuresPerMinute` are refused with 429).
    private let failures = Mutex<(minute: UInt64, count: Int)>((0, 0))
    static let maxFailuresPerMinute = 20

    public init() {}

    /// The wall clock in seconds (sessions' ages).
    static func nowSeconds() -> UInt64 { UInt64(Date().timeIntervalSince1970) }

    /// A new session: its id (for the cookie) and its CSRF token.
    func create(now: UInt64) -> (id: String, csrf: String) {
        let id = Self.random(), csrf = Self.random()
        sessions.withLock { s in
            s = s.filter { Self.live($0.value, now: now) }
            if s.count >= Self.maxSessions, let oldest = s.min(by: { $0.value.lastSeen < $1.value.lastSeen })?.key { s[oldest] = nil }
            s[SecretDigest(of: id)] = Session(csrf: csrf, created: now, lastSeen: now)
        }
        return (id, csrf)
    }

    /// The session `id` names, if it is live (and marks it used).
    func session(_ id: String, now: UInt64) -> Session? {
        let key = SecretDigest(of: id)
        return sessions.withLock { s in
            guard var found = s[key], Self.live(found, now: now) else {
                s[key] = nil
                return nil
            }
            found.lastSeen = max(found.lastSeen, now)
            s[key] = found
            return found
        }
    }

    func end(_ id: String) { _ = sessions.withLock { $0.removeValue(forKey: SecretDigest(of: id)) } }

    public var count: Int { sessions.withLock { $0.count } }

    /// Counts a failed sign-in; false when this minute has had too many.
    func failed(now: UInt64) -> Bool {
        failures.withLock { f in
            if f.minute != now / 60 { f = (now / 60, 0) }
            f.count += 1
            return f.count <= Self.maxFailuresPerMinute
        }
    }

    /// Ages saturate at 0: the wall clock may step back, and another loop may have stamped a later second.
    static func live(_ s: Session, now: UInt64) -> Bool {
        now &- min(now, s.lastSeen) < idleSeconds && now &- min(now, s.created) < maxAgeSeconds
    }

    /// 32 random bytes, hex.
    static func random() -> String {
        var rng = SystemRandomNumberGenerator()
        return (0..<32).map { _ in String(format: "%02x", UInt8.random(in: 0...255, using: &rng)) }.joined()
    }

    /// The session cookie's value in a request head.
    static func cookieValue(_ head: HTTPRequestHead) -> String? {
        guard let header = head.header("cookie") else { return nil }
        for part in header.split(separator: ";") {
            let kv = part.trimmingCharacters(in: .whitespaces).split(separator: "=", maxSplits: 1)
            if kv.count == 2 && kv[0] == cookie { return String(kv[1]) }
        }
        return nil
    }

    enum Verdict { case signedIn, notSignedIn, csrfFailed }

    /// Whether a request is signed in by its cookie: any method needs a live session; one that changes state
    /// also needs the session's CSRF token and, if the browser says where it comes from, the panel's origin.
    func verdict(_ head: HTTPRequestHead, now: UInt64) -> Verdict {
        guard let id = Self.cookieValue(head), let s = session(id, now: now) else { return .notSignedIn }
        if ["GET", "HEAD"].contains(head.method) { return .signedIn }
        guard let csrf = head.header("x-csrf-token"), constantTimeEqual(Array(csrf.utf8), Array(s.csrf.utf8)) else { return .csrfFailed }
        if let origin = head.header("origin") {
            guard let host = head.header("host"), origin == "http://" + host || origin == "https://" + host else { return .csrfFailed }
        }
        return .signedIn
    }

    func authorizes(_ head: HTTPRequestHead, now: UInt64) -> Bool { verdict(head, now: now) == .signedIn }
}

/// The panel's pages (plain HTML, CSS and JavaScript, embedded at build time from `Panel/`) and its sign-in.
extension Wiring {
    static let panelHTML = String(decoding: PackageResources.index_html, as: UTF8.self)
    static let panelJS = String(decoding: PackageResources.app_js, as: UTF8.self)
    static let panelCSS = String(decoding: PackageResources.app_css, as: UTF8.self)

    /// Security headers for the panel's documents: scripts only from the panel itself, no framing, no referrer.
    /// (It talks to the admin API here and to the gateway, on another port, to try a world.)
    func panelFields(_ head: HTTPRequestHead) -> [(String, String)] {
        [("content-security-policy", "default-src 'self'; connect-src 'self' http: https:; img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"),
                ("x-frame-options", "DENY"), ("referrer-policy", "no-referrer"), ("x-content-type-options", "nosniff")]
    }

    func addPanelRoutes(_ r: inout AdminRoutes) {
        r.add(AdminRoute("GET", "/", needsToken: false) { _ in
            AdminResponse(status: 303, contentType: "text/plain; charset=utf-8", body: "the panel is at /panel\n", fields: [("location", "/panel")])
        })
        r.add(AdminRoute("GET", "/panel", needsToken: false) { [unowned self] req in
            AdminResponse(status: 200, contentType: "text/html; charset=utf-8", body: Self.panelHTML, fields: panelFields(req.head))
        })
        r.add(AdminRoute("GET", "/panel/app.js", needsToken: false) { [unowned self] req in
            AdminResponse(status: 200, contentType: "text/javascript; charset=utf-8", body: Self.panelJS, fields: panelFields(req.head))
        })
        r.add(AdminRoute("GET", "/panel/app.css", needsToken: false) { [unowned self] req in
            AdminResponse(status: 200, contentType: "text/css; charset=utf-8", body: Self.panelCSS, fields: panelFields(req.head))
        })
        r.add(AdminRoute("POST", "/panel/login", needsToken: false) { [unowned self] req in login(req) })
        r.add(AdminRoute("POST", "/panel/logout", needsToken: false) { [unowned self] req in logout(req) })
        r.add(AdminRoute("GET", "/panel/session", needsToken: false) { [unowned self] req in
            let now = PanelSessions.nowSeconds()
            guard let id = PanelSessions.cookieValue(req.head), let s = panelSessions?.session(id, now: now) else {
                return .error(.unauthorized, "not signed in")
            }
            return AdminResponse(status: 200, contentType: "application/json", body: #"{"signed_in":true,"csrf":"\#(s.csrf)"}"# + "\n")
        })
    }

    /// `POST /panel/login` with `{"token": "…"}`: the admin token, compared by digest; the session cookie and
    /// the CSRF token come back. The token is never echoed, logged or put in a URL.
    func login(_ req: AdminRequest) -> AdminResponse {
        let now = PanelSessions.nowSeconds()
        guard let sessions = panelSessions, let expected = adminToken else {
            return .error(.unauthorized, "the admin listener has no admin token: the panel is closed")
        }
        // The right token always signs in (a flood of wrong ones from anyone who reaches the port must not lock
        // the operator out); wrong ones past the limit are told to slow down.
        guard let o = (try? JSONSerialization.jsonObject(with: Data(req.body))) as? [String: Any], let token = o["token"] as? String,
              expected.matches(SecretDigest(of: token)) else {
            guard sessions.failed(now: now) else {
                return .error(.rateLimited, "too many failed sign-ins this minute; try again shortly", fields: [("retry-after", "60")])
            }
            return .error(.unauthorized, "that is not the admin token (it is in <home>/admin.token)")
        }
        let (id, csrf) = sessions.create(now: now)
        let secure = req.head.header("x-forwarded-proto") == "https" ? "; Secure" : ""
        let cookie = "\(PanelSessions.cookie)=\(id); Path=/; HttpOnly; SameSite=Strict; Max-Age=\(PanelSessions.maxAgeSeconds)\(secure)"
        return AdminResponse(status: 200, contentType: "application/json", body: #"{"signed_in":true,"csrf":"\#(csrf)"}"# + "\n",
                             fields: [("set-cookie", cookie)])
    }

    func logout(_ req: AdminRequest) -> AdminResponse {
        let now = PanelSessions.nowSeconds()
        guard let sessions = panelSessions, sessions.authorizes(req.head, now: now), let id = PanelSessions.cookieValue(req.head) else {
            return .error(.unauthorized, "not signed in, or the CSRF token is missing")
        }
        sessions.end(id)
        return AdminResponse(status: 200, contentType: "application/json", body: #"{"signed_in":false}"# + "\n",
                             fields: [("set-cookie", "\(PanelSessions.cookie)=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0")])
    }
}
