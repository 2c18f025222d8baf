/// The receive side of one connection slot: a multishot recv request that the owner pauses and resumes, kept
/// as a state machine apart from the ring so that every interleaving of pause, resume, completions and
/// cancellation can be checked without sockets (`Tests/SoulfraLoopTests`).
///
/// The request is in one of four phases. `queued`: it will be submitted at the end of the batch (arming is
/// deferred so that provided buffers recycled in the batch are published first, and so that a pause in the
/// same batch needs no cancel). `armed`: submitted; completions with `IORING_CQE_F_MORE` keep it armed.
/// `cancelling`: a pause asked the kernel to cancel it; data may still arrive until its final completion.
/// A final completion (no `MORE`: cancelled, out of buffers, EOF, error) always leads back to `idle`, and —
/// this is the point — re-arms at once if the owner wants to read by then, whatever happened in between.
/// (The loop this replaces kept one "armed" flag: a resume while the cancel was in flight saw it set and did
/// nothing, and the cancel's completion then cleared it without re-arming. The link stopped being read.)
struct RecvState: Hashable {
    enum Phase: Hashable { case idle, queued, armed, cancelling }
    enum Action: Equatable {
        case none
        /// Put the slot on the arm list: it is submitted at the end of the batch (`submitting`).
        case queue
        /// Submit a cancel for the armed request.
        case cancel
    }

    private(set) var phase: Phase = .idle
    /// The owner does not want data (backpressure, hand-off, close).
    private(set) var paused = false
    /// No more reads ever (EOF, error, close): a resume does not re-arm.
    private(set) var finished = false

    /// Whether a request may still complete; a slot is released or handed off only when this is false.
    var inFlight: Bool { phase == .armed || phase == .cancelling }

    /// The owner wants no data.
    mutating func pause() -> Action {
        paused = true
        switch phase {
        case .armed:
            phase = .cancelling
            return .cancel
        case .queued:
            phase = .idle  // never submitted: nothing to cancel
            return .none
        case .idle, .cancelling:
            return .none
        }
    }

    /// The owner wants data again (also the first call for a new connection).
    mutating func resume() -> Action {
        paused = false
        guard phase == .idle, !finished else { return .none }  // armed: still reading; cancelling: its end re-arms
        phase = .queued
        return .queue
    }

    /// Reading ends for good (the connection is closing): a queued request is not submitted; an armed one ends
    /// with the socket's shutdown.
    mutating func finish() {
        finished = true
        paused = true
        if phase == .queued { phase = .idle }
    }

    /// The end of the batch reached a queued slot: true if its SQE should be prepared now.
    mutating func submitting() -> Bool {
        guard phase == .queued else { return false }
        phase = .armed
        return true
    }

    /// A completion of the recv request. `more`: `IORING_CQE_F_MORE` (the request stays armed). `again`:
    /// whether reading may continue after a final completion (false after EOF or an error).
    mutating func completed(more: Bool, again: Bool) -> Action {
        guard !more else { return .none }
        precondition(phase == .armed || phase == .cancelling, "a final recv completion for a request that was not in flight")
        phase = .idle
        if !again { finished = true }
        guard !paused, !finished else { return .none }
        phase = .queued
        return .queue
    }
}
