import SoulfraLimits

/// A public API route (design §5).
public enum Route: Sendable, Equatable {
    /// `POST /v1/worlds/{w}/messages`
    case messages(world: String)
    /// `POST /v1/worlds/{w}/streams`
    case streams(world: String)
    /// `GET /v1/worlds/{w}/ws`
    case webSocket(world: String)
    /// `GET|POST /v1/worlds/{w}/rooms/{room}`
    case room(world: String, room: String, publish: Bool)
    /// `GET /v1/worlds/{w}/sessions/{s}`
    case session(world: String, id: String)
    /// `GET /v1/worlds/{w}/analytics`
    case analytics(world: String)
    /// `POST|GET|DELETE /v1/worlds/{w}/users[/…]`
    case users(world: String, rest: String)

    public var world: String {
        switch self {
        case .messages(let w), .streams(let w), .webSocket(let w), .analytics(let w): w
        case .room(let w, _, _), .session(let w, _), .users(let w, _): w
        }
    }

    /// The permission the route needs.
    public var permission: Permissions {
        switch self {
        case .messages, .streams, .webSocket: .agentInteraction
        case .room: .worldAccess
        case .session: .vaultStorage
        case .analytics: .analyticsRead
        case .users: .userManagement
        }
    }

    /// Whether a browser may send the key as `access_token` (it cannot set headers on these).
    public var acceptsQueryToken: Bool {
        switch self {
        case .webSocket: true
        case .room(_, _, let publish): !publish
        default: false
        }
    }

    /// Matches a method and a path (query excluded). Unknown paths are 404, known paths with another method 405.
    public static func match(method: String, path: String) -> Result<Route, GatewayError> {
        let parts = path.split(separator: "/", omittingEmptySubsequences: false).dropFirst()  // leading "/"
        guard parts.count >= 3, parts.first == "v1", parts[parts.startIndex + 1] == "worlds" else {
            return .failure(.notFound(path))
        }
        let rest = Array(parts.dropFirst(2))
        guard let world = rest.first.map(String.init), validName(world), rest.count >= 2 else { return .failure(.notFound(path)) }
        func only(_ allowed: [String], _ route: Route) -> Result<Route, GatewayError> {
            allowed.contains(method) ? .success(route) : .failure(.methodNotAllowed(method, allowed: allowed))
        }
        switch (rest[1], rest.count) {
        case ("messages", 2): return only(["POST"], .messages(world: world))
        case ("streams", 2): return only(["POST"], .streams(world: world))
        case ("ws", 2): return only(["GET"], .webSocket(world: world))
        case ("analytics", 2): return only(["GET"], .analytics(world: world))
        case ("rooms", 3) where validName(String(rest[2])):
            return only(["GET", "POST"], .room(world: world, room: String(rest[2]), publish: method == "POST"))
        case ("sessions", 3) where validSession(String(rest[2])):
            return only(["GET"], .session(world: world, id: String(rest[2])))
        case ("users", 2):
            return only(["GET", "POST"], .users(world: world, rest: ""))
        case ("users", 3) where validName(String(rest[2])):
            return only(["GET", "DELETE"], .users(world: world, rest: String(rest[2])))
        default:
            return .failure(.notFound(path))
        }
    }

    /// A session an app may name: a valid name not starting with `_` (those are the world's own, such as its
    /// user directory).
    static func validSession(_ s: String) -> Bool { validName(s) && !s.hasPrefix("_") }

    /// World, room and session names: 1–64 of [a-z0-9-_].
    static func validName(_ s: String) -> Bool {
        !s.isEmpty && s.utf8.count <= 64 && s.utf8.allSatisfy {
            ($0 >= 0x61 && $0 <= 0x7A) || ($0 >= 0x30 && $0 <= 0x39) || $0 == 0x2D || $0 == 0x5F
        }
    }
}
