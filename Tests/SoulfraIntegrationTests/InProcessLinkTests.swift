import Testing
import SoulfraBroker
import SoulfraPeerLink
@testable import SoulfraServer

@Suite("In-process broker links (sans-IO)")
struct InProcessLinkTests {
    static let token = "in-process-gateway-token-01"

    /// Moves frames both ways until neither side has more (bounded).
    func pump(_ link: InProcessLink, _ broker: Broker, now: UInt64) {
        for _ in 0..<16 {
            var moved = link.peerToBroker(broker, now: now)
            broker.drainReady { l in if l == link.id, link.brokerToPeer(broker, now: now) { moved = true } }
            if !moved { return }
        }
    }

    @Test("a peer in the daemon attaches without a socket, is welcomed, and is made again after the broker drops it")
    func attachAndReattach() {
        let broker = Broker(access: AccessTable(gatewayToken: Self.token))
        let first = PeerLink(identity: PeerIdentity(kind: .gateway, token: Self.token, loop: 0))
        let link = InProcessLink(id: 1_000_000, peer: first)
        link.attach(to: broker, now: 1_000)
        pump(link, broker, now: 1_000)
        #expect(first.isReady, "no WELCOME through the in-process link")
        link.brokerClosed(broker, now: 2_000)
        #expect(first.isClosed, "the peer's side did not hear the link end")
        let second = PeerLink(identity: PeerIdentity(kind: .gateway, token: Self.token, loop: 0))
        link.reattach(second, to: broker, now: 3_000)
        pump(link, broker, now: 3_000)
        #expect(second.isReady && link.peer === second)
    }

    @Test("while the broker pauses the link the peer's frames wait; they go once it resumes")
    func pausedLinkWaits() {
        let broker = Broker(access: AccessTable(gatewayToken: Self.token))
        let peer = PeerLink(identity: PeerIdentity(kind: .gateway, token: Self.token, loop: 0))
        let link = InProcessLink(id: 1_000_000, peer: peer)
        link.attach(to: broker, now: 1_000)
        link.paused = true
        #expect(!link.peerToBroker(broker, now: 1_000) && !peer.output.isEmpty, "HELLO went through a paused link")
        link.paused = false
        pump(link, broker, now: 1_000)
        #expect(peer.isReady && peer.output.isEmpty)
    }
}
