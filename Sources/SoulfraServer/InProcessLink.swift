import SoulfraBroker
import SoulfraPeerLink

/// A broker link with no socket: a peer living in the daemon (the gateway now; the vault and runtime next)
/// whose frames are handed to its loop's broker in memory — no syscall, no copy beyond the frame's own. The
/// broker sees an ordinary link, under an id past every slot the loop hands out, and applies the same
/// credit, watermarks and pauses as to a socket.
final class InProcessLink {
    /// The link's id at the broker.
    let id: UInt32
    /// The peer's side (`PeerLink`); replaced when the link is made again.
    private(set) var peer: PeerLink
    /// The broker paused reading this link (backpressure): the peer's frames wait in its output.
    var paused = false

    init(id: UInt32, peer: PeerLink) {
        self.id = id
        self.peer = peer
    }

    /// Attaches to the broker and starts the peer's handshake.
    func attach(to broker: Broker, now: UInt64) {
        broker.attach(link: id, now: now)
        paused = false
        peer.start()
    }

    /// Makes the link again with a fresh peer side (the broker gave up on the old one).
    func reattach(_ fresh: PeerLink, to broker: Broker, now: UInt64) {
        broker.detach(link: id, now: now)
        peer = fresh
        attach(to: broker, now: now)
    }

    /// Hands what the peer wrote to the broker (unless paused); true if anything moved.
    @inline(__always)
    func peerToBroker(_ broker: Broker, now: UInt64) -> Bool {
        guard !paused && !peer.output.isEmpty else { return false }
        broker.receive(link: id, bytes: peer.output.readable, now: now)
        peer.output.removeAll()
        return true
    }

    /// Hands what the broker queued for this link to the peer; true if anything moved.
    @inline(__always)
    func brokerToPeer(_ broker: Broker, now: UInt64) -> Bool {
        let bytes = broker.takeOutput(link: id)
        if bytes.count > 0 { peer.receive(bytes, nowMilliseconds: now / 1_000_000) }
        broker.sent(link: id, count: bytes.count, now: now)
        return bytes.count > 0
    }

    /// The broker closed the link: the peer's streams end (outside shutdown the owner makes it again).
    func brokerClosed(_ broker: Broker, now: UInt64) {
        broker.detach(link: id, now: now)
        peer.transportClosed(reason: "the broker closed the in-process link")
    }
}
