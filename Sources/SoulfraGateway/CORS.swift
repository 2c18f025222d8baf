/// Browser apps calling the gateway directly (CORS): each world's allowed origins, installed by the control
/// plane. A preflight (`OPTIONS` with `Origin` and `Access-Control-Request-Method`) is answered here and never
/// reaches an instance; an allowed origin's requests get `Access-Control-Allow-Origin` on every answer,
/// errors included, so the page can read them.
public struct CORSPolicy: Sendable, Equatable {
    /// Allowed origins by world (`*`: any); the panel's origin, allowed for every world.
    public var origins: [String: Set<String>] = [:]
    public var everyWorld: Set<String> = []

    public init(origins: [String: Set<String>] = [:], everyWorld: Set<String> = []) {
        self.origins = origins
        self.everyWorld = everyWorld
    }

    /// The value for `Access-Control-Allow-Origin` (the origin itself, or `*`), nil when not allowed.
    public func allow(origin: String, world: String) -> String? {
        guard !origin.isEmpty else { return nil }
        if everyWorld.contains(origin) { return origin }
        guard let list = origins[world] else { return nil }
        if list.contains(origin) { return origin }
        return list.contains("*") ? "*" : nil
    }

    /// Whether the world names origins of its own (a WebSocket from another origin is then refused).
    func restricts(_ world: String) -> Bool { !(origins[world]?.isEmpty ?? true) }

    static let allowMethods = "GET, POST, DELETE, OPTIONS"
    static let allowHeaders = "authorization, content-type, accept, last-event-id, x-soulfra-session"
    static let exposeHeaders = "x-request-id, retry-after, ratelimit, ratelimit-policy, ratelimit-limit, ratelimit-remaining, ratelimit-reset"
    static let maxAgeSeconds = "600"

    /// The headers an allowed origin's answers carry.
    static func headers(_ allowed: String) -> [(String, String)] {
        [("access-control-allow-origin", allowed), ("access-control-expose-headers", exposeHeaders), ("vary", "Origin")]
    }
}

extension Gateway {
    /// The world a `/v1/worlds/{w}/…` path names ("" for others), without matching the route.
    static func worldOfPath(_ path: String) -> Substring {
        let prefix = "/v1/worlds/"
        guard path.hasPrefix(prefix) else { return "" }
        let rest = path.dropFirst(prefix.count)
        return rest.prefix { $0 != "/" && $0 != "?" }
    }

    /// Answers `OPTIONS`: a CORS preflight from an allowed origin gets 204 with what it may send; one from
    /// another origin `403 origin_not_allowed`; a plain `OPTIONS` 204 with `Allow`. No key is needed (browsers
    /// send none on a preflight) and nothing reaches the world.
    func preflight(_ c: Connection, id: Int32, head: RequestHead, path: String, requestID: String) {
        let world = String(Self.worldOfPath(path))
        if c.proto != .http2 { c.discardRequestBody() }
        var headers: [(String, String)] = [("x-request-id", requestID)]
        if head.origin.isEmpty {
            headers.append(("allow", CORSPolicy.allowMethods))
        } else if let allowed = cors.allow(origin: head.origin, world: world) {
            headers += [("access-control-allow-origin", allowed), ("access-control-allow-methods", CORSPolicy.allowMethods),
                        ("access-control-allow-headers", CORSPolicy.allowHeaders), ("access-control-max-age", CORSPolicy.maxAgeSeconds),
                        ("vary", "Origin")]
        } else {
            return reject(c, id: id, GatewayError(.originNotAllowed, "origin \(head.origin) may not call world \"\(world)\" from a browser: add it to the world's allowed origins (soulfra cors)",
                                                  headers: [("vary", "Origin")]), requestID: requestID)
        }
        c.respond(id, status: 204, headers: headers, body: [], end: true)
        counted(status: 204, code: nil)
        if c.proto != .http2 && !c.h1KeepAlive { c.finish(.finished) }
        markDirty(c)
    }
}
