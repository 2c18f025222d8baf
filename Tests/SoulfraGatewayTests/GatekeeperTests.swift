import SoulfraLimits
import Foundation
import Testing
import SoulfraTestSupport
@testable import SoulfraGateway
import SoulfraKeys


/// Keys for the tests: the plaintexts (as an app holds them) and the table (as the gateway does).
struct Fixture {
    let kids: APIKey, exec: APIKey, limited: APIKey, revoked: APIKey, expired: APIKey, readOnly: APIKey
    let table: KeyTable

    init() {
        var r = SeededRandom(seed: 99)
        kids = APIKey.generate(type: "kids", using: &r)!
        exec = APIKey.generate(type: "exec", using: &r)!
        limited = APIKey.generate(type: "kids", using: &r)!
        revoked = APIKey.generate(type: "kids", using: &r)!
        expired = APIKey.generate(type: "kids", using: &r)!
        readOnly = APIKey.generate(type: "kids", using: &r)!
        let all: Permissions = [.worldAccess, .agentInteraction, .vaultStorage, .analyticsRead]
        table = KeyTable([
            KeyRecord(id: 1, digest: kids.digest, prefix: kids.prefix, world: "playground", permissions: all),
            KeyRecord(id: 2, digest: exec.digest, prefix: exec.prefix, world: "corporate-daycare", permissions: all.union(.userManagement)),
            KeyRecord(id: 3, digest: limited.digest, prefix: limited.prefix, world: "playground", permissions: all,
                      requestsPerSecond: 10, burst: 3),
            KeyRecord(id: 4, digest: revoked.digest, prefix: revoked.prefix, world: "playground", permissions: all, disabled: true),
            KeyRecord(id: 5, digest: expired.digest, prefix: expired.prefix, world: "playground", permissions: all, expiresAt: 1_000),
            KeyRecord(id: 6, digest: readOnly.digest, prefix: readOnly.prefix, world: "playground", permissions: [.analyticsRead]),
        ])
    }
}

func bearer(_ k: APIKey) -> String { "Bearer " + k.plaintext }

func rejected(_ a: Admission) -> GatewayError? {
    if case .reject(let e) = a { return e }
    return nil
}

@Suite("Gateway admission")
struct GatekeeperTests {
    let f = Fixture()

    @Test("routes match; unknown paths 404, wrong methods 405 with Allow")
    func routes() throws {
        #expect(try Route.match(method: "POST", path: "/v1/worlds/playground/messages").get() == .messages(world: "playground"))
        #expect(try Route.match(method: "GET", path: "/v1/worlds/arena/rooms/final").get() == .room(world: "arena", room: "final", publish: false))
        #expect(try Route.match(method: "POST", path: "/v1/worlds/arena/rooms/final").get() == .room(world: "arena", room: "final", publish: true))
        #expect(try Route.match(method: "GET", path: "/v1/worlds/playground/sessions/s-1").get() == .session(world: "playground", id: "s-1"))
        #expect(try Route.match(method: "POST", path: "/v1/worlds/corporate-daycare/users").get() == .users(world: "corporate-daycare", rest: ""))
        for path in ["/", "/v1", "/v1/worlds", "/v1/worlds/playground", "/v1/worlds/play ground/messages", "/v2/worlds/a/messages",
                     "/v1/worlds/playground/messages/extra", "/v1/worlds/PLAY/messages"] {
            guard case .failure(let e) = Route.match(method: "POST", path: path) else { Issue.record("matched \(path)"); continue }
            #expect(e.status == 404, "\(path)")
        }
        guard case .failure(let e) = Route.match(method: "GET", path: "/v1/worlds/playground/messages") else { Issue.record("matched"); return }
        #expect(e.status == 405 && e.headers.first?.0 == "allow" && e.headers.first?.1 == "POST")
    }

    @Test("a valid key for the route's world and permission is admitted")
    func admitted() {
        let g = Gatekeeper(table: f.table)
        guard case .admit(let route, let key, _) = g.admit(method: "POST", path: "/v1/worlds/playground/messages",
                                                          authorization: bearer(f.kids), queryToken: nil, now: 0, unixSeconds: 0) else {
            Issue.record("not admitted")
            return
        }
        #expect(route == .messages(world: "playground") && key.id == 1)
    }

    @Test("401: missing, malformed, mistyped (checksum), unknown, revoked, expired")
    func unauthorized() {
        let g = Gatekeeper(table: f.table)
        func code(_ auth: String?, _ query: String? = nil) -> String? {
            rejected(g.admit(method: "POST", path: "/v1/worlds/playground/messages", authorization: auth, queryToken: query,
                             now: 0, unixSeconds: 2_000)).map { "\($0.status) \($0.code.name)" }
        }
        #expect(code(nil) == "401 unauthorized")
        #expect(code("Basic dXNlcjpwYXNz") == "401 unauthorized")
        #expect(code("Bearer not-a-key") == "401 unauthorized")
        var typo = Array(f.kids.plaintext)
        typo[20] = typo[20] == "x" ? "y" : "x"
        #expect(code("Bearer " + String(typo)) == "401 unauthorized")
        var r = SeededRandom(seed: 12345)
        #expect(code(bearer(APIKey.generate(type: "kids", using: &r)!)) == "401 unauthorized", "well-formed but unknown")
        #expect(code(bearer(f.revoked)) == "401 key_disabled")
        #expect(code(bearer(f.expired)) == "401 key_expired")
        #expect(code(nil, f.kids.plaintext) == "401 unauthorized", "no access_token on routes apps reach with headers")
    }

    @Test("403: another world's key, or a key without the route's permission")
    func forbidden() {
        let g = Gatekeeper(table: f.table)
        let wrongWorld = rejected(g.admit(method: "POST", path: "/v1/worlds/corporate-daycare/messages", authorization: bearer(f.kids),
                                          queryToken: nil, now: 0, unixSeconds: 0))
        #expect(wrongWorld?.status == 403 && wrongWorld?.code.name == "wrong_world")
        let noPerm = rejected(g.admit(method: "POST", path: "/v1/worlds/playground/messages", authorization: bearer(f.readOnly),
                                      queryToken: nil, now: 0, unixSeconds: 0))
        #expect(noPerm?.status == 403 && noPerm?.code.name == "insufficient_permissions")
        #expect(noPerm?.message.contains("agent_interaction") == true)
        let users = rejected(g.admit(method: "POST", path: "/v1/worlds/playground/users", authorization: bearer(f.kids),
                                     queryToken: nil, now: 0, unixSeconds: 0))
        #expect(users?.code.name == "insufficient_permissions", "user_management is for executive keys")
        if case .reject(let e) = g.admit(method: "POST", path: "/v1/worlds/corporate-daycare/users", authorization: bearer(f.exec),
                                         queryToken: nil, now: 0, unixSeconds: 0) {
            Issue.record("an executive key with user_management was refused: \(e)")
        }
    }

    @Test("browsers may send the key as access_token on WebSocket and room subscriptions only")
    func queryToken() {
        let g = Gatekeeper(table: f.table)
        if case .reject(let e) = g.admit(method: "GET", path: "/v1/worlds/playground/ws", authorization: nil,
                                         queryToken: f.kids.plaintext, now: 0, unixSeconds: 0) {
            Issue.record("rejected: \(e)")
        }
        if case .reject(let e) = g.admit(method: "GET", path: "/v1/worlds/playground/rooms/lobby", authorization: nil,
                                         queryToken: f.kids.plaintext, now: 0, unixSeconds: 0) {
            Issue.record("rejected: \(e)")
        }
    }

    @Test("429 past the burst, with Retry-After ≥ 1 and both rate-limit header generations; refills with time")
    func rateLimited() {
        let g = Gatekeeper(table: f.table)
        var now: UInt64 = 5_000_000_000
        func go() -> Admission {
            g.admit(method: "POST", path: "/v1/worlds/playground/messages", authorization: bearer(f.limited), queryToken: nil,
                    now: now, unixSeconds: 0)
        }
        var remaining: [UInt32] = []
        for _ in 0..<3 {
            guard case .admit(_, _, let rl) = go() else { Issue.record("throttled inside the burst"); return }
            remaining.append(rl.remaining)
            #expect(rl.headers.contains { $0 == ("ratelimit-policy", "\"burst\";q=3;w=1") })
        }
        #expect(remaining == [2, 1, 0])
        guard let e = rejected(go()) else { Issue.record("not throttled"); return }
        #expect(e.status == 429 && e.code.name == "rate_limited")
        let h = Dictionary(uniqueKeysWithValues: e.headers.map { ($0.0, $0.1) })
        #expect(h["retry-after"] == "1", "0.1 s rounds up to a whole second")
        #expect(h["ratelimit"] == "\"burst\";r=0;t=1")
        #expect(h["ratelimit-remaining"] == "0" && h["ratelimit-limit"] == "3" && h["ratelimit-reset"] == "1")
        now += 100_000_000  // 0.1 s at 10/s: one token
        if case .reject = go() { Issue.record("a refilled token was refused") }
    }

    @Test("revocation takes effect on the next request after the table swap")
    func revoke() {
        let g = Gatekeeper(table: f.table)
        g.install(KeyTable([]))
        #expect(rejected(g.admit(method: "POST", path: "/v1/worlds/playground/messages", authorization: bearer(f.kids),
                                 queryToken: nil, now: 0, unixSeconds: 0))?.code.name == "unauthorized")
    }

    @Test("error bodies are the documented JSON shape, escaped")
    func json() {
        let e = GatewayError(.rateLimited, "too \"fast\"\n")
        #expect(e.json(requestID: "req-1") == #"{"error":{"code":"rate_limited","message":"too \"fast\"\n","request_id":"req-1"}}"#)
    }
}

@Suite("Gateway: error codes")
struct ErrorCodeTests {
    @Test("the error codes and their statuses are exactly the table in docs/api.md")
    func mirrorsDocs() throws {
        let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        let doc = try String(contentsOf: root.appendingPathComponent("docs/api.md"), encoding: .utf8)
        var documented: [String: Int] = [:]
        for line in doc.split(separator: "\n") where line.hasPrefix("| ") {
            let cells = line.split(separator: "|").map { $0.trimmingCharacters(in: .whitespaces) }
            guard cells.count >= 3, let status = Int(cells[0]), (400..<600).contains(status) else { continue }
            for name in cells[1].split(separator: ",") {
                let n = name.trimmingCharacters(in: .whitespaces).trimmingCharacters(in: CharacterSet(charactersIn: "`"))
                if !n.isEmpty { documented[n] = status }
            }
        }
        let coded = Dictionary(uniqueKeysWithValues: GatewayError.Code.allCases.map { ($0.name, $0.status) })
        #expect(documented == coded)
    }
}
