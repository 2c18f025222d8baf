import Foundation
import SoulfraHTTP

/// What an instance asks a runtime worker for: one agent reply (docs/protocol.md "Runtime streams"). One JSON
/// object, the stream's first message:
///
/// ```json
/// {"agent": {"name": "cal", "style": "cheerful", "greeting": "Hi!", "topics": ["space"], "knowledge": {"mars": "…"}},
///  "input": "tell me about mars", "history": [{"role": "user", "text": "…"}, {"role": "agent", "text": "…"}],
///  "backend": "builtin", "pacing_ms": 0, "max_tokens": 256, "priority": "balanced"}
/// ```
public struct AgentRequest: Sendable, Equatable {
    public enum Priority: String, Sendable { case balanced, enterprise }

    public var persona: AgentPersona
    public var input: String
    public var history: [Turn]
    public var backend: String
    /// Time between tokens (0: as fast as credit allows; for benchmarks).
    public var pacingMilliseconds: Int
    public var maxTokens: Int
    public var priority: Priority

    public init(persona: AgentPersona, input: String, history: [Turn] = [], backend: String = "builtin", pacingMilliseconds: Int = 0,
                maxTokens: Int = 256, priority: Priority = .balanced) {
        self.persona = persona
        self.input = input
        self.history = history
        self.backend = backend
        self.pacingMilliseconds = pacingMilliseconds
        self.maxTokens = maxTokens
        self.priority = priority
    }

    /// Reads a request; the error says which field is wrong.
    public static func parse(_ bytes: UnsafeRawBufferPointer) -> Result<AgentRequest, RuntimeError> {
        guard let root = try? JSONSerialization.jsonObject(with: Data(bytes)) as? [String: Any] else {
            return .failure(.badRequest("the request must be one JSON object"))
        }
        guard let agent = root["agent"] as? [String: Any], let name = agent["name"] as? String, !name.isEmpty else {
            return .failure(.badRequest("agent.name is required"))
        }
        guard let input = root["input"] as? String else { return .failure(.badRequest("input (a string) is required")) }
        var persona = AgentPersona(name: name, style: agent["style"] as? String ?? "calm", greeting: agent["greeting"] as? String ?? "",
                                   topics: agent["topics"] as? [String] ?? [])
        if let k = agent["knowledge"] {
            guard let k = k as? [String: String] else { return .failure(.badRequest("agent.knowledge must map keywords to strings")) }
            persona.knowledge = k
        }
        var history: [Turn] = []
        for (i, t) in (root["history"] as? [[String: Any]] ?? []).enumerated() {
            guard let r = (t["role"] as? String).flatMap(Turn.Role.init(rawValue:)), let text = t["text"] as? String else {
                return .failure(.badRequest("history[\(i)] needs role (user or agent) and text"))
            }
            history.append(Turn(role: r, text: text))
        }
        var request = AgentRequest(persona: persona, input: input, history: history)
        request.backend = root["backend"] as? String ?? "builtin"
        request.pacingMilliseconds = max(0, min(root["pacing_ms"] as? Int ?? 0, 10_000))
        request.maxTokens = max(1, min(root["max_tokens"] as? Int ?? 256, 8_192))
        if let p = root["priority"] as? String {
            guard let priority = Priority(rawValue: p) else { return .failure(.badRequest("priority is balanced or enterprise")) }
            request.priority = priority
        }
        return .success(request)
    }

    /// The request as JSON (what an instance sends).
    public var json: [UInt8] {
        var agent: [String: Any] = ["name": persona.name, "style": persona.style, "greeting": persona.greeting, "topics": persona.topics]
        if !persona.knowledge.isEmpty { agent["knowledge"] = persona.knowledge }
        let root: [String: Any] = [
            "agent": agent, "input": input, "history": history.map { ["role": $0.role.rawValue, "text": $0.text] },
            "backend": backend, "pacing_ms": pacingMilliseconds, "max_tokens": maxTokens, "priority": priority.rawValue,
        ]
        return Array((try? JSONSerialization.data(withJSONObject: root, options: [.sortedKeys])) ?? Data())
    }
}

/// A failure the opener is told about, with a stable code.
public struct RuntimeError: Error, Sendable, Equatable {
    public var code: String
    public var message: String
    public var retryable: Bool

    public init(code: String, message: String, retryable: Bool) {
        self.code = code
        self.message = message
        self.retryable = retryable
    }

    public static func badRequest(_ m: String) -> RuntimeError { RuntimeError(code: "bad_request", message: m, retryable: false) }
    public static func unknownBackend(_ b: String) -> RuntimeError {
        RuntimeError(code: "unknown_backend", message: "no backend \"\(b)\" in this runtime", retryable: false)
    }
}

/// What a runtime worker sends back: token messages, then one `done` with usage, or an `error`; then END.
public enum AgentReply: Equatable, Sendable {
    case token(String, index: Int)
    case done(Usage)
    case error(RuntimeError)

    public struct Usage: Equatable, Sendable {
        public var tokensIn: Int
        public var tokensOut: Int
        public var timeToFirstTokenMicroseconds: UInt64
        public var totalMicroseconds: UInt64
        public init(tokensIn: Int, tokensOut: Int, timeToFirstTokenMicroseconds: UInt64, totalMicroseconds: UInt64) {
            self.tokensIn = tokensIn
            self.tokensOut = tokensOut
            self.timeToFirstTokenMicroseconds = timeToFirstTokenMicroseconds
            self.totalMicroseconds = totalMicroseconds
        }
    }

    /// One JSON object (the message's bytes).
    public var json: String {
        switch self {
        case .token(let t, let i):
            return #"{"token":\#(quoted(t)),"index":\#(i)}"#
        case .done(let u):
            let ttft = Double(u.timeToFirstTokenMicroseconds) / 1_000, total = Double(u.totalMicroseconds) / 1_000
            return #"{"done":true,"usage":{"tokens_in":\#(u.tokensIn),"tokens_out":\#(u.tokensOut),"#
                + #""time_to_first_token_ms":\#(ms(ttft)),"total_ms":\#(ms(total))}}"#
        case .error(let e):
            return #"{"error":{"code":\#(quoted(e.code)),"message":\#(quoted(e.message)),"retryable":\#(e.retryable)}}"#
        }
    }

    /// Reads a reply message; nil if it is none.
    public static func parse(_ bytes: UnsafeRawBufferPointer) -> AgentReply? {
        guard let o = try? JSONSerialization.jsonObject(with: Data(bytes)) as? [String: Any] else { return nil }
        if let t = o["token"] as? String, let i = o["index"] as? Int { return .token(t, index: i) }
        if o["done"] as? Bool == true, let u = o["usage"] as? [String: Any] {
            return .done(Usage(tokensIn: u["tokens_in"] as? Int ?? 0, tokensOut: u["tokens_out"] as? Int ?? 0,
                               timeToFirstTokenMicroseconds: UInt64(((u["time_to_first_token_ms"] as? Double) ?? 0) * 1_000),
                               totalMicroseconds: UInt64(((u["total_ms"] as? Double) ?? 0) * 1_000)))
        }
        if let e = o["error"] as? [String: Any] {
            return .error(RuntimeError(code: e["code"] as? String ?? "", message: e["message"] as? String ?? "",
                                       retryable: e["retryable"] as? Bool ?? false))
        }
        return nil
    }
}

private func ms(_ v: Double) -> String { String(format: "%.3f", v) }

private func quoted(_ s: String) -> String { JSONText.string(s) }
