/// What a new connection on a shared port speaks, decided from its first bytes.
public enum SniffedProtocol: Sendable, Equatable {
    /// A TLS record (handshake, TLS 1.0–1.3 record versions): hand the bytes to TLS; ALPN decides after.
    case tls
    /// The HTTP/2 connection preface (RFC 9113 §3.4): h2c with prior knowledge.
    case http2
    /// Anything else is read as HTTP/1.1 (whose parser rejects what is not).
    case http1
}

/// Decides between TLS, h2c and HTTP/1.1 with as few bytes as possible: one byte tells TLS from the rest;
/// the 24-byte preface is only awaited while the bytes so far are a prefix of it.
public struct ProtocolSniffer {
    static let preface = Array("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".utf8)
    var seen: [UInt8] = []

    public init() {}

    /// Feeds the connection's first bytes (they are kept: replay `bytes` to the chosen protocol). Nil while
    /// undecided.
    public mutating func feed(_ input: UnsafeRawBufferPointer) -> SniffedProtocol? {
        seen.append(contentsOf: input)
        guard let first = seen.first else { return nil }
        // TLS record: content type 22 (handshake), then a 0x03 major version.
        if first == 0x16 {
            guard seen.count >= 2 else { return nil }
            return seen[1] == 0x03 ? .tls : .http1
        }
        let n = min(seen.count, Self.preface.count)
        guard seen[..<n].elementsEqual(Self.preface[..<n]) else { return .http1 }
        return n == Self.preface.count ? .http2 : nil
    }

    /// Everything fed so far, to replay into the protocol chosen.
    public var bytes: [UInt8] { seen }
}
