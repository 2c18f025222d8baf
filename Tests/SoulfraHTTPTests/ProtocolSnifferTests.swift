import Testing
@testable import SoulfraHTTP

func sniff(_ chunks: [[UInt8]]) -> SniffedProtocol? {
    var s = ProtocolSniffer()
    for c in chunks {
        if let p = c.withUnsafeBytes({ s.feed($0) }) { return p }
    }
    return nil
}

@Suite("Protocol sniffing on a shared port")
struct ProtocolSnifferTests {
    static let preface = Array("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".utf8) + [0, 0, 18, 4, 0, 0, 0, 0, 0]
    static let clientHello: [UInt8] = [0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xFC, 0x03, 0x03]
    static let get = Array("GET /healthz HTTP/1.1\r\nHost: a\r\n\r\n".utf8)

    @Test("TLS, h2c and HTTP/1.1 are told apart, whatever the chunking")
    func decide() {
        for (input, expected) in [(Self.preface, SniffedProtocol.http2), (Self.clientHello, .tls), (Self.get, .http1)] {
            #expect(sniff([input]) == expected)
            #expect(sniff(input.map { [$0] }) == expected, "byte by byte")
            for cut in 1..<input.count {
                #expect(sniff([Array(input[..<cut]), Array(input[cut...])]) == expected, "split at \(cut)")
            }
        }
    }

    @Test("a prefix of the preface waits; the first mismatch decides HTTP/1.1 at once")
    func minimalBytes() {
        #expect(sniff([Array("PRI * HTTP/2".utf8)]) == nil)
        #expect(sniff([Array("PRI * HTTP/1".utf8)]) == .http1)
        #expect(sniff([Array("P".utf8)]) == nil)
        #expect(sniff([Array("POST".utf8)]) == .http1)
        #expect(sniff([[0x16]]) == nil)
        #expect(sniff([[0x16, 0x41]]) == .http1)
    }

    @Test("the bytes are kept for replay")
    func replay() {
        var s = ProtocolSniffer()
        _ = Array("PRI * ".utf8).withUnsafeBytes { s.feed($0) }
        _ = Array("HTTP/2.0\r\n\r\nSM\r\n\r\nxyz".utf8).withUnsafeBytes { s.feed($0) }
        #expect(s.bytes == Array("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\nxyz".utf8))
    }
}
