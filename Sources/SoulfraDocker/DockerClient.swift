import CCurl
import Foundation

/// A Docker Engine API failure: what was asked, and what the engine (or the socket) said.
public struct DockerError: Error, CustomStringConvertible, Equatable {
    public let status: Int
    public let message: String
    public init(_ status: Int, _ message: String) {
        self.status = status
        self.message = message
    }
    public var description: String { status == 0 ? message : "docker engine: HTTP \(status): \(message)" }
}

/// The Docker Engine API over its unix socket, through libcurl: blocking calls, for the control plane's
/// queue and the log pumps' threads — never a loop.
public struct DockerClient: Sendable {
    public let socketPath: String
    /// The API version asked for (1.41: Docker 20.10, Debian 12's docker.io).
    public let version = "v1.41"

    public init(socketPath: String = "/var/run/docker.sock") { self.socketPath = socketPath }

    final class Sink {
        var data = Data()
        let stream: ((Data) -> Bool)?
        init(stream: ((Data) -> Bool)?) { self.stream = stream }
    }

    /// One call: `method path` with an optional JSON body; the answer's body (or, with `stream`, each piece of it
    /// as it arrives until `stream` returns false). Statuses ≥ 400 throw with the engine's message.
    @discardableResult
    public func call(_ method: String, _ path: String, json: Any? = nil, body: Data? = nil, contentType: String = "application/json",
                     timeoutMilliseconds: Int = 30_000, stream: ((Data) -> Bool)? = nil) throws(DockerError) -> (status: Int, body: Data) {
        var payload = body
        if let json {
            guard let d = try? JSONSerialization.data(withJSONObject: json) else { throw DockerError(0, "cannot encode the request to \(path)") }
            payload = d
        }
        let sink = Sink(stream: stream)
        var status = 0
        var error = [CChar](repeating: 0, count: 256)
        let headers = ["Content-Type: \(contentType)", "Expect:"]
        let rc = withHeaders(headers) { h, n in
            (payload ?? Data()).withUnsafeBytes { raw in
                sf_curl_easy(socketPath, method, "http://localhost/\(version)\(path)", h, n, payload == nil ? nil : raw.baseAddress,
                             raw.count, timeoutMilliseconds, { context, bytes, len in
                                 let sink = Unmanaged<Sink>.fromOpaque(context!).takeUnretainedValue()
                                 let d = Data(bytes: bytes!, count: len)
                                 if let stream = sink.stream { return stream(d) ? 1 : 0 }
                                 sink.data.append(d)
                                 return 1
                             }, Unmanaged.passUnretained(sink).toOpaque(), &status, &error, error.count)
            }
        }
        // A follow that its reader stopped ends with a write error: that is not a failure.
        if rc != 0 && !(stream != nil && rc == 23) {
            throw DockerError(0, "cannot reach the docker engine at \(socketPath): \(String(cString: error))")
        }
        if status >= 400 {
            let o = (try? JSONSerialization.jsonObject(with: sink.data)) as? [String: Any]
            throw DockerError(status, o?["message"] as? String ?? String(decoding: sink.data.prefix(300), as: UTF8.self))
        }
        return (status, sink.data)
    }

    /// A call whose answer is a JSON value.
    public func json(_ method: String, _ path: String, json body: Any? = nil, timeoutMilliseconds: Int = 30_000) throws(DockerError) -> Any {
        let (_, data) = try call(method, path, json: body, timeoutMilliseconds: timeoutMilliseconds)
        guard !data.isEmpty else { return [String: Any]() }
        guard let v = try? JSONSerialization.jsonObject(with: data, options: [.fragmentsAllowed]) else {
            throw DockerError(0, "the engine's answer to \(path) is not JSON")
        }
        return v
    }

    /// Whether an engine answers (`/_ping`, within a second).
    public func ping() -> Bool {
        (try? call("GET", "/_ping", timeoutMilliseconds: 1_000).status) == 200
    }

    /// `?a=b&c=d`, values percent-encoded.
    public static func query(_ items: [(String, String)]) -> String {
        let allowed = CharacterSet.alphanumerics.union(CharacterSet(charactersIn: "-._~"))
        return "?" + items.map { "\($0.0)=\($0.1.addingPercentEncoding(withAllowedCharacters: allowed) ?? $0.1)" }.joined(separator: "&")
    }
}

public func withHeaders<R>(_ headers: [String], _ body: (UnsafePointer<UnsafePointer<CChar>?>, Int32) -> R) -> R {
    let copies = headers.map { strdup($0) }
    defer { for c in copies { free(c) } }
    let pointers = copies.map { UnsafePointer<CChar>($0) }
    return pointers.withUnsafeBufferPointer { body($0.baseAddress!, Int32(pointers.count)) }
}

/// Splits a container's log stream (no TTY: each frame is stream byte, three zeros, a big-endian length, the
/// bytes) into its payloads; what is left of a frame not yet whole stays in `buffer`.
public func demultiplexDockerLog(_ buffer: inout Data) -> [Data] {
    var out: [Data] = []
    var at = buffer.startIndex
    while buffer.endIndex - at >= 8 {
        let header = buffer[at..<(at + 8)]
        let length = header.suffix(4).reduce(0) { $0 << 8 | Int($1) }
        guard buffer.endIndex - at - 8 >= length else { break }
        out.append(buffer[(at + 8)..<(at + 8 + length)])
        at += 8 + length
    }
    buffer = Data(buffer[at...])
    return out
}
