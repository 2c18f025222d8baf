import Foundation
import SoulfraBroker
import SoulfraGateway
import SoulfraLoop
import SoulfraMetrics

/// The admin listener: its routes, its connections' output, and `/metrics`.
extension Wiring {
    /// The admin listener's routes: health and readiness for orchestrators (no token), metrics for scrapers.
    func makeAdminRoutes() -> AdminRoutes {
        var r = AdminRoutes(adminToken: adminToken)
        r.add(AdminRoute("GET", "/healthz", needsToken: false) { _ in .text(200, "ok\n") })
        r.add(AdminRoute("GET", "/readyz", needsToken: false) { [unowned self] _ in
            shutdownStarted == nil ? .text(200, "ready\n") : .text(503, "shutting down\n", fields: [("retry-after", "1")])
        })
        r.add(AdminRoute("GET", "/metrics", needsToken: true) { [unowned self] _ in
            AdminResponse(status: 200, contentType: "text/plain; version=0.0.4; charset=utf-8", body: renderMetrics())
        })
        return r
    }

    func flushAdmin(now: UInt64) {
        for (conn, a) in admin where !a.output.inFlight {
            if a.output.isEmpty {
                if a.closeAfterOutput { loop.close(conn: conn, flush: false, now: now) }
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
        var gw = gateway?.counters ?? GatewayCounters()
        for s in inboxes where s.index != inbox.index { gw = gw.merging(s.gatewayLatest.withLock { $0 }) }
        var vaults = vault?.metrics
        for s in inboxes where s.index != inbox.index {
            if let other = s.vaultLatest.withLock({ $0 }) { vaults = vaults?.merging(other) ?? other }
        }
        return snap.prometheusText() + gw.prometheusText() + (vaults?.prometheusText() ?? "")
            + LoopCounters.prometheusText(loops.sorted { $0.0 < $1.0 })
    }
}
