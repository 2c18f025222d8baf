/// Drives what runs toward what is wanted, one step at a time, without doing anything itself: given each
/// world's wanted instance count and what the driver observes, it says which instances to start, stop or
/// forget. The owner applies the actions through its driver and calls again (every second, and after each
/// change). Sans-IO: time comes in as `now`, so backoff and crash loops are tested on a manual clock.
///
/// - A world's instances are numbered slots, `<world>-1` … `<world>-N`: scaling up starts the missing ones,
///   scaling down stops the highest first (the driver drains: SIGTERM, then SIGKILL after the grace period).
/// - An instance found running is adopted as it is — also after a daemon restart, when the driver finds it by
///   its pid file or label — so nothing is started twice.
/// - An instance that exited is restarted after a backoff that doubles with each exit (from `baseBackoff` to
///   `maxBackoff`); after `crashLoopLimit` exits within `crashLoopWindow` it is left down and reported
///   (`crashLooping`) until the window has passed.
public final class Reconciler {
    public enum Action: Hashable, Sendable {
        case start(world: String, id: String)
        case stop(world: String, id: String)
        case forget(world: String, id: String)
    }

    public struct Policy: Sendable, Equatable {
        public var baseBackoffMilliseconds: Int64 = 500
        public var maxBackoffMilliseconds: Int64 = 30_000
        public var crashLoopLimit = 5
        public var crashLoopWindowMilliseconds: Int64 = 60_000
        public init() {}
    }

    struct Slot {
        var exits: [Int64] = []
        var backoff: Int64 = 0
        var retryAt: Int64 = 0
        /// The exit already counted (the driver keeps reporting it until it is forgotten).
        var counted = false
    }

    public let policy: Policy
    private var slots: [String: Slot] = [:]
    /// Slots left down for crashing too often, with when they will be tried again.
    public private(set) var crashLooping: [String: Int64] = [:]
    /// Exits counted since `takeExits` was last called (for alerts).
    private var newExits: [(world: String, id: String, crashLooping: Bool)] = []

    /// The exits counted since the last call, and whether each put its slot in a crash loop.
    public func takeExits() -> [(world: String, id: String, crashLooping: Bool)] {
        defer { newExits.removeAll() }
        return newExits
    }

    /// Exits seen, restarts asked for.
    public private(set) var exitsSeen = 0
    public private(set) var restarts = 0

    public init(policy: Policy = Policy()) { self.policy = policy }

    public static func slotID(world: String, _ n: Int) -> String { "\(world)-\(n)" }

    /// The driver could not start the slot at all: it is tried again after the same doubling backoff as an
    /// exit, and counts towards a crash loop.
    public func startFailed(world: String, id: String, now: Int64) {
        let key = world + "/" + id
        var s = slots[key, default: Slot()]
        recordExit(&s, key: key, now: now)
        slots[key] = s
    }

    /// An exit (or a failed start) of a slot: the next try waits a doubled backoff, or out the crash-loop window.
    private func recordExit(_ s: inout Slot, key: String, now: Int64) {
        exitsSeen += 1
        s.exits = s.exits.filter { now - $0 < policy.crashLoopWindowMilliseconds } + [now]
        s.backoff = s.backoff == 0 ? policy.baseBackoffMilliseconds : min(policy.maxBackoffMilliseconds, s.backoff * 2)
        s.retryAt = now + s.backoff
        if s.exits.count >= policy.crashLoopLimit {
            s.retryAt = s.exits[s.exits.count - policy.crashLoopLimit] + policy.crashLoopWindowMilliseconds
            crashLooping[key] = s.retryAt
        }
    }

    static func slotNumber(world: String, id: String) -> Int? {
        guard id.hasPrefix(world + "-") else { return nil }
        return Int(id.dropFirst(world.count + 1))
    }

    /// The actions that move `observed` toward `desired` (instances wanted per world) at `now`.
    public func plan(desired: [String: Int], observed: [ObservedInstance], now: Int64) -> [Action] {
        var actions: [Action] = []
        var seen = Set<String>()
        for o in observed {
            let key = o.world + "/" + o.id
            seen.insert(key)
            let wanted = desired[o.world].map { n in Self.slotNumber(world: o.world, id: o.id).map { $0 >= 1 && $0 <= n } ?? false } ?? false
            switch o.state {
            case .running:
                guard wanted else {
                    actions.append(.stop(world: o.world, id: o.id))
                    continue
                }
                var s = slots[key, default: Slot()]
                s.counted = false
                // Up for a whole window since its last exit: it is healthy again, and its backoff starts over.
                if let last = s.exits.last, now - last >= policy.crashLoopWindowMilliseconds {
                    s.exits = []
                    s.backoff = 0
                }
                slots[key] = s
            case .exited:
                guard wanted else {
                    actions.append(.forget(world: o.world, id: o.id))
                    slots[key] = nil
                    crashLooping[key] = nil
                    continue
                }
                var s = slots[key, default: Slot()]
                if !s.counted {
                    s.counted = true
                    recordExit(&s, key: key, now: now)
                    newExits.append((o.world, o.id, crashLooping[key] != nil))
                }
                slots[key] = s
                if now >= s.retryAt {
                    crashLooping[key] = nil
                    restarts += 1
                    actions.append(.forget(world: o.world, id: o.id))
                    actions.append(.start(world: o.world, id: o.id))
                    slots[key]!.counted = false
                }
            }
        }
        for (world, n) in desired.sorted(by: { $0.key < $1.key }) where n > 0 {
            for k in 1...n {
                let id = Self.slotID(world: world, k)
                let key = world + "/" + id
                // A slot whose start failed waits out its backoff like one that exited.
                if !seen.contains(key) && now >= (slots[key]?.retryAt ?? 0) { actions.append(.start(world: world, id: id)) }
            }
        }
        // A slot no longer observed and no longer wanted is forgotten here too.
        for key in slots.keys where !seen.contains(key) {
            let parts = key.split(separator: "/", maxSplits: 1)
            let world = String(parts[0]), id = String(parts[1])
            let wanted = desired[world].map { n in Self.slotNumber(world: world, id: id).map { $0 <= n } ?? false } ?? false
            if !wanted {
                slots[key] = nil
                crashLooping[key] = nil
            }
        }
        return actions
    }
}
