import Synchronization

/// Admin routes answered off the loops, by another part of the daemon (the control plane's API): their calls
/// are handed over with `handle`, and the answer comes back through the `AdminReplier`, from any thread.
/// The routes join the admin listener's route table (404 and 405 are the table's); all of them need the
/// admin token.
public protocol AdminExtension: Sendable {
    /// `(method, pattern)`, patterns as in the route table: `/admin/v1/worlds/{world}`.
    var routes: [(method: String, pattern: String)] { get }
    /// Called on the loop: must not block. `route` indexes `routes`.
    func handle(_ call: AdminCall, route: Int, replier: AdminReplier)
    /// Prometheus text added to `/metrics` (read on the loop: a ready copy, never computed there).
    var metricsText: String { get }
}

extension AdminExtension {
    public var metricsText: String { "" }
}

/// One call to an extension route.
public struct AdminCall: Sendable {
    public let method: String
    public let path: String
    /// The raw query string (after `?`, without it).
    public let query: String
    public let parameters: [String: String]
    public let body: [UInt8]
    /// The request's `accept` header ("" when absent).
    public let accept: String

    public init(method: String, path: String, query: String, parameters: [String: String], body: [UInt8], accept: String = "") {
        self.method = method
        self.path = path
        self.query = query
        self.parameters = parameters
        self.body = body
        self.accept = accept
    }

    /// The query's `name=value` pairs, percent-decoded (`+` is a space).
    public var queryItems: [(String, String)] {
        query.split(separator: "&").compactMap { pair in
            // "=x" and "=" name nothing: skipped (split drops their empty name).
            guard !pair.hasPrefix("=") else { return nil }
            let kv = pair.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
            return (percentDecoded(kv[0]), kv.count > 1 ? percentDecoded(kv[1]) : "")
        }
    }

}

func percentDecoded(_ s: Substring) -> String {
    var out: [UInt8] = []
    var bytes = Array(s.utf8)[...]
    while let b = bytes.popFirst() {
        if b == UInt8(ascii: "+") { out.append(0x20); continue }
        if b == UInt8(ascii: "%"), bytes.count >= 2, let v = UInt8(String(decoding: bytes.prefix(2), as: UTF8.self), radix: 16) {
            out.append(v)
            bytes = bytes.dropFirst(2)
            continue
        }
        out.append(b)
    }
    return String(decoding: out, as: UTF8.self)
}

/// What an extension sends back: a whole response, or a stream (a head, chunks, an end) for server-sent
/// events, written without a length and closed at the end.
public enum AdminReply: Sendable {
    case response(status: Int, contentType: String, body: [UInt8])
    case streamHead(status: Int, contentType: String)
    case chunk([UInt8])
    case end
}

/// Carries one call's answer back to its connection's loop. `send` may be called from any thread; it returns
/// false once the connection is gone (a stream's producer stops then).
public final class AdminReplier: Sendable {
    let ticket: UInt64
    let deliver: @Sendable (UInt64, AdminReply) -> Void
    let gone = Atomic<Bool>(false)

    init(ticket: UInt64, deliver: @escaping @Sendable (UInt64, AdminReply) -> Void) {
        self.ticket = ticket
        self.deliver = deliver
    }

    public var isGone: Bool { gone.load(ordering: .acquiring) }

    @discardableResult
    public func send(_ reply: AdminReply) -> Bool {
        guard !isGone else { return false }
        deliver(ticket, reply)
        return true
    }

    func markGone() { gone.store(true, ordering: .releasing) }
}
