import Testing
@testable import SoulfraLoop

/// A model of one slot's receive side against a model of the kernel, explored exhaustively: every order of
/// pause, resume, data, the kernel ending the multishot request, completions being reaped and the end of a
/// batch (when queued requests are prepared and the submission queue reaches the kernel), up to a depth.
/// After any such sequence, once everything in flight has completed, a slot the owner wants read must have
/// exactly one recv armed in the kernel, and a paused slot none.
@Suite("Loop: a slot's recv under pause and resume")
struct RecvStateTests {
    /// What the loop prepares for the kernel.
    enum SQE: Hashable { case arm, cancel }
    /// What the kernel completes: a recv completion with MORE, a final one (from a cancel or not), a cancel's own.
    enum CQE: Hashable { case more, final(cancelled: Bool), cancelDone }

    /// The loop's side of the slot: what it does on each event.
    protocol Logic: Hashable {
        init()
        var wantsData: Bool { get }
        /// Returns the SQEs prepared at once (a cancel).
        mutating func pause() -> [SQE]
        /// True when the slot goes on the arm list.
        mutating func resume() -> Bool
        /// At the end of the batch, for a slot on the arm list: prepare the recv?
        mutating func submitting() -> Bool
        /// A reaped recv completion; true when the slot goes on the arm list. Nil: the logic was not expecting it.
        mutating func completed(_ c: CQE) -> Bool?
    }

    /// The shipped state machine.
    struct Current: Logic {
        var s = RecvState()
        init() { _ = s.resume() }
        var wantsData: Bool { !s.paused }
        mutating func pause() -> [SQE] { s.pause() == .cancel ? [.cancel] : [] }
        mutating func resume() -> Bool { s.resume() == .queue }
        mutating func submitting() -> Bool { s.submitting() }
        mutating func completed(_ c: CQE) -> Bool? {
            switch c {
            case .more: return s.inFlight ? (s.completed(more: true, again: true) == .queue) : nil
            case .final: return s.inFlight ? (s.completed(more: false, again: true) == .queue) : nil
            case .cancelDone: return false
            }
        }
    }

    /// The loop before this state machine: one "armed" flag and one "paused" flag.
    struct Flags: Logic {
        var armed = false
        var paused = false
        init() {}
        var wantsData: Bool { !paused }
        mutating func pause() -> [SQE] {
            guard !paused else { return [] }
            paused = true
            return armed ? [.cancel] : []
        }
        mutating func resume() -> Bool {
            guard paused else { return false }
            paused = false
            return !armed
        }
        mutating func submitting() -> Bool {
            guard !armed && !paused else { return false }
            armed = true
            return true
        }
        mutating func completed(_ c: CQE) -> Bool? {
            switch c {
            case .more: return false
            case .final(let cancelled):
                armed = false
                return cancelled ? false : true  // ENOBUFS re-armed unconditionally; ECANCELED never
            case .cancelDone: return false
            }
        }
    }

    struct World<L: Logic>: Hashable {
        var logic = L()
        var onArmList = true  // a new slot starts reading at the end of its first batch
        var sq: [SQE] = []
        var kernelArmed = false
        var cq: [CQE] = []
        var violation: String?

        enum Event: CaseIterable { case pause, resume, data, kernelEnds, reap, batchEnd }

        mutating func apply(_ e: Event) {
            switch e {
            case .pause: sq += logic.pause()
            case .resume: if logic.resume() { onArmList = true }
            case .data: if kernelArmed && cq.count < 3 { cq.append(.more) }
            case .kernelEnds:
                if kernelArmed {
                    kernelArmed = false
                    cq.append(.final(cancelled: false))
                }
            case .reap:
                guard !cq.isEmpty else { return }
                let c = cq.removeFirst()
                guard let again = logic.completed(c) else {
                    violation = "a completion the logic did not expect: \(c)"
                    return
                }
                if again { onArmList = true }
            case .batchEnd:
                if onArmList {
                    onArmList = false
                    if logic.submitting() { sq.append(.arm) }
                }
                for op in sq {
                    switch op {
                    case .arm:
                        if kernelArmed { violation = "armed twice" }
                        kernelArmed = true
                    case .cancel:
                        if kernelArmed {
                            kernelArmed = false
                            cq.append(.final(cancelled: true))
                        }
                        cq.append(.cancelDone)
                    }
                }
                sq.removeAll()
            }
        }

        /// Lets everything in flight complete, then checks that what the kernel does matches what the owner wants.
        func settled() -> String? {
            var w = self
            for _ in 0..<8 {
                w.apply(.batchEnd)
                while !w.cq.isEmpty { w.apply(.reap) }
                if let v = w.violation { return v }
            }
            if w.logic.wantsData && !w.kernelArmed { return "the owner wants data but no recv is armed" }
            if !w.logic.wantsData && w.kernelArmed { return "paused, yet a recv is still armed" }
            return nil
        }
    }

    /// Explores every event sequence up to `depth` (states already seen are not explored again); returns the
    /// first sequence that breaks an invariant.
    static func check<L: Logic>(_: L.Type, depth: Int) -> [World<L>.Event]? {
        var seen = Set<World<L>>()
        func explore(_ w: World<L>, _ path: [World<L>.Event]) -> [World<L>.Event]? {
            if w.violation != nil || w.settled() != nil { return path }
            guard path.count < depth, seen.insert(w).inserted else { return nil }
            for e in World<L>.Event.allCases {
                var next = w
                next.apply(e)
                if let bad = explore(next, path + [e]) { return bad }
            }
            return nil
        }
        return explore(World<L>(), [])
    }

    @Test("every interleaving of pause, resume, data, cancel completions and batch ends leaves the recv as the owner wants it")
    func exhaustive() {
        let bad = Self.check(Current.self, depth: 14)
        #expect(bad == nil, "counterexample: \(bad.map { "\($0)" } ?? "")")
    }

    @Test("the same search finds the lost re-arm in the loop's old flags (a resume while the cancel was in flight)")
    func oldFlagsLoseTheRecv() {
        let bad = Self.check(Flags.self, depth: 14)
        #expect(bad != nil)
    }

    @Test("the race the old flags lost, step by step: pause, resume before the cancel completes, then its completion re-arms")
    func resumeBeforeCancelCompletes() {
        var s = RecvState()
        var steps: [String] = []
        steps.append("\(s.resume())")
        steps.append("\(s.submitting())")
        steps.append("\(s.pause())")
        steps.append("\(s.resume())")  // the cancel is in flight: its completion decides
        steps.append("\(s.completed(more: false, again: true))")
        steps.append("\(s.submitting())")
        #expect(steps == ["queue", "true", "cancel", "none", "queue", "true"])
        #expect(s.phase == .armed)
    }

    @Test("a pause before the queued recv was submitted needs no cancel; EOF ends reading for good")
    func queuedAndFinished() {
        var s = RecvState()
        var steps: [String] = []
        steps.append("\(s.resume())")
        steps.append("\(s.pause())")
        steps.append("\(s.submitting())")
        steps.append("\(s.resume())")
        steps.append("\(s.submitting())")
        steps.append("\(s.completed(more: false, again: false))")
        steps.append("\(s.resume())")
        #expect(steps == ["queue", "none", "false", "queue", "true", "none", "none"])
        #expect(!s.inFlight)
    }
}
