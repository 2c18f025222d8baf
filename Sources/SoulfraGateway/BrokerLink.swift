import SoulfraPeerLink
import SoulfraWire

/// The gateway's link to one broker loop and the requests riding on it, by broker stream id.
final class BrokerLink: PeerLinkDelegate {
    let index: Int
    unowned let gateway: Gateway
    /// The gateway's side of the link (the gateway is a `gateway` peer).
    var peer: PeerLink
    var exchanges: [UInt32: Exchange] = [:]

    init(index: Int, gateway: Gateway, identity: PeerIdentity) {
        self.index = index
        self.gateway = gateway
        self.peer = PeerLink(identity: identity)
        peer.autoCredit = false
        peer.delegate = self
    }

    var usable: Bool { peer.isReady && !peer.goawayReceived }
    /// Coming up (HELLO sent), or down and about to be remade on the next tick: requests wait for it rather
    /// than fail. A link whose broker said GOAWAY is not coming back.
    var connecting: Bool { !peer.isReady && !gateway.shuttingDown }
    /// Requests waiting for the link, with their deadline; re-run when WELCOME arrives.
    var waiting: [(ex: Exchange, deadline: UInt64, run: (Exchange) -> Void)] = []

    func linkReady(_ link: PeerLink, welcome: Welcome) {
        let ready = waiting
        waiting.removeAll()
        for w in ready where !w.ex.retired && !w.ex.responseEnded { w.run(w.ex) }
    }

    func linkData(_ link: PeerLink, stream: UInt32, payload: UnsafeRawBufferPointer, flags: FrameFlags) {
        guard let ex = exchanges[stream] else { return }
        gateway.brokerData(ex, payload, flags: flags)
    }

    func linkWritable(_ link: PeerLink, stream: UInt32) {
        if let ex = exchanges[stream] { gateway.pumpOutbound(ex, now: gateway.now) }
    }

    func linkStreamClosed(_ link: PeerLink, stream: UInt32, code: ErrorCode, reason: String) {
        guard let ex = exchanges.removeValue(forKey: stream) else { return }
        ex.brokerStream = 0
        gateway.brokerClosed(ex, code: code, reason: reason)
    }

    func linkDropped(_ link: PeerLink, stream: UInt32, count: UInt32) {
        guard let ex = exchanges[stream] else { return }
        gateway.controlEvent(ex, event: "dropped", json: #"{"event":"dropped","count":\#(count)}"#)
        gateway.markDirty(ex.conn)
    }

    func linkPaced(_ link: PeerLink, stream: UInt32, paced: Bool) {
        guard let ex = exchanges[stream], ex.kind.streamsReply else { return }
        gateway.counters.pacedEvents += 1
        gateway.controlEvent(ex, event: "rate_limits", json: Framing.rateLimits(
            paced: paced, framesPerSecond: ex.key.framesPerSecond, bytesPerSecond: ex.key.bytesPerSecond))
        gateway.markDirty(ex.conn)
    }

    func linkClosed(_ link: PeerLink, code: ErrorCode, reason: String) {
        gateway.linkDown(self, reason: reason)
    }

    /// Runs `action` now if the link is up, later (within `waitNanoseconds`) if it is coming up; false if the
    /// link is down or going away.
    func whenUsable(_ ex: Exchange, now: UInt64, _ action: @escaping (Exchange) -> Void) -> Bool {
        if usable {
            action(ex)
            return true
        }
        guard connecting else { return false }
        waiting.append((ex, now &+ Gateway.linkWaitNanoseconds, action))
        return true
    }
}
