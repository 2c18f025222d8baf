import CCurl
import Foundation

/// Where the `openai` backend sends requests: any OpenAI-compatible `/v1/chat/completions` (llama.cpp server,
/// vLLM, Ollama, OpenAI).
public struct OpenAISettings: Sendable, Equatable {
    /// e.g. `http://127.0.0.1:8081` (the path `/v1/chat/completions` is added).
    public var baseURL: String
    public var apiKey: String
    public var model: String
    public var connectTimeoutMilliseconds = 5_000
    public var totalTimeoutMilliseconds = 120_000
    /// Retries of a request answered 429 or 5xx (or that failed to connect) before its first token.
    public var maxRetries = 3
    public var retryBaseMilliseconds = 200

    public init(baseURL: String, apiKey: String = "", model: String = "gpt-4o-mini") {
        self.baseURL = baseURL
        self.apiKey = apiKey
        self.model = model
    }
}

/// The `openai` backend on one worker thread: streamed chat completions over libcurl's multi interface, parsed
/// from the SSE chunk format (`data: {…}` lines, split anywhere; `data: [DONE]`) into tokens. Driven by
/// `poll(now:)` between the worker's socket polls. A reply whose tokens are not being sent (no credit) pauses
/// its transfer; a cancelled reply aborts it (the upstream sees the connection close).
final class OpenAIBackend {
    /// One reply in progress.
    final class Call {
        let body: [UInt8]
        var request: OpaquePointer?
        var attempt = 0
        var retryAt: UInt64?
        var line: [UInt8] = []
        /// Tokens parsed, not yet taken by the worker.
        var tokens: [String] = []
        var gotToken = false
        var finished = false
        var failure: RuntimeError?
        var paused = false
        var usage: (tokensIn: Int, tokensOut: Int)?
        init(body: [UInt8]) { self.body = body }
    }

    let settings: OpenAISettings
    private let multi: OpaquePointer
    private var calls: [ObjectIdentifier: Call] = [:]
    /// The most tokens held for one reply before its transfer is paused.
    static let maxHeldTokens = 256

    init?(settings: OpenAISettings) {
        guard sf_curl_global_init() == 0, let m = sf_curl_multi_new() else { return nil }
        self.settings = settings
        self.multi = m
    }

    deinit {
        for c in calls.values { cancel(c) }
        sf_curl_multi_free(multi)
    }

    var active: Bool { !calls.isEmpty }

    /// Starts a streamed completion for `request`.
    func start(_ request: AgentRequest, now: UInt64) -> Call {
        let c = Call(body: Self.body(request, model: settings.model))
        calls[ObjectIdentifier(c)] = c
        send(c)
        return c
    }

    /// Stops a reply: the transfer is aborted (the upstream sees the connection close).
    func cancel(_ c: Call) {
        if let r = c.request { sf_curl_cancel(multi, r) }
        c.request = nil
        c.finished = true
        calls[ObjectIdentifier(c)] = nil
    }

    /// Lets a paused transfer go on once its tokens were taken.
    func taken(_ c: Call) {
        if c.paused && c.tokens.count < Self.maxHeldTokens / 2, let r = c.request {
            c.paused = false
            sf_curl_resume(r)
        }
    }

    /// Moves transfers along without blocking; finished ones end or are retried.
    func poll(now: UInt64) {
        for c in calls.values where c.request == nil && (c.retryAt.map { now >= $0 } ?? false) {
            c.retryAt = nil
            send(c)
        }
        guard calls.values.contains(where: { $0.request != nil }) else { return }
        _ = sf_curl_perform(multi)
        var context: UnsafeMutableRawPointer?
        var result: Int32 = 0
        var status = 0
        var error = [CChar](repeating: 0, count: 256)
        while sf_curl_next_done(multi, &context, &result, &status, &error, error.count) == 1 {
            guard let context else { continue }
            let c = Unmanaged<Call>.fromOpaque(context).takeUnretainedValue()
            c.request = nil
            let text = String(decoding: error.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
            finished(c, result: result, status: status, error: text, now: now)
        }
    }

    private func finished(_ c: Call, result: Int32, status: Int, error: String, now: UInt64) {
        let retryable = result != 0 ? !c.gotToken : (status == 429 || status >= 500)
        if (result != 0 || status >= 300) && retryable && !c.gotToken && c.attempt < settings.maxRetries {
            c.attempt += 1
            c.line.removeAll()
            let delay = UInt64(settings.retryBaseMilliseconds) << UInt64(c.attempt - 1)
            c.retryAt = now &+ delay * 1_000_000
            return
        }
        if result != 0 {
            c.failure = c.failure ?? RuntimeError(code: result == 28 ? "upstream_timeout" : "upstream_error",
                                                  message: "the model endpoint failed: \(error)", retryable: true)
        } else if status >= 300 {
            c.failure = c.failure ?? RuntimeError(code: status == 429 ? "upstream_rate_limited" : "upstream_status",
                                                  message: "the model endpoint answered \(status)", retryable: status == 429 || status >= 500)
        }
        c.finished = true
        calls[ObjectIdentifier(c)] = nil
    }

    private func send(_ c: Call) {
        let url = settings.baseURL.hasSuffix("/") ? settings.baseURL + "v1/chat/completions" : settings.baseURL + "/v1/chat/completions"
        var headers = ["Content-Type: application/json", "Accept: text/event-stream"]
        if !settings.apiKey.isEmpty { headers.append("Authorization: Bearer \(settings.apiKey)") }
        let context = Unmanaged.passUnretained(c).toOpaque()
        let r: OpaquePointer? = withCStrings(headers) { hs in
            c.body.withUnsafeBytes { b in
                sf_curl_post(multi, url, hs, Int32(headers.count), b.baseAddress, b.count, settings.connectTimeoutMilliseconds,
                             settings.totalTimeoutMilliseconds, { ctx, data, len in
                                 let call = Unmanaged<Call>.fromOpaque(ctx!).takeUnretainedValue()
                                 return OpenAIBackend.received(call, UnsafeRawBufferPointer(start: data, count: len)) ? 1 : 0
                             }, context)
            }
        }
        guard let r else {
            c.failure = RuntimeError(code: "upstream_error", message: "the request to \(url) could not be made", retryable: false)
            c.finished = true
            calls[ObjectIdentifier(c)] = nil
            return
        }
        c.request = r
    }

    /// Body bytes: SSE lines, split anywhere. False pauses the transfer (too many tokens held).
    static func received(_ c: Call, _ bytes: UnsafeRawBufferPointer) -> Bool {
        if c.tokens.count >= maxHeldTokens {
            c.paused = true
            return false
        }
        for b in bytes {
            if b == UInt8(ascii: "\n") {
                line(c, c.line)
                c.line.removeAll(keepingCapacity: true)
            } else if c.line.count < 1 << 20 {
                c.line.append(b)
            }
        }
        return true
    }

    /// One SSE line: `data: {json}` with a delta, `data: [DONE]`, an error object; the rest is ignored.
    static func line(_ c: Call, _ raw: [UInt8]) {
        var l = raw
        if l.last == UInt8(ascii: "\r") { l.removeLast() }
        guard l.starts(with: Array("data:".utf8)) else { return }
        let payload = l.dropFirst(5).drop { $0 == UInt8(ascii: " ") }
        if payload.elementsEqual("[DONE]".utf8) { return }
        guard let o = try? JSONSerialization.jsonObject(with: Data(payload)) as? [String: Any] else { return }
        if let e = o["error"] as? [String: Any] {
            c.failure = RuntimeError(code: "upstream_error", message: "the model endpoint failed midway: \(e["message"] as? String ?? "error")",
                                     retryable: true)
            return
        }
        if let u = o["usage"] as? [String: Any] {
            c.usage = (u["prompt_tokens"] as? Int ?? 0, u["completion_tokens"] as? Int ?? 0)
        }
        guard let choice = (o["choices"] as? [[String: Any]])?.first,
              let delta = choice["delta"] as? [String: Any], let text = delta["content"] as? String, !text.isEmpty else { return }
        c.tokens.append(text)
        c.gotToken = true
    }

    /// The chat completion request: the persona as the system message, the history, the input.
    static func body(_ r: AgentRequest, model: String) -> [UInt8] {
        let p = r.persona
        var system = "You are \(p.name). Speak in a \(p.style) way."
        if !p.greeting.isEmpty { system += " You greet people with: \(p.greeting)" }
        if !p.topics.isEmpty { system += " You love talking about \(p.topics.joined(separator: ", "))." }
        for (k, v) in p.knowledge.sorted(by: { $0.key < $1.key }) { system += " About \(k): \(v)" }
        var messages: [[String: String]] = [["role": "system", "content": system]]
        for t in r.history { messages.append(["role": t.role == .user ? "user" : "assistant", "content": t.text]) }
        messages.append(["role": "user", "content": r.input])
        let root: [String: Any] = ["model": model, "stream": true, "messages": messages, "max_tokens": r.maxTokens]
        return Array((try? JSONSerialization.data(withJSONObject: root, options: [.sortedKeys])) ?? Data())
    }
}

/// Calls `body` with the strings as a C array of C strings (valid during the call).
private func withCStrings<R>(_ strings: [String], _ body: (UnsafePointer<UnsafePointer<CChar>?>) -> R) -> R {
    let dup = strings.map { strdup($0) }
    defer { dup.forEach { free($0) } }
    let ptrs = dup.map { UnsafePointer($0) }
    return ptrs.withUnsafeBufferPointer { body($0.baseAddress!) }
}
