import SoulfraLimits

/// The gateway's access log on one loop: an entry per request that names a world (answered, failed or
/// refused), kept as the request's own strings (nothing formatted on the loop) until the owner publishes
/// them. Kept only while something takes them (`accessLogEnabled`: the control plane writes them out).
/// Bounded: past `maxAccessEntries` between publishes, entries are dropped and counted.
extension Gateway {
    public static let maxAccessEntries = 65_536

    /// Hands the entries since the last call to `take` (which copies what it keeps), then empties the log in
    /// place: its buffer is kept, so a busy loop allocates nothing for it from one publish to the next.
    public func drainAccessLog(_ take: ([AccessEntry]) -> Void) {
        guard !accessLog.isEmpty else { return }
        take(accessLog)
        accessLog.removeAll(keepingCapacity: true)
    }

    /// The entries since the last call (tests).
    func takeAccessLog() -> [AccessEntry] {
        var out: [AccessEntry] = []
        drainAccessLog { out = Array($0) }
        return out
    }

    func logAccess(_ e: AccessEntry) {
        guard accessLogEnabled else { return }
        guard accessLog.count < Self.maxAccessEntries else {
            counters.accessLogDropped &+= 1
            return
        }
        accessLog.append(e)
    }

    /// The most of a target an entry keeps (a long one is cut: the log's memory is bounded by bytes too).
    static let maxLoggedTarget = 512

    /// The target as logged: the request's own string, or its start when it is long.
    @inline(__always) static func loggedTarget(_ t: String) -> String {
        t.utf8.count <= maxLoggedTarget ? t : String(decoding: t.utf8.prefix(maxLoggedTarget), as: UTF8.self) + "…"
    }

    /// An exchange that is done: its status, time and bytes, under its key.
    func logAccess(_ ex: Exchange) {
        guard accessLogEnabled, ex.status != 0 else { return }
        logAccess(AccessEntry(unixSeconds: unixSeconds, world: ex.route.world, method: ex.method, target: Self.loggedTarget(ex.target), status: ex.status,
                              micros: (now &- ex.startedAt) / 1_000, bytesOut: UInt64(max(0, ex.replyBytes)), key: ex.key.prefix, requestID: ex.requestID,
                              protocolName: ex.kind == .webSocket ? "WebSocket" : ex.conn.proto == .http2 ? "HTTP/2" : "HTTP/1.1"))
    }

    /// A request refused before it became an exchange (a bad key, a wrong route): logged under the world its
    /// path names, if some key names that world (made-up worlds in paths cost nothing).
    func logRefusal(_ c: Connection, head: RequestHead, _ e: GatewayError, requestID: String, now: UInt64) {
        guard accessLogEnabled else { return }
        let world = String(Self.worldOfPath(head.path))
        guard !world.isEmpty, gatekeeper.table.worlds.contains(world) else { return }
        logAccess(AccessEntry(unixSeconds: unixSeconds, world: world, method: head.method, target: Self.loggedTarget(head.path), status: UInt16(e.status),
                              micros: 0, bytesOut: 0, key: "", requestID: requestID, protocolName: c.proto == .http2 ? "HTTP/2" : "HTTP/1.1"))
    }
}
