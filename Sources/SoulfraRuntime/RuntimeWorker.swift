import SoulfraPeerLink
import SoulfraWire

/// How much one worker runs at once and holds waiting.
public struct RuntimeProfile: Sendable, Equatable {
    public var name: String
    /// Replies generated at once.
    public var concurrency: Int
    /// Requests held waiting; past it a request is refused (`stream_limit`, retryable) rather than queued.
    public var queueLimit: Int

    public static let balanced = RuntimeProfile(name: "balanced", concurrency: 8, queueLimit: 64)
    public static let enterprise = RuntimeProfile(name: "enterprise", concurrency: 32, queueLimit: 256)

    public static func named(_ n: String) -> RuntimeProfile? { [balanced, enterprise].first { $0.name == n } }

    public init(name: String, concurrency: Int, queueLimit: Int) {
        self.name = name
        self.concurrency = concurrency
        self.queueLimit = queueLimit
    }
}

/// A runtime worker as a broker peer: it accepts runtime streams, reads one agent request from each, generates
/// the reply with the request's backend and streams it token by token as the stream's credit allows, ending
/// with usage. Sans-IO: the owner pumps its links and calls `drive(now:)`.
///
/// **Bounded.** At most `profile.concurrency` replies are generated at once; requests past that wait, enterprise
/// ones first, up to `profile.queueLimit`; past that they are refused. A waiting request's bytes are not
/// credited back, so its opener cannot send more on it: the runtime withholds credit instead of buffering.
/// **Cancellation.** A stream the opener closes stops its generation at once (`counters.cancelled`).
public final class RuntimeWorker: PeerLinkDelegate {
    final class Job {
        let link: PeerLink
        let stream: UInt32
        var request: AgentRequest?
        var tokens: [String] = []
        var next = 0
        var startedAt: UInt64 = 0
        var firstTokenAt: UInt64 = 0
        var dueAt: UInt64 = 0
        var owedBytes: UInt32 = 0
        var owedFrames: UInt32 = 0
        /// Messages that did not fit the window yet (a token, or the final message), oldest first.
        var pending: [[UInt8]] = []
        var endAfterPending = false
        /// The `openai` backend's reply in progress.
        var call: OpenAIBackend.Call?
        init(link: PeerLink, stream: UInt32) {
            self.link = link
            self.stream = stream
        }
    }

    public struct Counters: Equatable, Sendable {
        public var requests: UInt64 = 0
        public var replies: UInt64 = 0
        public var tokens: UInt64 = 0
        public var cancelled: UInt64 = 0
        public var refused: UInt64 = 0
        public var errors: UInt64 = 0
        public var queuedPeak = 0
        public var upstreamErrors: UInt64 = 0
        public init() {}
    }

    public let profile: RuntimeProfile
    /// The `openai` backend, when configured (requests for it are refused `unknown_backend` otherwise).
    let openai: OpenAIBackend?
    public private(set) var counters = Counters()
    private var jobs: [ObjectIdentifier: [UInt32: Job]] = [:]
    private var assemblers: [ObjectIdentifier: MessageAssembler] = [:]
    private var active: [Job] = []
    private var waiting: [Job] = []
    private var now: UInt64 = 0

    public init(profile: RuntimeProfile = .balanced, openai: OpenAISettings? = nil) {
        self.profile = profile
        self.openai = openai.flatMap(OpenAIBackend.init(settings:))
    }

    /// Serves `link` (its credit is managed here).
    public func add(_ link: PeerLink) {
        link.autoCredit = false
        link.delegate = self
    }

    public var activeCount: Int { active.count }
    public var waitingCount: Int { waiting.count }

    /// Time passed (monotonic ns): paced tokens that are due go out, finished replies end.
    public func drive(now: UInt64) {
        self.now = now
        openai?.poll(now: now)
        // Sending can end a stream and call back into this worker (which edits `active`): walk a copy.
        for job in active where active.contains(where: { $0 === job }) {
            if emit(job) { finish(job) }
        }
    }

    /// A reply is complete: it leaves the active set (if a callback has not taken it out already).
    private func finish(_ job: Job) {
        active.removeAll { $0 === job }
        counters.replies &+= 1
        forget(job)
        admit()
    }

    // MARK: - PeerLinkDelegate

    public func linkAccepted(_ link: PeerLink, stream: UInt32, open: Open) {
        jobs[ObjectIdentifier(link), default: [:]][stream] = Job(link: link, stream: stream)
        if assemblers[ObjectIdentifier(link)] == nil { assemblers[ObjectIdentifier(link)] = MessageAssembler(maxMessageBytes: 1 << 20) }
    }

    public func linkData(_ link: PeerLink, stream: UInt32, payload: UnsafeRawBufferPointer, flags: FrameFlags) {
        guard let job = jobs[ObjectIdentifier(link)]?[stream] else { return }
        job.owedBytes &+= UInt32(payload.count)
        job.owedFrames &+= 1
        guard job.request == nil else {
            grant(job)  // more after the request: read and ignored
            return
        }
        let fits = assemblers[ObjectIdentifier(link)]!.feed(stream: stream, payload: payload, flags: flags) { message, _ in
            self.received(job, message)
        }
        if !fits { fail(job, .badRequest("the request is over 1 MiB")) }
    }

    public func linkWritable(_ link: PeerLink, stream: UInt32) {
        guard let job = jobs[ObjectIdentifier(link)]?[stream], active.contains(where: { $0 === job }) else { return }
        if emit(job) { finish(job) }
    }

    public func linkStreamClosed(_ link: PeerLink, stream: UInt32, code: ErrorCode, reason: String) {
        guard let job = jobs[ObjectIdentifier(link)]?[stream] else { return }
        if job.request != nil && (job.next < job.tokens.count || job.call.map { !$0.finished } ?? false)
            || waiting.contains(where: { $0 === job }) { counters.cancelled &+= 1 }
        if let call = job.call { openai?.cancel(call) }
        active.removeAll { $0 === job }
        waiting.removeAll { $0 === job }
        forget(job)
        admit()
    }

    public func linkClosed(_ link: PeerLink, code: ErrorCode, reason: String) {
        for job in (jobs[ObjectIdentifier(link)] ?? [:]).values {
            if job.next < job.tokens.count || job.call.map({ !$0.finished }) ?? false { counters.cancelled &+= 1 }
            if let call = job.call { openai?.cancel(call) }
            active.removeAll { $0 === job }
            waiting.removeAll { $0 === job }
        }
        jobs[ObjectIdentifier(link)] = nil
        assemblers[ObjectIdentifier(link)] = nil
        admit()
    }

    // MARK: - Requests

    private func received(_ job: Job, _ message: UnsafeRawBufferPointer) {
        counters.requests &+= 1
        switch AgentRequest.parse(message) {
        case .failure(let e):
            fail(job, e)
        case .success(let r):
            guard r.backend == "builtin" || (r.backend == "openai" && openai != nil) else { return fail(job, .unknownBackend(r.backend)) }
            job.request = r
            guard active.count < profile.concurrency else {
                guard waiting.count < profile.queueLimit else {
                    counters.refused &+= 1
                    job.link.closeStream(job.stream, code: .streamLimit, reason: "the runtime is full (\(profile.name): \(profile.concurrency) at once, \(profile.queueLimit) waiting)")
                    forget(job)
                    return
                }
                // Waiting: its credit is held until it starts.
                if r.priority == .enterprise, let i = waiting.firstIndex(where: { $0.request?.priority != .enterprise }) {
                    waiting.insert(job, at: i)
                } else {
                    waiting.append(job)
                }
                counters.queuedPeak = max(counters.queuedPeak, waiting.count)
                return
            }
            start(job)
        }
    }

    private func start(_ job: Job) {
        guard let r = job.request else { return }
        grant(job)
        if r.backend == "openai", let openai {
            job.call = openai.start(r, now: now)
        } else {
            job.tokens = Array(PersonaEngine.reply(r.persona, input: r.input, history: r.history).prefix(r.maxTokens))
        }
        job.startedAt = now
        job.dueAt = now
        active.append(job)
        if emit(job) {
            active.removeAll { $0 === job }
            counters.replies &+= 1
            forget(job)
        }  // (`admit` is the caller's: it is looping)
    }

    /// Starts waiting requests while there is room, enterprise first.
    private func admit() {
        while active.count < profile.concurrency, !waiting.isEmpty {
            start(waiting.removeFirst())
        }
    }

    private func grant(_ job: Job) {
        guard job.owedFrames > 0 else { return }
        job.link.grant(stream: job.stream, bytes: job.owedBytes, frames: job.owedFrames)
        job.owedBytes = 0
        job.owedFrames = 0
    }

    private func fail(_ job: Job, _ e: RuntimeError) {
        counters.errors &+= 1
        grant(job)
        job.pending = [Array(AgentReply.error(e).json.utf8)]
        job.endAfterPending = true
        _ = flushPending(job)
        forget(job)
    }

    /// Sends what is due and fits; true once the reply is complete (done sent with END).
    private func emit(_ job: Job) -> Bool {
        guard flushPending(job) else { return false }
        if job.endAfterPending { return true }
        guard let r = job.request else { return false }
        if let call = job.call, job.next == job.tokens.count, !call.tokens.isEmpty {
            // The backend's tokens come over once those before them went out (it pauses while they wait).
            job.tokens += call.tokens
            call.tokens.removeAll(keepingCapacity: true)
            openai?.taken(call)
        }
        while job.next < job.tokens.count {
            if r.pacingMilliseconds > 0 && now < job.dueAt { return false }
            let message = Array(AgentReply.token(job.tokens[job.next], index: job.next).json.utf8)
            if job.next == 0 { job.firstTokenAt = now }
            job.next += 1
            counters.tokens &+= 1
            job.dueAt = now &+ UInt64(r.pacingMilliseconds) * 1_000_000
            job.pending.append(message)
            guard flushPending(job) else { return false }
            if job.next == job.tokens.count, let call = job.call, !call.tokens.isEmpty {
                job.tokens += call.tokens
                call.tokens.removeAll(keepingCapacity: true)
                openai?.taken(call)
            }
        }
        if let call = job.call {
            guard call.finished else { return false }
            if let f = call.failure {
                counters.upstreamErrors &+= 1
                job.pending.append(Array(AgentReply.error(f).json.utf8))
                job.endAfterPending = true
                return flushPending(job)
            }
        }
        let usage = AgentReply.Usage(tokensIn: job.call?.usage?.tokensIn ?? r.input.split(separator: " ").count, tokensOut: job.tokens.count,
                                     timeToFirstTokenMicroseconds: (job.firstTokenAt &- job.startedAt) / 1_000,
                                     totalMicroseconds: (now &- job.startedAt) / 1_000)
        job.pending.append(Array(AgentReply.done(usage).json.utf8))
        job.endAfterPending = true
        return flushPending(job)
    }

    /// Sends pending messages while the window allows; true when none is left.
    private func flushPending(_ job: Job) -> Bool {
        while let m = job.pending.first {
            let last = job.pending.count == 1 && job.endAfterPending
            guard m.withUnsafeBytes({ job.link.send(stream: job.stream, payload: $0, end: last) }) else { return false }
            job.pending.removeFirst()
        }
        return true
    }

    private func forget(_ job: Job) {
        jobs[ObjectIdentifier(job.link)]?[job.stream] = nil
        assemblers[ObjectIdentifier(job.link)]?.drop(stream: job.stream)
    }
}
