import SoulfraGateway
import SoulfraHTTP
import SoulfraKeys

/// What an admin route answers.
struct AdminResponse {
    var status: Int
    var contentType: String
    var body: String
    var fields: [(String, String)] = []

    static func text(_ status: Int, _ body: String, fields: [(String, String)] = []) -> AdminResponse {
        AdminResponse(status: status, contentType: "text/plain; charset=utf-8", body: body, fields: fields)
    }

    static func error(_ code: GatewayError.Code, _ message: String, status: Int? = nil, fields: [(String, String)] = []) -> AdminResponse {
        AdminResponse(status: status ?? code.status, contentType: "application/json", body: errorJSON(code, message), fields: fields)
    }
}

/// A route's answer: now, or later (the route starts work elsewhere — another loop — and calls back with the
/// response on this loop).
enum AdminAnswer {
    case now(AdminResponse)
    case later((@escaping (AdminResponse) -> Void) -> Void)
    /// An admin extension's route (`AdminExtension.routes[route]`): handed over, answered from another thread.
    case extended(AdminRequest, route: Int)
}

/// A request as a route sees it: the head, and the values of the path's `{name}` segments.
struct AdminRequest {
    let head: HTTPRequestHead
    let path: String
    let parameters: [String: String]
    var body: [UInt8] = []
}

/// One admin route: a method, a path pattern (`/v1/worlds/{world}`: a `{name}` segment matches one
/// non-empty segment), whether it needs the admin token, and what answers it. GET routes answer HEAD too.
struct AdminRoute {
    let method: String
    let pattern: [Substring]
    let needsToken: Bool
    let handle: (AdminRequest) -> AdminAnswer

    init(_ method: String, _ pattern: String, needsToken: Bool, _ handle: @escaping (AdminRequest) -> AdminResponse) {
        self.method = method
        self.pattern = pattern.split(separator: "/", omittingEmptySubsequences: false)
        self.needsToken = needsToken
        self.handle = { .now(handle($0)) }
    }

    /// A route that may answer later (`AdminAnswer.later`).
    init(_ method: String, _ pattern: String, needsToken: Bool, answer: @escaping (AdminRequest) -> AdminAnswer) {
        self.method = method
        self.pattern = pattern.split(separator: "/", omittingEmptySubsequences: false)
        self.needsToken = needsToken
        self.handle = answer
    }

    /// The path's parameters if it matches the pattern.
    func match(_ segments: [Substring]) -> [String: String]? {
        guard segments.count == pattern.count else { return nil }
        var parameters: [String: String] = [:]
        for (p, s) in zip(pattern, segments) {
            if p.hasPrefix("{") && p.hasSuffix("}") {
                guard !s.isEmpty else { return nil }
                parameters[String(p.dropFirst().dropLast())] = String(s)
            } else if p != s {
                return nil
            }
        }
        return parameters
    }
}

/// The admin listener's routes, looked up in order: 404 when no pattern matches the path, 405 (with
/// `Allow`) when some do but not for this method, 401 when the route needs the admin token and the request
/// lacks it (no token configured: such routes are closed). The control plane adds its routes here.
struct AdminRoutes {
    var routes: [AdminRoute] = []
    let adminToken: SecretDigest?
    /// The panel's sign-ins: a session cookie stands for the token (with its CSRF token for changes).
    let sessions: PanelSessions?

    init(adminToken: SecretDigest?, sessions: PanelSessions? = nil) {
        self.adminToken = adminToken
        self.sessions = sessions
    }

    mutating func add(_ route: AdminRoute) { routes.append(route) }

    func answer(_ head: HTTPRequestHead, body: [UInt8] = []) -> AdminAnswer {
        switch resolve(head) {
        case .failure(let refusal): return .now(refusal.response)
        case .success(let (route, path, parameters)): return route.handle(AdminRequest(head: head, path: path, parameters: parameters, body: body))
        }
    }

    /// A request's route and parameters, or its refusal (404, 405, 401) — known from the head alone, so a
    /// refused request's body is never read (`AdminConnection` answers and closes at the head).
    func resolve(_ head: HTTPRequestHead) -> Result<(AdminRoute, String, [String: String]), Refusal> {
        let path = head.target.split(separator: "?", maxSplits: 1).first.map(String.init) ?? head.target
        let segments = path.split(separator: "/", omittingEmptySubsequences: false)
        let method = head.method == "HEAD" ? "GET" : head.method
        var allowed: [String] = []
        for route in routes {
            guard let parameters = route.match(segments) else { continue }
            guard route.method == method else {
                allowed.append(route.method)
                continue
            }
            if route.needsToken && !authorized(head) {
                if let sessions, adminToken != nil, sessions.verdict(head, now: PanelSessions.nowSeconds()) == .csrfFailed {
                    return .failure(Refusal(response: .error(.csrfFailed, "a change from the panel needs its X-CSRF-Token header and the panel's own origin")))
                }
                return .failure(Refusal(response: .error(.unauthorized, "the admin token is required (Authorization: Bearer …)",
                                                         fields: [("www-authenticate", #"Bearer realm="soulfra-admin""#)])))
            }
            return .success((route, path, parameters))
        }
        guard allowed.isEmpty else {
            let allow = (allowed.contains("GET") ? allowed + ["HEAD"] : allowed).joined(separator: ", ")
            return .failure(Refusal(response: .error(.methodNotAllowed, "\(head.method) is not allowed here", fields: [("allow", allow)])))
        }
        return .failure(Refusal(response: .error(.notFound, "no route for \(path)")))
    }

    struct Refusal: Error { let response: AdminResponse }

    private func authorized(_ h: HTTPRequestHead) -> Bool {
        guard let expected = adminToken else { return false }
        guard let auth = h.header("authorization"), let token = bearerToken(auth) else {
            return sessions?.authorizes(h, now: PanelSessions.nowSeconds()) ?? false
        }
        return expected.matches(SecretDigest(of: String(token)))
    }
}
