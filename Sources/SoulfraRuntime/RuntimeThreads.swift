#if canImport(Glibc)
import Glibc
#endif
import Foundation
import Synchronization
import SoulfraNet
import SoulfraPeer
import SoulfraPeerLink
import SoulfraWire

/// Runtime workers on their own threads (never the loop threads): each attaches to every broker loop as a
/// peer of kind `runtime` (`PeerGroup`), drives its links with poll(2) and its `RuntimeWorker` between polls,
/// and re-dials a lost link with backoff. `soulfra serve` runs some in process; `soulfra runtime` runs them
/// as a process of their own, for scaling AI work out.
public final class RuntimeThreads: Sendable {
    public struct Options: Sendable {
        public var broker: PeerAddress
        public var token: String
        public var workers: Int
        public var profile: RuntimeProfile
        public var maxFrameBytes: UInt32 = 64 << 10
        /// The `openai` backend's endpoint (nil: builtin only).
        public var openai: OpenAISettings?

        public init(broker: PeerAddress, token: String, workers: Int, profile: RuntimeProfile) {
            self.broker = broker
            self.token = token
            self.workers = workers
            self.profile = profile
        }
    }

    private let stopping = Atomic<Bool>(false)
    private let running = Atomic<Int>(0)
    /// Replies, tokens and cancellations so far, summed over workers (published every turn or so).
    private let totals = Mutex<[RuntimeWorker.Counters]>([])

    public init() {}

    /// Starts `options.workers` threads; each retries attaching until it succeeds or `stop()`.
    public func start(_ options: Options, log: @escaping @Sendable (String) -> Void) {
        totals.withLock { $0 = Array(repeating: RuntimeWorker.Counters(), count: options.workers) }
        for i in 0..<options.workers {
            running.add(1, ordering: .relaxed)
            let t = Thread { [self] in
                run(index: i, options, log: log)
                running.subtract(1, ordering: .relaxed)
            }
            t.name = "soulfra-runtime-\(i)"
            t.start()
        }
    }

    /// Asks every worker to stop (their links close; replies in progress are cut).
    public func stop() { stopping.store(true, ordering: .relaxed) }

    /// Waits (bounded) for the workers to end.
    public func wait(milliseconds: Int = 5_000) {
        for _ in 0..<(milliseconds / 10) where running.load(ordering: .relaxed) > 0 { usleep(10_000) }
    }

    public var counters: RuntimeWorker.Counters {
        totals.withLock { all in
            all.reduce(into: RuntimeWorker.Counters()) { t, c in
                t.requests += c.requests
                t.replies += c.replies
                t.tokens += c.tokens
                t.cancelled += c.cancelled
                t.refused += c.refused
                t.errors += c.errors
                t.upstreamErrors += c.upstreamErrors
                t.queuedPeak = max(t.queuedPeak, c.queuedPeak)
            }
        }
    }

    private func run(index: Int, _ o: Options, log: @escaping @Sendable (String) -> Void) {
        let worker = RuntimeWorker(profile: o.profile, openai: o.openai)
        let identity = PeerIdentity(kind: .runtime, instance: "runtime-\(index)", token: o.token, maxFrameBytes: o.maxFrameBytes)
        var group: PeerGroup?
        var delay: UInt32 = 50_000
        while group == nil && !stopping.load(ordering: .relaxed) {
            do {
                group = try PeerGroup.connect(address: o.broker, identity: identity) { worker.add($0.link) }
            } catch {
                if delay == 50_000 { log("runtime \(index): cannot attach to \(o.broker): \(error); retrying") }
                usleep(delay)
                delay = min(delay * 2, 2_000_000)
            }
        }
        guard let group else { return }
        let reactor = PeerReactor()
        for c in group.links { reactor.add(c, reconnect: Backoff()) }
        if index == 0 { log("runtime: \(o.workers) worker(s), profile \(o.profile.name), attached to \(group.links.count) broker loop(s)") }
        var lastPublish: UInt64 = 0
        while !stopping.load(ordering: .relaxed) {
            reactor.poll(timeoutMilliseconds: worker.activeCount > 0 ? 1 : 20)
            let now = monotonicNanoseconds()
            worker.drive(now: now)
            for c in group.links where !c.link.output.isEmpty && c.fd >= 0 { c.flush() }
            if now &- lastPublish > 50_000_000 {
                lastPublish = now
                let c = worker.counters
                totals.withLock { $0[index] = c }
            }
        }
        totals.withLock { $0[index] = worker.counters }
        group.close()
    }
}
