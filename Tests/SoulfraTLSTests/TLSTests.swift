import Foundation
import Testing
@testable import SoulfraTLS

/// A fresh self-signed certificate and key in a private directory.
func devCertificate(_ tag: String) throws -> (cert: String, key: String) {
    let dir = NSTemporaryDirectory() + "soulfra-tls-\(getpid())-\(tag)"
    try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
    let cert = dir + "/cert.pem", key = dir + "/key.pem"
    try TLSContext.makeSelfSigned(certificatePath: cert, keyPath: key)
    return (cert, key)
}

/// Moves ciphertext both ways and drives both handshakes until done or stuck (bounded).
func handshake(_ client: TLSConnection, _ server: TLSConnection) throws {
    for _ in 0..<20 {
        _ = try client.handshake()
        var toServer: [UInt8] = []
        client.drainOutput { toServer.append(contentsOf: $0) }
        try toServer.withUnsafeBytes { try server.receive($0) }
        _ = try server.handshake()
        var toClient: [UInt8] = []
        server.drainOutput { toClient.append(contentsOf: $0) }
        try toClient.withUnsafeBytes { try client.receive($0) }
        if client.handshakeComplete && server.handshakeComplete && toServer.isEmpty && toClient.isEmpty { return }
    }
}

func pipe(_ from: TLSConnection, _ to: TLSConnection) throws -> (TLSConnection.ReadResult, [UInt8]) {
    var bytes: [UInt8] = []
    from.drainOutput { bytes.append(contentsOf: $0) }
    try bytes.withUnsafeBytes { try to.receive($0) }
    var plain: [UInt8] = []
    let r = try to.read(into: &plain)
    return (r, plain)
}

@Suite("TLS over memory BIOs", .serialized)
struct TLSTests {
    @Test("handshake in memory, ALPN picks h2, data both ways, close_notify")
    func roundTrip() throws {
        let (cert, key) = try devCertificate("rt")
        let server = try TLSConnection(context: TLSContext(certificatePath: cert, keyPath: key))
        let client = try TLSConnection(context: TLSContext(clientCA: cert), serverName: "localhost")
        try handshake(client, server)
        #expect(client.handshakeComplete && server.handshakeComplete)
        #expect(server.alpn == "h2" && client.alpn == "h2")
        #expect(client.version == "TLSv1.3")
        try Array("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".utf8).withUnsafeBytes { try client.write($0) }
        let (r1, got) = try pipe(client, server)
        #expect(r1 == .data(24) && got == Array("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".utf8))
        try Array("hello".utf8).withUnsafeBytes { try server.write($0) }
        #expect(try pipe(server, client).1 == Array("hello".utf8))
        client.close()
        #expect(try pipe(client, server).0 == .closed)
    }

    @Test("ALPN falls back to http/1.1 for a client that only speaks it")
    func alpnHTTP1() throws {
        let (cert, key) = try devCertificate("alpn")
        let server = try TLSConnection(context: TLSContext(certificatePath: cert, keyPath: key))
        let client = try TLSConnection(context: TLSContext(clientCA: nil, alpn: ["http/1.1"]))
        try handshake(client, server)
        #expect(server.alpn == "http/1.1")
    }

    @Test("a certificate the client does not trust fails the handshake with OpenSSL's reason")
    func badCertificate() throws {
        let (cert, key) = try devCertificate("bad-server")
        let (otherCA, _) = try devCertificate("bad-ca")
        let server = try TLSConnection(context: TLSContext(certificatePath: cert, keyPath: key))
        let client = try TLSConnection(context: TLSContext(clientCA: otherCA), serverName: "localhost")
        do {
            try handshake(client, server)
            Issue.record("the handshake should have failed")
        } catch {
            #expect("\(error)".contains("certificate"), "\(error)")
        }
        #expect(!client.handshakeComplete)
    }

    @Test("garbage instead of a ClientHello fails cleanly")
    func garbage() throws {
        let (cert, key) = try devCertificate("garbage")
        let server = try TLSConnection(context: TLSContext(certificatePath: cert, keyPath: key))
        try Array("GET / HTTP/1.1\r\nHost: a\r\n\r\n".utf8).withUnsafeBytes { try server.receive($0) }
        #expect(throws: TLSError.self) { try server.handshake() }
    }

    @Test("a missing key file is reported by path")
    func missingKey() {
        #expect(throws: TLSError.self) { try TLSContext(certificatePath: "/nonexistent/cert.pem", keyPath: "/nonexistent/key.pem") }
        do { _ = try TLSContext(certificatePath: "/nonexistent/cert.pem", keyPath: "/nonexistent/key.pem") } catch {
            #expect(error.description.contains("/nonexistent/cert.pem"))
        }
    }
}
