import Foundation
import SoulfraBroker
import SoulfraGateway
import SoulfraLoop
import SoulfraMetrics
import SoulfraVault
import SoulfraNet
import SoulfraHTTP

/// The admin listener: its routes, its connections' output, and `/metrics`.
extension Wiring {
    /// The admin listener's routes: health and readiness for orchestrators (no token), metrics for scrapers.
    func makeAdminRoutes() -> AdminRoutes {
        var r = AdminRoutes(adminToken: adminToken, sessions: panelSessions)
        addPanelRoutes(&r)
        r.add(AdminRoute("GET", "/healthz", needsToken: false) { _ in .text(200, "ok\n") })
        r.add(AdminRoute("GET", "/readyz", needsToken: false) { [unowned self] _ in
            shutdownStarted == nil ? .text(200, "ready\n") : .text(503, "shutting down\n", fields: [("retry-after", "1")])
        })
        r.add(AdminRoute("GET", "/metrics", needsToken: true) { [unowned self] _ in
            AdminResponse(status: 200, contentType: "text/plain; version=0.0.4; charset=utf-8", body: renderMetrics())
        })
        r.add(AdminRoute("GET", "/admin/v1/worlds/{world}/replay", needsToken: true, answer: { [unowned self] req in replay(req) }))
        for (i, route) in (adminExtension?.routes ?? []).enumerated() {
            r.add(AdminRoute(route.method, route.pattern, needsToken: true, answer: { req in .extended(req, route: i) }))
        }
        return r
    }

    /// Hands a call to the admin extension under a new ticket; its answer comes back through this loop's inbox.
    func handOver(conn: UInt32, _ request: AdminRequest, route: Int) {
        guard let ext = adminExtension else { return }
        nextExtensionTicket &+= 1
        let ticket = nextExtensionTicket
        let inbox = inbox
        let replier = AdminReplier(ticket: ticket) { ticket, reply in
            inbox.commands.withLock { $0.append(.adminReply(ticket: ticket, reply)) }
            inbox.wake()
        }
        extensionCalls[ticket] = (conn, replier)
        let query = request.head.target.split(separator: "?", maxSplits: 1).dropFirst().first.map(String.init) ?? ""
        let call = AdminCall(method: request.head.method, path: request.path, query: query, parameters: request.parameters,
                             body: request.body, accept: request.head.header("accept") ?? "")
        ext.handle(call, route: route, replier: replier)
    }

    func deliverExtensionReply(ticket: UInt64, _ reply: AdminReply, now: UInt64) {
        guard let call = extensionCalls[ticket] else { return }
        admin[call.conn]?.deliver(reply)
        if admin[call.conn]?.cut == true {
            // Its reader stopped reading: the producer stops now, and what waits for the socket is dropped.
            call.replier.markGone()
            extensionCalls.removeValue(forKey: ticket)
            loop.close(conn: call.conn, flush: false, now: now)
            return
        }
        switch reply {
        case .response, .end: extensionCalls.removeValue(forKey: ticket)
        case .streamHead, .chunk: break
        }
    }

    /// `GET /admin/v1/worlds/{world}/replay?from_ms=&to_ms=&after=&limit=`: every session's events of the world
    /// stamped in `[from_ms, to_ms)`, after log sequence `after`, in log order, one page (docs/api.md).
    func replay(_ req: AdminRequest) -> AdminAnswer {
        let world = req.parameters["world"] ?? ""
        var fields: [Substring: UInt64] = [:]
        if let q = req.head.target.split(separator: "?", maxSplits: 1).dropFirst().first {
            for pair in q.split(separator: "&") {
                let kv = pair.split(separator: "=", maxSplits: 1)
                guard kv.count == 2, ["from_ms", "to_ms", "after", "limit"].contains(kv[0]), let v = UInt64(kv[1]) else {
                    return .now(.error(.invalidRequest, "query fields are from_ms, to_ms, after and limit, whole numbers; got \"\(pair)\""))
                }
                fields[kv[0]] = v
            }
        }
        let limit = fields["limit"] ?? 100
        guard (1...UInt64(VaultRequest.maxLimit)).contains(limit) else {
            return .now(.error(.invalidRequest, "limit must be 1 to \(VaultRequest.maxLimit)"))
        }
        let request = VaultRequest.replay(fromMilliseconds: fields["from_ms"] ?? 0, toMilliseconds: fields["to_ms"] ?? .max,
                                          after: fields["after"] ?? 0, limit: Int(limit))
        return .later { [unowned self] respond in
            readVault(world: world, session: [], request, now: monotonicNanoseconds()) { result in
                switch result {
                case .success(let page): respond(AdminResponse(status: 200, contentType: "application/json",
                                                               body: Self.replayJSON(world: world, page, fields: fields, limit: limit)))
                case .failure(let f): respond(.error(.vaultUnavailable, "the vault could not read \(world): \(f.reason)"))
                }
            }
        }
    }

    static func replayJSON(world: String, _ page: VaultPage, fields: [Substring: UInt64], limit: UInt64) -> String {
        var json = #"{"world":"# + JSONText.string(world) + #","events":["#
        for (k, e) in page.events.enumerated() {
            json += (k == 0 ? "" : ",") + #"{"sequence":\#(e.sequence),"session":"# + JSONText.string(String(decoding: e.session, as: UTF8.self))
                + #","seq":\#(e.sessionSequence),"time_ms":\#(e.unixMilliseconds),"kind":\#(e.kind),"data":"#
                + JSONText.string(String(decoding: e.payload, as: UTF8.self)) + "}"
        }
        json += #"],"next_after":\#(page.next),"more":\#(page.more)"#
        if page.more {
            var next = "/admin/v1/worlds/\(world)/replay?after=\(page.next)&limit=\(limit)"
            if let f = fields["from_ms"] { next += "&from_ms=\(f)" }
            if let t = fields["to_ms"] { next += "&to_ms=\(t)" }
            json += #","next":"# + JSONText.string(next)
        }
        return json + "}\n"
    }

    func flushAdmin(now: UInt64) {
        for (conn, a) in admin where !a.output.inFlight {
            if a.output.isEmpty {
                if a.closeAfterOutput && !a.waiting { loop.close(conn: conn, flush: false, now: now) }  // an answer still to come keeps it open
                continue
            }
            guard loop.canSend(conn: conn), let bytes = a.output.take() else { continue }
            loop.send(conn: conn, bytes: bytes)
        }
    }

    /// `/metrics`: the broker and gateway summed over loops (this loop fresh, the others as last published,
    /// ≤ 1 s old), and every loop's own counters.
    func renderMetrics() -> String {
        var snap = broker.snapshot()
        var loops: [(Int, LoopCounters)] = [(inbox.index, loop.counters)]
        for s in inboxes where s.index != inbox.index {
            let (other, counters) = s.latest.withLock { ($0.snapshot, $0.loop) }
            if let other { snap = snap.merging(other) }
            loops.append((s.index, counters))
        }
        var gw = gateway?.countersSnapshot() ?? GatewayCounters()
        for s in inboxes where s.index != inbox.index { gw = gw.merging(s.gatewayLatest.withLock { $0 }) }
        var vaults = vault?.metrics
        for s in inboxes where s.index != inbox.index {
            if let other = s.vaultLatest.withLock({ $0 }) { vaults = vaults?.merging(other) ?? other }
        }
        return snap.prometheusText() + gw.prometheusText() + (vaults?.prometheusText() ?? "")
            + LoopCounters.prometheusText(loops.sorted { $0.0 < $1.0 }) + (adminExtension?.metricsText ?? "")
    }
}
