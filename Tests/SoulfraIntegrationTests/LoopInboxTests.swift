import Foundation
import Testing
import SoulfraBroker
import SoulfraGateway
import SoulfraLoop
@testable import SoulfraServer

@Suite("What a loop publishes to other threads")
struct LoopInboxTests {
    @Test("a reader that saw a new sequence never reads the gateway counters of an older one")
    func gatewayCountersLandBeforeTheirSequence() async {
        let inbox = BrokerServer.LoopInbox(index: 0)
        let rounds: UInt64 = 200_000
        let snapshot = Broker(access: AccessTable(gatewayToken: "t")).snapshot()
        let writer = Task.detached {
            for i in 1...rounds {
                var g = GatewayCounters()
                g.addressRefusals = i
                inbox.publish(snapshot, LoopCounters(), gateway: g)
            }
        }
        // The reader does what `snapshotNow()` callers do: wait for a sequence, then read the counters.
        var stale = 0
        var seen: UInt64 = 0
        while seen < rounds {
            let sequence = inbox.latest.withLock { $0.sequence }
            let refusals = inbox.gatewayLatest.withLock { $0.addressRefusals }
            if refusals < sequence { stale += 1 }
            seen = sequence
        }
        await writer.value
        #expect(stale == 0, "\(stale) reads saw a sequence whose gateway counters were not yet there")
    }
}
