import Testing
@testable import SoulfraControl

/// A driver's view for the reconciler, kept by the test: what runs, what exited.
struct Fleet {
    var instances: [String: ObservedInstance] = [:]

    mutating func apply(_ actions: [Reconciler.Action], now: Int64) {
        for a in actions {
            switch a {
            case .start(let w, let id): instances[w + "/" + id] = ObservedInstance(world: w, id: id, handle: "\(now)", state: .running, startedAt: now)
            case .stop(let w, let id): instances[w + "/" + id]?.state = .exited(0)
            case .forget(let w, let id): instances[w + "/" + id] = nil
            }
        }
    }

    mutating func crash(_ world: String, _ id: String) { instances[world + "/" + id]?.state = .exited(137) }
    var observed: [ObservedInstance] { instances.values.sorted { ($0.world, $0.id) < ($1.world, $1.id) } }
    var running: [String] { observed.filter { $0.state == .running }.map(\.id) }
}

@Suite("The reconciler (sans-IO, manual clock)")
struct ReconcilerTests {
    @Test("scale up starts the missing slots, scale down stops the highest first; a deleted world's instances stop and are forgotten")
    func scaling() {
        let r = Reconciler()
        var fleet = Fleet()
        var actions = r.plan(desired: ["playground": 2], observed: fleet.observed, now: 0)
        #expect(actions == [.start(world: "playground", id: "playground-1"), .start(world: "playground", id: "playground-2")])
        fleet.apply(actions, now: 0)
        #expect(r.plan(desired: ["playground": 2], observed: fleet.observed, now: 1).isEmpty, "steady: nothing to do")
        actions = r.plan(desired: ["playground": 5], observed: fleet.observed, now: 2)
        #expect(actions == (3...5).map { .start(world: "playground", id: "playground-\($0)") })
        fleet.apply(actions, now: 2)
        actions = r.plan(desired: ["playground": 1], observed: fleet.observed, now: 3)
        #expect(Set(actions) == Set((2...5).map { Reconciler.Action.stop(world: "playground", id: "playground-\($0)") }))
        fleet.apply(actions, now: 3)
        actions = r.plan(desired: ["playground": 1], observed: fleet.observed, now: 4)
        #expect(Set(actions) == Set((2...5).map { Reconciler.Action.forget(world: "playground", id: "playground-\($0)") }), "stopped ones are forgotten, not restarted")
        fleet.apply(actions, now: 4)
        #expect(fleet.running == ["playground-1"])
        actions = r.plan(desired: [:], observed: fleet.observed, now: 5)
        #expect(actions == [.stop(world: "playground", id: "playground-1")])
        fleet.apply(actions, now: 5)
        fleet.apply(r.plan(desired: [:], observed: fleet.observed, now: 6), now: 6)
        #expect(fleet.observed.isEmpty)
    }

    @Test("a start the driver refused is tried again after the same doubling backoff, not on every pass")
    func failedStarts() {
        var policy = Reconciler.Policy()
        policy.baseBackoffMilliseconds = 100
        let r = Reconciler(policy: policy)
        #expect(r.plan(desired: ["w": 1], observed: [], now: 0) == [.start(world: "w", id: "w-1")])
        r.startFailed(world: "w", id: "w-1", now: 0)
        #expect(r.plan(desired: ["w": 1], observed: [], now: 50).isEmpty)
        #expect(r.plan(desired: ["w": 1], observed: [], now: 100) == [.start(world: "w", id: "w-1")])
        r.startFailed(world: "w", id: "w-1", now: 100)
        #expect(r.plan(desired: ["w": 1], observed: [], now: 250).isEmpty, "doubled: 200 ms")
        #expect(r.plan(desired: ["w": 1], observed: [], now: 300) == [.start(world: "w", id: "w-1")])
    }

    @Test("instances found running after a daemon restart are adopted: nothing is started twice")
    func adoption() {
        var fleet = Fleet()
        fleet.apply([.start(world: "arena", id: "arena-1"), .start(world: "arena", id: "arena-2")], now: 0)
        let fresh = Reconciler()  // the daemon's new reconciler knows nothing but what the driver sees
        #expect(fresh.plan(desired: ["arena": 2], observed: fleet.observed, now: 10).isEmpty)
        #expect(fresh.plan(desired: ["arena": 3], observed: fleet.observed, now: 11) == [.start(world: "arena", id: "arena-3")])
    }

    @Test("an instance that exits is replaced after a backoff that doubles; too many exits in a window leave it down and reported, until the window passed")
    func backoffAndCrashLoops() {
        var policy = Reconciler.Policy()
        policy.baseBackoffMilliseconds = 100
        policy.maxBackoffMilliseconds = 1_000
        policy.crashLoopLimit = 4
        policy.crashLoopWindowMilliseconds = 10_000
        let r = Reconciler(policy: policy)
        var fleet = Fleet()
        fleet.apply(r.plan(desired: ["w": 1], observed: fleet.observed, now: 0), now: 0)
        var now: Int64 = 1_000
        var restartedAfter: [Int64] = []
        for _ in 0..<3 {
            fleet.crash("w", "w-1")
            let crashedAt = now
            #expect(r.plan(desired: ["w": 1], observed: fleet.observed, now: now).isEmpty, "no restart before the backoff")
            while fleet.running.isEmpty {
                now += 50
                fleet.apply(r.plan(desired: ["w": 1], observed: fleet.observed, now: now), now: now)
            }
            restartedAfter.append(now - crashedAt)
            now += 200
        }
        #expect(restartedAfter == [100, 200, 400], "backoff doubles: \(restartedAfter)")
        #expect(r.exitsSeen == 3 && r.restarts == 3)
        // The fourth exit inside the window: a crash loop. It stays down until the first exit is a window old.
        fleet.crash("w", "w-1")
        #expect(r.plan(desired: ["w": 1], observed: fleet.observed, now: now).isEmpty)
        #expect(r.crashLooping["w/w-1"] == Int64(11_000), "the first exit (at 1,000) plus the window")
        #expect(r.plan(desired: ["w": 1], observed: fleet.observed, now: 10_999).isEmpty)
        let back = r.plan(desired: ["w": 1], observed: fleet.observed, now: 11_000)
        #expect(back == [.forget(world: "w", id: "w-1"), .start(world: "w", id: "w-1")] && r.crashLooping.isEmpty)
        fleet.apply(back, now: 11_000)
        // Healthy for a whole window: the next exit starts the backoff over.
        #expect(r.plan(desired: ["w": 1], observed: fleet.observed, now: 30_000).isEmpty)
        fleet.crash("w", "w-1")
        _ = r.plan(desired: ["w": 1], observed: fleet.observed, now: 30_001)
        #expect(r.plan(desired: ["w": 1], observed: fleet.observed, now: 30_101).contains(.start(world: "w", id: "w-1")))
    }
}
