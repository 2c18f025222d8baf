import Foundation
import SoulfraHTTP

/// A world's users (`/v1/worlds/{w}/users`, executive worlds' `user_management`): kept in the world's vault as
/// a session of its own whose events are the directory's changes, so every instance answers from the same
/// record and a restart loses nothing. Replies lead with `"status"`, which the gateway makes the HTTP status.
extension AgentInstance {
    /// The vault session holding the directory's changes (the last `VaultRequest.maxLimit` are read).
    static let directorySession = "_users"

    /// Applies one stored change (`{"op":"create","user":{…}}` or `{"op":"delete","id":…}`).
    static func fold(_ change: [String: Any], into directory: inout [(id: String, user: [String: Any])]) {
        switch change["op"] as? String {
        case "create":
            if let user = change["user"] as? [String: Any], let id = user["id"] as? String, !directory.contains(where: { $0.id == id }) {
                directory.append((id, user))
            }
        case "delete":
            if let id = change["id"] as? String { directory.removeAll { $0.id == id } }
        default:
            break
        }
    }

    /// `{"status":N, …rest}`: the status first, where the gateway looks for it.
    static func reply(_ status: Int, _ rest: [String: Any]) -> String {
        let body = String(decoding: (try? JSONSerialization.data(withJSONObject: rest, options: [.sortedKeys])) ?? Data("{}".utf8), as: UTF8.self)
        return #"{"status":\#(status)"# + (body == "{}" ? "}" : "," + body.dropFirst())
    }

    static func problem(_ status: Int, _ code: String, _ message: String) -> String {
        reply(status, ["error": ["code": code, "message": message]])
    }

    /// GET lists (or shows one by id), POST makes a user from `{"name", "email", "role"}`, DELETE removes one.
    /// A change is answered once the vault has it (in `3way_full`).
    func directoryRequest(_ c: Conversation) {
        guard let (method, rest) = c.resource else { return }
        let id = rest.split(separator: "/").first.map(String.init) ?? ""
        switch (method, id.isEmpty) {
        case ("GET", true):
            emitReply(c, Self.reply(200, ["users": c.directory.map(\.user), "count": c.directory.count]))
        case ("GET", false):
            guard let u = c.directory.first(where: { $0.id == id }) else { return emitReply(c, Self.problem(404, "user_not_found", "no user \(id) in this world")) }
            emitReply(c, Self.reply(200, ["user": u.user]))
        case ("POST", true):
            guard let o = (try? JSONSerialization.jsonObject(with: Data(c.input.utf8))) as? [String: Any],
                  let name = o["name"] as? String, (1...100).contains(name.count) else {
                return emitReply(c, Self.problem(400, "invalid_request", #"a user needs a name (1 to 100 characters): {"name": "Ada", "email": "ada@example.com", "role": "analyst"}"#))
            }
            var user: [String: Any] = ["id": Self.newUserID(), "name": name, "created_at_ms": Int(Date().timeIntervalSince1970 * 1000)]
            if let email = o["email"] as? String, email.count <= 200 { user["email"] = email }
            if let role = o["role"] as? String, role.count <= 50 { user["role"] = role }
            c.directory.append((user["id"] as! String, user))
            storeChange(c, Self.reply(201, ["op": "create", "user": user]))
        case ("DELETE", false):
            guard c.directory.contains(where: { $0.id == id }) else { return emitReply(c, Self.problem(404, "user_not_found", "no user \(id) in this world")) }
            c.directory.removeAll { $0.id == id }
            storeChange(c, Self.reply(200, ["op": "delete", "id": id]))
        default:
            emitReply(c, Self.problem(405, "method_not_allowed", "\(method) /users\(id.isEmpty ? "" : "/" + id) is not served: GET and POST /users, GET and DELETE /users/{id}"))
        }
    }

    static func newUserID() -> String {
        var rng = SystemRandomNumberGenerator()
        let alphabet = Array("0123456789abcdefghijklmnopqrstuvwxyz")
        return "u_" + String((0..<12).map { _ in alphabet[Int.random(in: 0..<alphabet.count, using: &rng)] })
    }
}
