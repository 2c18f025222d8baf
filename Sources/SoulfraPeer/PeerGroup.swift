import SoulfraPeerLink
import SoulfraWire

/// One link to each broker loop. The broker partitions worlds across its loops, so peers that serve every
/// world (runtime workers, the vault, the gateway) attach once per loop and use the link of the world's loop
/// (`link(forWorld:)`). World instances need no group: the broker places their single link on their world's loop.
public final class PeerGroup {
    /// Links by loop index.
    public let links: [PeerConnection]

    private init(links: [PeerConnection]) { self.links = links }

    /// Connects to loop 0 (or whichever the broker picks), learns the loop count from WELCOME, then attaches
    /// one more link per remaining loop. `configure` runs on each connection before its handshake (set the
    /// delegate, say).
    public static func connect(
        address: PeerAddress, identity: PeerIdentity, timeoutMilliseconds: Int32 = 2_000,
        configure: (PeerConnection) -> Void = { _ in }
    ) throws(PeerError) -> PeerGroup {
        var first = identity
        first.loop = Wire.anyLoop
        let c0 = PeerConnection(address: address, identity: first)
        configure(c0)
        try c0.handshake(timeoutMilliseconds: timeoutMilliseconds)
        guard let w = c0.link.welcome else { throw PeerError(message: "no WELCOME") }
        let count = Int(w.loopCount)
        var byLoop = [PeerConnection?](repeating: nil, count: count)
        byLoop[Int(w.loopIndex)] = c0
        for loop in 0..<count where byLoop[loop] == nil {
            var id = identity
            id.loop = UInt16(loop)
            let c = PeerConnection(address: address, identity: id)
            configure(c)
            try c.handshake(timeoutMilliseconds: timeoutMilliseconds)
            guard let got = c.link.welcome?.loopIndex, Int(got) == loop else {
                throw PeerError(message: "asked for broker loop \(loop), attached to \(c.link.welcome?.loopIndex ?? 0)")
            }
            byLoop[loop] = c
        }
        return PeerGroup(links: byLoop.map { $0! })
    }

    /// The link on the loop that serves `world`.
    public func link(forWorld world: String) -> PeerConnection {
        links[Wire.loop(forWorld: world, count: links.count)]
    }

    public func close() { for l in links { l.close() } }
}
