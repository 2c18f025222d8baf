import SoulfraHTTP
import SoulfraVault
import SoulfraWire

/// `GET /v1/worlds/{w}/sessions/{s}`: one page of a session's history, read from the world's vault through the
/// broker and answered as JSON with a cursor for the next page.
extension Gateway {
    /// Records kept per page at most (a page is also cut at `limit` events).
    static let historyPageBytes = 256 << 10

    /// Reads `after` and `limit` from the query; nil: a value is not a number in range.
    static func historyQuery(_ query: Substring) -> (after: UInt64, limit: Int)? {
        var after: UInt64 = 0, limit = 100
        for pair in query.split(separator: "&") {
            if pair.hasPrefix("after=") {
                guard let v = UInt64(pair.dropFirst(6)) else { return nil }
                after = v
            } else if pair.hasPrefix("limit=") {
                guard let v = Int(pair.dropFirst(6)), (1...VaultRequest.maxLimit).contains(v) else { return nil }
                limit = v
            }
        }
        return (after, limit)
    }

    /// Opens the read on the vault link of the world's loop. The window covers the whole page, so the vault
    /// sends it at once; the page's byte budget bounds what the exchange holds.
    func openHistory(_ ex: Exchange, now: UInt64) {
        let link = links[Wire.loop(forWorld: ex.route.world, count: links.count)]
        guard link.usable else {
            if !link.whenUsable(ex, now: now, { [unowned self] ex in openHistory(ex, now: self.now) }) {
                fail(ex, unavailable(ex, "the broker loop for this world is not available"))
            }
            return
        }
        ex.link = link.index
        let request = VaultRequest.read(after: ex.historyAfter, limit: ex.historyLimit, maxBytes: Self.historyPageBytes)
        let window = Window(bytes: UInt32(Self.historyPageBytes + 64 << 10 + 64 * ex.historyLimit), frames: 4_096)
        ex.brokerStream = link.peer.open(Open(target: .vault, keyID: ex.key.id, world: ex.route.world, session: ex.session,
                                              detail: request.detail, window: window))
        link.exchanges[ex.brokerStream] = ex
        ex.awaitingAnswer = true
        armDeadline(ex, now: now)
    }

    /// DATA from the vault: messages gathered until the page ends.
    func historyData(_ ex: Exchange, _ payload: UnsafeRawBufferPointer, flags: FrameFlags) {
        guard ex.history.count + payload.count <= Self.historyPageBytes * 2 + (64 << 10) else {
            return fail(ex, GatewayError(.badGateway, "the vault sent more than a page"))
        }
        ex.history.append(contentsOf: payload)
        if !flags.contains(.more) { ex.historyEnds.append(ex.history.count) }
        if flags.contains(.endStream) { finishHistory(ex) }
    }

    /// The page is in: answer it as JSON.
    func finishHistory(_ ex: Exchange) {
        guard !ex.responded else { return }
        var json = #"{"world":"# + JSONText.string(ex.route.world) + #","session":"# + JSONText.string(ex.session) + #","events":["#
        var start = 0
        var first = true
        var end: (next: UInt64, more: Bool)?
        let ok = ex.history.withUnsafeBytes { raw -> Bool in
            for stop in ex.historyEnds {
                guard let m = VaultMessage.decode(UnsafeRawBufferPointer(rebasing: raw[start..<stop])) else { return false }
                start = stop
                switch m {
                case .record(let e):
                    json += (first ? "" : ",") + #"{"seq":\#(e.sessionSequence),"sequence":\#(e.sequence),"time_ms":\#(e.unixMilliseconds),"kind":\#(e.kind),"data":"#
                        + JSONText.string(String(decoding: e.payload, as: UTF8.self)) + "}"
                    first = false
                case .end(let next, let more):
                    end = (next, more)
                default:
                    return false
                }
            }
            return true
        }
        guard ok, let end else {
            return fail(ex, GatewayError(.badGateway, "the vault's answer was not a page of history"))
        }
        json += #"],"next_after":\#(end.next),"more":\#(end.more)"#
        if end.more {
            json += #","next":"# + JSONText.string("/v1/worlds/\(ex.route.world)/sessions/\(ex.session)?after=\(end.next)&limit=\(ex.historyLimit)")
        }
        json += "}"
        ex.history = []
        ex.historyEnds = []
        ex.awaitingAnswer = false
        finishUnary(ex, status: 200, body: Array(json.utf8), now: now)
    }
}
