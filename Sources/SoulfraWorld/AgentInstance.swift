import Foundation
import SoulfraHTTP
import SoulfraPeerLink
import SoulfraRuntime
import SoulfraVault
import SoulfraWire

/// How a world's events reach the app relative to the vault (design §7).
public enum StreamMode: String, Sendable, CaseIterable {
    /// An event goes to the app only once it, and everything before it, is durable in the vault.
    case full = "3way_full"
    /// Events go to the app at once; the vault stores them behind (what is lost: docs/protocol.md).
    case realtime
}

/// A world instance's 3-way conversation logic, sans-IO (the owner pumps its link): each app stream from the
/// gateway is a conversation in one session. A turn appends the user's message to the vault, asks a runtime
/// worker for the agent's reply, appends every token and the final `done` to the vault, and relays them to the
/// app — in `3way_full` each only after its append is acknowledged, carrying its per-session sequence number
/// (the SSE `id:`). A stream opened with `after=<n>` (the app resuming) first gets the session's events after
/// `n` from the vault. The world's own logic (moderation, trust, rooms) comes with the templates.
///
/// Events the app sees (one JSON object each): `{"seq":n,"event":"token","agent":"cal","text":"Hi ","index":0}`,
/// `{"seq":n,"event":"done","agent":"cal","text":"…","usage":{…}}`, `{"event":"error","code":"…","retryable":…}`.
/// Stored kinds: 1 the user's message, 2 a token, 3 a reply's end, 4 an error.
public final class AgentInstance: PeerLinkDelegate {
    public struct Settings: Sendable {
        public var personas: [AgentPersona]
        public var mode: StreamMode = .full
        public var pacingMilliseconds = 0
        public var historyEvents = 200
        /// The runtime backend the agents answer with: `builtin` or `openai`.
        public var backend = "builtin"
        /// The template's rules: moderation, trust score, tantrums.
        public var rules = WorldRules()
        /// Where the instance's notable events go (its log): new users, trust, moderation.
        public var log: (@Sendable (String) -> Void)?

        public init(personas: [AgentPersona], mode: StreamMode = .full) {
            precondition(!personas.isEmpty, "a world has at least one agent")
            self.personas = personas
            self.mode = mode
        }
    }

    enum Kind: UInt8 { case user = 1, token, done, error, trust, directory }

    /// An event on its way: stored (acknowledged or not) and to be shown to the app.
    struct Event {
        let kind: Kind
        let json: String
        let show: Bool
    }

    final class Conversation {
        let app: UInt32
        let session: String
        let detail: String
        let resumeAfter: UInt64?
        var vault: UInt32 = 0
        var historyRead: UInt32 = 0
        var replayRead: UInt32 = 0
        var history: [Turn]?
        var replayed = false
        var inputs: [(agent: String, text: String)] = []
        var runtime: UInt32 = 0
        var agent = ""
        var reply = ""
        var input = ""
        var tokens = 0
        /// Appended, waiting for ACK (in order); then shown.
        var unacked: [Event] = []
        /// Events to send to the app (sequence, JSON), oldest first, waiting for window.
        var outbox: [(UInt64?, [UInt8])] = []
        var endAfterOutbox = false
        var lastSequence: UInt64 = 0
        var reads: [UInt32: [[UInt8]]] = [:]
        /// The app ended its request side; it only resumes (sent nothing new); END went to it.
        var requestEnded = false
        var resumeOnly = false
        /// The user's trust score as last stored (nil: none yet).
        var trust: Int?
        var appEnded = false
        /// Credit consumed on the app's and the runtime's streams and not yet given back: held while this
        /// conversation has `maxQueuedInputs` messages waiting or `maxHeldEvents` events the app has not taken.
        var appOwed: (bytes: UInt32, frames: UInt32) = (0, 0)
        var runtimeOwed: (bytes: UInt32, frames: UInt32) = (0, 0)
        init(app: UInt32, session: String, detail: String, resumeAfter: UInt64?) {
            self.app = app
            self.session = session
            self.detail = detail
            self.resumeAfter = resumeAfter
        }
        var unary: Bool { detail == "message" || detail == "users" }
        var oneTurn: Bool { detail == "message" || detail == "message.stream" || detail == "users" }
        /// A `/users` request (method, the path after `users/`), answered from the world's directory.
        var resource: (method: String, rest: String)?
        /// How much of a unary reply went out already.
        var unarySent = 0
        /// The directory as the vault has it (users by id, in the order they were made).
        var directory: [(id: String, user: [String: Any])] = []
    }

    /// What one conversation holds at most before it stops granting credit: messages waiting for their turn,
    /// and events waiting for the app to take them (a slow app holds its runtime back; a flooding one is paced).
    public static let maxQueuedInputs = 4
    public static let maxHeldEvents = 64

    public struct Counters: Equatable, Sendable {
        public var conversations: UInt64 = 0
        /// The most inputs and events one conversation held at once (the bounds above, plus one window's worth).
        public var peakInputs = 0
        public var peakHeldEvents = 0
        public var turns: UInt64 = 0
        public var eventsStored: UInt64 = 0
        public var eventsFailed: UInt64 = 0
        public var replayed: UInt64 = 0
        /// Users' messages refused by moderation, agents' tokens masked, tantrums seen.
        public var refused: UInt64 = 0
        public var masked: UInt64 = 0
        public var tantrums: UInt64 = 0
        /// Replies published to the broadcast room.
        public var broadcasts: UInt64 = 0
        public init() {}
    }

    public let settings: Settings
    public private(set) var counters = Counters()
    private var byStream: [UInt32: Conversation] = [:]
    private let assembler = MessageAssembler(maxMessageBytes: 1 << 20)
    private weak var link: PeerLink?

    public init(_ settings: Settings) { self.settings = settings }

    /// Serves `link` (its credit is managed here: a slow app holds its runtime back).
    public func add(_ link: PeerLink) {
        self.link = link
        link.autoCredit = false
        link.delegate = self
    }

    public var openConversations: Int { Set(byStream.values.map { ObjectIdentifier($0) }).count }

    // MARK: - PeerLinkDelegate

    public func linkAccepted(_ link: PeerLink, stream: UInt32, open: Open) {
        self.link = link
        let words = open.detail.split(separator: " ")
        let detail = words.first.map(String.init) ?? "message"
        // A resume (`after=`) is a conversation's; a /users request's words are its method and path.
        let after = detail == "users" ? nil : words.dropFirst().first { $0.hasPrefix("after=") }.flatMap { UInt64($0.dropFirst(6)) }
        let users = detail == "users"
        let c = Conversation(app: stream, session: users ? Self.directorySession : open.session.isEmpty ? "s-\(stream)" : open.session,
                             detail: detail, resumeAfter: after)
        if users { c.resource = (words.count > 1 ? String(words[1]) : "GET", words.count > 2 ? String(words[2]) : "") }
        byStream[stream] = c
        counters.conversations &+= 1
        if seenSessions.insert(c.session).inserted {
            if seenSessions.count > 100_000 { seenSessions = [c.session] }  // a bounded memory of who was here
            settings.log?("INFO: New user connected to \(open.world) (session \(c.session))")
        }
        c.vault = link.open(Open(target: .vault, world: open.world, session: c.session, detail: "append"))
        c.historyRead = link.open(Open(target: .vault, world: open.world, session: c.session,
                                       detail: VaultRequest.tail(limit: users ? VaultRequest.maxLimit : settings.historyEvents).detail))
        byStream[c.vault] = c
        byStream[c.historyRead] = c
        // A read sends nothing: its side ends at once, and the stream is over when the vault's page ends.
        _ = link.send(stream: c.historyRead, payload: UnsafeRawBufferPointer(start: nil, count: 0), end: true)
        if let after {
            c.replayRead = link.open(Open(target: .vault, world: open.world, session: c.session,
                                          detail: VaultRequest.read(after: after, limit: VaultRequest.maxLimit).detail))
            byStream[c.replayRead] = c
            _ = link.send(stream: c.replayRead, payload: UnsafeRawBufferPointer(start: nil, count: 0), end: true)
        } else {
            c.replayed = true
        }
        world = open.world
    }

    private var world = ""
    private var seenSessions = Set<String>()

    public func linkData(_ link: PeerLink, stream: UInt32, payload: UnsafeRawBufferPointer, flags: FrameFlags) {
        guard let c = byStream[stream] else { return }
        if stream == c.app {
            c.appOwed = (c.appOwed.bytes &+ UInt32(payload.count), c.appOwed.frames &+ 1)
        } else if stream == c.runtime {
            c.runtimeOwed = (c.runtimeOwed.bytes &+ UInt32(payload.count), c.runtimeOwed.frames &+ 1)
        } else {
            link.grant(stream: stream, bytes: UInt32(payload.count), frames: 1)
        }
        if stream == c.app && flags.contains(.endStream) { c.requestEnded = true }
        _ = assembler.feed(stream: stream, payload: payload, flags: flags) { message, _ in
            if stream == c.app {
                self.appMessage(c, message)
            } else if stream == c.vault {
                self.vaultAnswer(c, message)
            } else if stream == c.runtime {
                self.runtimeMessage(c, message)
            } else {
                c.reads[stream, default: []].append(Array(message))
            }
        }
        if stream == c.app && c.requestEnded { finishIfDone(c) }
        if flags.contains(.endStream) && (stream == c.historyRead || stream == c.replayRead) { pageRead(c, stream) }
        if byStream[c.app] === c {
            startTurn(c)  // one held back by the bound may go now
            giveCredit(c)
        }
    }

    /// Gives back the app's and the runtime's credit while this conversation is under its bounds.
    private func giveCredit(_ c: Conversation) {
        guard let link else { return }
        counters.peakInputs = max(counters.peakInputs, c.inputs.count)
        counters.peakHeldEvents = max(counters.peakHeldEvents, c.outbox.count + c.unacked.count)
        if c.appOwed.frames > 0 && c.inputs.count < Self.maxQueuedInputs {
            link.grant(stream: c.app, bytes: c.appOwed.bytes, frames: c.appOwed.frames)
            c.appOwed = (0, 0)
        }
        if c.runtimeOwed.frames > 0 && c.runtime != 0 && c.outbox.count + c.unacked.count < Self.maxHeldEvents {
            link.grant(stream: c.runtime, bytes: c.runtimeOwed.bytes, frames: c.runtimeOwed.frames)
            c.runtimeOwed = (0, 0)
        }
    }

    public func linkWritable(_ link: PeerLink, stream: UInt32) {
        guard let c = byStream[stream], stream == c.app else { return }
        flush(c)
        startTurn(c)
        giveCredit(c)
    }

    public func linkStreamClosed(_ link: PeerLink, stream: UInt32, code: ErrorCode, reason: String) {
        guard let c = byStream.removeValue(forKey: stream) else { return }
        assembler.drop(stream: stream)
        if stream == c.app {
            // The app went away: its generation stops; the vault keeps what was stored.
            if c.runtime != 0 { link.closeStream(c.runtime, code: .cancelled, reason: "the app closed its stream") }
            for s in [c.vault, c.historyRead, c.replayRead, c.runtime] where s != 0 && byStream[s] === c {
                byStream[s] = nil
                if s == c.vault { link.closeStream(s) }
            }
        } else if stream == c.historyRead || stream == c.replayRead {
            pageRead(c, stream)  // ended without its page (the vault went away): go on without it
        } else if stream == c.runtime && code != .none && c.runtime != 0 {
            c.runtime = 0
            store(c, .error, #"{"event":"error","code":"runtime_unavailable","message":\#(JSONText.string("the agent's runtime: \(code): \(reason)")),"retryable":true}"#)
            endTurn(c)
        } else if stream == c.vault && c.app != 0 {
            showError(c, code: "vault_unavailable", message: "the vault stream ended: \(code)", retryable: true)
        }
    }

    // MARK: - The conversation

    private func appMessage(_ c: Conversation, _ message: UnsafeRawBufferPointer) {
        // On a full-duplex stream an empty message says nothing (the END that closes the app's side comes so).
        if message.count == 0 && !c.oneTurn { return }
        if c.resource != nil {
            c.input = String(decoding: message, as: UTF8.self)
            c.inputs.append(("", ""))
            return startTurn(c)
        }
        let o = try? JSONSerialization.jsonObject(with: Data(message)) as? [String: Any]
        // A JSON object says its text (or nothing: a resume that asks nothing new); anything else is the text.
        let text = o.map { $0["text"] as? String ?? $0["message"] as? String ?? "" } ?? String(decoding: message, as: UTF8.self)
        let agent = o?["agent"] as? String ?? settings.personas[0].name
        if text.isEmpty && c.resumeAfter != nil {
            c.resumeOnly = true  // a resume with nothing new to say
            return
        }
        c.inputs.append((agent, text))
        startTurn(c)
    }

    /// The next turn starts once history and any replay are in, and no turn runs.
    private func startTurn(_ c: Conversation) {
        guard let link, c.runtime == 0, c.history != nil, c.replayed, c.reply.isEmpty, !c.inputs.isEmpty,
              c.outbox.count + c.unacked.count < Self.maxHeldEvents else { return }  // the app is behind: wait
        let (agentName, text) = c.inputs.removeFirst()
        if c.resource != nil { return directoryRequest(c) }
        let persona = settings.personas.first { $0.name == agentName } ?? settings.personas[0]
        c.agent = persona.name
        c.input = text
        c.tokens = 0
        counters.turns &+= 1
        if let why = settings.rules.refuses(text) {
            // What was refused is not kept (nor ever given to an agent as context): a marker stands in for it.
            store(c, .user, #"{"event":"user","agent":\#(JSONText.string(persona.name)),"text":"[withheld by moderation]","moderated":true}"#, show: false)
            return refuse(c, why: why)
        }
        let tantrum = settings.rules.isTantrum(text)
        store(c, .user, #"{"event":"user","agent":\#(JSONText.string(persona.name)),"text":\#(JSONText.string(text))\#(tantrum ? #","tantrum":true"# : "")}"#,
              show: false)
        if tantrum {
            counters.tantrums &+= 1
            settings.log?("WARN: tantrum in session \(c.session) (\(counters.tantrums) so far)")
        }
        c.runtimeOwed = (0, 0)
        c.runtime = link.open(Open(target: .runtime, world: world, session: c.session))
        byStream[c.runtime] = c
        let request = AgentRequest(persona: persona, input: text, history: c.history ?? [], backend: settings.backend,
                                   pacingMilliseconds: settings.pacingMilliseconds)
        _ = request.json.withUnsafeBytes { link.send(stream: c.runtime, payload: $0, end: true) }
    }

    /// Moderation refused the user's message: the agent answers with the world's refusal (stored and shown
    /// like any reply, marked), the user's trust goes down, and no runtime is asked.
    private func refuse(_ c: Conversation, why: String) {
        counters.refused &+= 1
        settings.log?("WARN: moderation refused a message in session \(c.session): \(why)")
        let text = settings.rules.refusal
        store(c, .done, #"{"event":"done","agent":\#(JSONText.string(c.agent)),"text":\#(JSONText.string(text)),"moderated":true,"usage":{"tokens_in":0,"tokens_out":0,"time_to_first_token_ms":0,"total_ms":0}}"#)
        adjustTrust(c, WorldRules.trustPenalty)
        endTurn(c)
    }

    /// A directory answer that changes nothing: out now, and the exchange ends.
    func emitReply(_ c: Conversation, _ json: String) {
        emit(c, sequence: nil, json)
        c.endAfterOutbox = true
        flush(c)
    }

    /// A directory change: stored, and answered (with its sequence) once the vault has it.
    func storeChange(_ c: Conversation, _ json: String) {
        store(c, .directory, json)
        c.endAfterOutbox = true
        flush(c)
    }

    /// Fans a finished reply out to the world's broadcast room (sports: every viewer of `live` sees it).
    private func broadcast(_ c: Conversation) {
        guard let room = settings.rules.broadcastRoom, let link else { return }
        let json = #"{"event":"commentary","agent":\#(JSONText.string(c.agent)),"session":\#(JSONText.string(c.session)),"text":\#(JSONText.string(c.reply))}"#
        Array(json.utf8).withUnsafeBytes { link.publish(world: world, room: room, payload: $0) }
        counters.broadcasts &+= 1
    }

    /// Stores the user's new trust score in the session (not shown to the app) and logs it.
    private func adjustTrust(_ c: Conversation, _ change: Int) {
        guard settings.rules.trustScore else { return }
        let score = (c.trust ?? 0) + change
        c.trust = score
        store(c, .trust, #"{"event":"trust","change":\#(change),"score":\#(score)}"#, show: false)
        settings.log?("INFO: Trust score updated: \(change > 0 ? "+" : "")\(change) (session \(c.session), now \(score))")
    }

    private func runtimeMessage(_ c: Conversation, _ message: UnsafeRawBufferPointer) {
        switch AgentReply.parse(message) {
        case .token(let raw, let i)?:
            let (t, masked) = settings.rules.masked(raw)
            if masked {
                counters.masked &+= 1
                settings.log?("WARN: moderation masked a word in \(c.agent)'s reply in session \(c.session)")
            }
            c.reply += t
            c.tokens += 1
            store(c, .token, #"{"event":"token","agent":\#(JSONText.string(c.agent)),"text":\#(JSONText.string(t)),"index":\#(i)}"#)
        case .done(let u)?:
            let usage = #"{"tokens_in":\#(u.tokensIn),"tokens_out":\#(u.tokensOut),"time_to_first_token_ms":\#(Double(u.timeToFirstTokenMicroseconds) / 1_000),"total_ms":\#(Double(u.totalMicroseconds) / 1_000)}"#
            store(c, .done, #"{"event":"done","agent":\#(JSONText.string(c.agent)),"text":\#(JSONText.string(c.reply)),"usage":\#(usage)}"#)
            c.history = (c.history ?? []) + [Turn(role: .user, text: c.input), Turn(role: .agent, text: c.reply)]
            c.runtime = 0
            adjustTrust(c, WorldRules.trustReward)
            broadcast(c)
            endTurn(c)
        case .error(let e)?:
            store(c, .error, #"{"event":"error","code":\#(JSONText.string(e.code)),"message":\#(JSONText.string(e.message)),"retryable":\#(e.retryable)}"#)
            c.runtime = 0
            endTurn(c)
        case nil:
            break
        }
    }

    private func endTurn(_ c: Conversation) {
        c.reply = ""
        if c.oneTurn {
            c.endAfterOutbox = true
            flush(c)
        } else {
            startTurn(c)
            finishIfDone(c)
        }
    }

    // MARK: - The vault

    /// Appends an event; it is shown to the app when acknowledged (`3way_full`) or at once (`realtime`).
    private func store(_ c: Conversation, _ kind: Kind, _ json: String, show: Bool = true) {
        guard let link else { return }
        let bytes = [kind.rawValue] + Array(json.utf8)
        _ = bytes.withUnsafeBytes { link.send(stream: c.vault, payload: $0) }
        c.unacked.append(Event(kind: kind, json: json, show: show))
        if settings.mode == .realtime {
            // Shown at once, numbered as the vault will number it (one writer per session: this conversation).
            c.lastSequence += 1
            if show { emit(c, sequence: c.lastSequence, json) }
        }
    }

    private func vaultAnswer(_ c: Conversation, _ message: UnsafeRawBufferPointer) {
        switch VaultMessage.decode(message) {
        case .ack(let acks)?:
            counters.eventsStored &+= UInt64(acks.count)
            for a in acks {
                guard !c.unacked.isEmpty else { break }
                let e = c.unacked.removeFirst()
                if settings.mode == .full && e.show {
                    c.lastSequence = a.sessionSequence
                    emit(c, sequence: a.sessionSequence, e.json)
                } else {
                    c.lastSequence = max(c.lastSequence, a.sessionSequence)
                }
            }
        case .fail(let count, let errno, let retry, let reason)?:
            counters.eventsFailed &+= UInt64(count)
            c.unacked.removeFirst(min(Int(count), c.unacked.count))
            if c.runtime != 0 {
                link?.closeStream(c.runtime, code: .cancelled, reason: "the vault could not store the reply")
                byStream[c.runtime] = nil
                c.runtime = 0
            }
            // What is still on its way to the vault is no longer shown: the app hears the error now, and a resume
            // finds whatever of it was stored.
            c.unacked = c.unacked.map { Event(kind: $0.kind, json: $0.json, show: false) }
            showError(c, code: "vault_unavailable", message: "the world's vault could not store this (errno \(errno): \(reason)); retry after \(retry) ms",
                      retryable: true)
            c.reply = ""
            if c.oneTurn { c.endAfterOutbox = true; flush(c) }
        default:
            break
        }
    }

    /// A history or replay page is complete.
    private func pageRead(_ c: Conversation, _ stream: UInt32) {
        let events = (c.reads.removeValue(forKey: stream) ?? []).compactMap { m -> StoredEvent? in
            if case .record(let e)? = m.withUnsafeBytes({ VaultMessage.decode($0) }) { return e }
            return nil
        }
        if stream == c.historyRead {
            var turns: [Turn] = []
            for e in events {
                guard let o = try? JSONSerialization.jsonObject(with: Data(e.payload)) as? [String: Any] else { continue }
                if e.kind == Kind.trust.rawValue, let score = o["score"] as? Int { c.trust = score }
                if e.kind == Kind.directory.rawValue { Self.fold(o, into: &c.directory) }
                c.lastSequence = max(c.lastSequence, e.sessionSequence)
                // A refused exchange is not context for the agent.
                guard let text = o["text"] as? String, o["moderated"] as? Bool != true else { continue }
                if e.kind == Kind.user.rawValue { turns.append(Turn(role: .user, text: text)) }
                if e.kind == Kind.done.rawValue { turns.append(Turn(role: .agent, text: text)) }
            }
            c.history = turns
            c.historyRead = 0
        } else {
            // Resuming: what the app missed, in order, before anything live.
            for e in events where e.kind != Kind.user.rawValue && e.kind != Kind.trust.rawValue && e.kind != Kind.directory.rawValue {
                counters.replayed &+= 1
                emit(c, sequence: e.sessionSequence, String(decoding: e.payload, as: UTF8.self))
            }
            c.replayed = true
            c.replayRead = 0
            finishIfDone(c)
        }
        flush(c)
        startTurn(c)
    }

    /// The app ended its side and nothing is left to answer: a resume that asked nothing new, or a full-duplex
    /// stream whose last turn is over. The reply ends once what it is owed went out.
    private func finishIfDone(_ c: Conversation) {
        guard c.requestEnded, c.replayed, c.inputs.isEmpty, c.runtime == 0, c.reply.isEmpty, c.history != nil else { return }
        guard !c.oneTurn || c.resumeOnly else { return }
        c.endAfterOutbox = true
        flush(c)
    }

    // MARK: - To the app

    private func emit(_ c: Conversation, sequence: UInt64?, _ json: String) {
        var bytes = Array(json.utf8)
        if let sequence, bytes.first == UInt8(ascii: "{") {
            bytes = Array(#"{"seq":\#(sequence),"#.utf8) + bytes.dropFirst()
        }
        c.outbox.append((sequence, bytes))
        flush(c)
    }

    private func showError(_ c: Conversation, code: String, message: String, retryable: Bool) {
        emit(c, sequence: nil, #"{"event":"error","code":\#(JSONText.string(code)),"message":\#(JSONText.string(message)),"retryable":\#(retryable)}"#)
    }

    private func flush(_ c: Conversation) {
        guard let link else { return }
        if c.unary {
            // One JSON reply: the last event (the done, or an error), once the turn is over.
            // Sent in pieces as the window allows (a reply larger than the gateway's opening window would
            // otherwise wait for credit it only grants as bytes arrive).
            guard c.endAfterOutbox, settings.mode == .realtime || !c.unacked.contains(where: { $0.show }), let last = c.outbox.last else { return }
            guard let taken = last.1.withUnsafeBytes({ link.sendPartial(stream: c.app, payload: UnsafeRawBufferPointer(rebasing: $0[c.unarySent...]), end: true) })
            else { return }
            c.unarySent += taken
            if c.unarySent >= last.1.count {
                c.outbox.removeAll()
                c.unarySent = 0
            }
            return
        }
        guard !c.appEnded else { return }
        while let (sequence, bytes) = c.outbox.first {
            let last = c.outbox.count == 1 && c.endAfterOutbox && (settings.mode == .realtime || !c.unacked.contains { $0.show })
            let sent = bytes.withUnsafeBytes { b in
                sequence.map { link.sendSequenced(stream: c.app, sequence: $0, payload: b, end: last) }
                    ?? link.send(stream: c.app, payload: b, end: last)
            }
            guard sent else { return }
            c.outbox.removeFirst()
            if last { c.appEnded = true }
        }
        // In 3way_full the reply ends only once every event of it was durable and shown.
        let allShown = settings.mode == .realtime || !c.unacked.contains { $0.show }
        if c.endAfterOutbox && !c.appEnded && allShown,
           link.send(stream: c.app, payload: UnsafeRawBufferPointer(start: nil, count: 0), end: true) {
            c.appEnded = true
        }
    }
}
