import COpenSSL

/// A TLS failure with OpenSSL's own words.
public struct TLSError: Error, Sendable, CustomStringConvertible {
    public let description: String

    static func last(_ what: String) -> TLSError {
        var buf = [CChar](repeating: 0, count: 256)
        sf_tls_last_error(&buf, Int32(buf.count))
        let detail = String(decoding: buf.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
        return TLSError(description: detail.isEmpty ? what : "\(what): \(detail)")
    }
}

/// ALPN protocol names in wire format (each prefixed by its length).
func alpnWire(_ protocols: [String]) -> [UInt8] {
    protocols.flatMap { [UInt8($0.utf8.count)] + Array($0.utf8) }
}

/// Settings shared by a listener's connections (an SSL_CTX).
public final class TLSContext: @unchecked Sendable {
    let ctx: OpaquePointer
    public let isServer: Bool

    /// A server context: TLS 1.2–1.3, the PEM chain and key, ALPN preferring the earlier of `alpn`.
    public init(certificatePath: String, keyPath: String, alpn: [String] = ["h2", "http/1.1"]) throws(TLSError) {
        let wire = alpnWire(alpn)
        guard let c = wire.withUnsafeBufferPointer({ sf_tls_server_ctx(certificatePath, keyPath, $0.baseAddress, UInt32($0.count)) }) else {
            throw TLSError.last("cannot load certificate \(certificatePath) and key \(keyPath)")
        }
        ctx = c
        isServer = true
    }

    /// A client context. With `caPath` the server is verified against it; without, it is not (loopback only).
    public init(clientCA caPath: String?, alpn: [String] = ["h2", "http/1.1"]) throws(TLSError) {
        let wire = alpnWire(alpn)
        guard let c = wire.withUnsafeBufferPointer({ sf_tls_client_ctx(caPath, $0.baseAddress, UInt32($0.count)) }) else {
            throw TLSError.last("cannot create a client TLS context")
        }
        ctx = c
        isServer = false
    }

    deinit { sf_tls_ctx_free(ctx) }

    /// Writes a self-signed development certificate and key (P-256, 30 days, `host` and 127.0.0.1).
    public static func makeSelfSigned(certificatePath: String, keyPath: String, host: String = "localhost") throws(TLSError) {
        guard sf_tls_make_self_signed(certificatePath, keyPath, host) == 0 else {
            throw TLSError.last("cannot write a self-signed certificate to \(certificatePath)")
        }
    }
}

/// One TLS connection over memory BIOs, sans-IO: ciphertext in with `receive`, plaintext out of `read`,
/// plaintext in with `write`, ciphertext out of `drainOutput`. OpenSSL never touches a socket.
public final class TLSConnection {
    public enum ReadResult: Equatable {
        /// Plaintext bytes were appended.
        case data(Int)
        /// Nothing more until more ciphertext arrives.
        case needMore
        /// The peer sent close_notify.
        case closed
    }

    let t: OpaquePointer
    let context: TLSContext
    public private(set) var handshakeComplete = false
    /// One record's worth of scratch space, reused by `read` and `drainOutput` (allocated on first use).
    var scratch: UnsafeMutableRawBufferPointer?

    public init(context: TLSContext, serverName: String? = nil) throws(TLSError) {
        guard let t = sf_tls_new(context.ctx, context.isServer ? 1 : 0, serverName) else { throw TLSError.last("SSL_new") }
        self.t = t
        self.context = context
    }

    deinit {
        sf_tls_free(t)
        scratch?.deallocate()
    }

    @inline(__always) func buffer() -> UnsafeMutableRawBufferPointer {
        if let scratch { return scratch }
        let b = UnsafeMutableRawBufferPointer.allocate(byteCount: 16 << 10, alignment: 16)
        scratch = b
        return b
    }

    /// Ciphertext from the network.
    public func receive(_ bytes: UnsafeRawBufferPointer) throws(TLSError) {
        guard bytes.count > 0 else { return }
        guard sf_tls_feed(t, bytes.baseAddress, Int32(bytes.count)) == Int32(bytes.count) else { throw TLSError.last("BIO_write") }
    }

    /// Advances the handshake; true once it is complete. Drain output after every call.
    @discardableResult
    public func handshake() throws(TLSError) -> Bool {
        if handshakeComplete { return true }
        switch sf_tls_handshake(t) {
        case 1: handshakeComplete = true
        case 0: break
        default: throw TLSError.last("TLS handshake failed")
        }
        return handshakeComplete
    }

    /// Decrypts what it can, appending to `into`.
    public func read(into: inout [UInt8]) throws(TLSError) -> ReadResult {
        var total = 0
        let buf = buffer()
        while true {
            let n = sf_tls_read(t, buf.baseAddress, Int32(buf.count))
            if n > 0 {
                into.append(contentsOf: UnsafeRawBufferPointer(rebasing: buf[0..<Int(n)]))
                total += Int(n)
                continue
            }
            if n == -2 { return total > 0 ? .data(total) : .closed }
            if n == -1 { throw TLSError.last("TLS read failed") }
            return total > 0 ? .data(total) : .needMore
        }
    }

    /// Encrypts plaintext (all of it: memory BIOs never block).
    public func write(_ bytes: UnsafeRawBufferPointer) throws(TLSError) {
        precondition(handshakeComplete, "TLS application data written before the handshake completed")
        var off = 0
        while off < bytes.count {
            let n = sf_tls_write(t, bytes.baseAddress! + off, Int32(bytes.count - off))
            guard n > 0 else { throw TLSError.last("TLS write failed") }
            off += Int(n)
        }
    }

    /// Ciphertext for the network.
    public func drainOutput(_ body: (UnsafeRawBufferPointer) -> Void) {
        guard sf_tls_pending_output(t) > 0 else { return }
        let buf = buffer()
        while sf_tls_pending_output(t) > 0 {
            let n = sf_tls_take_output(t, buf.baseAddress, Int32(buf.count))
            guard n > 0 else { return }
            body(UnsafeRawBufferPointer(rebasing: buf[0..<Int(n)]))
        }
    }

    /// Sends close_notify (drain output afterwards).
    public func close() { sf_tls_close(t) }

    /// The ALPN protocol both sides agreed on ("h2", "http/1.1"), nil if none.
    public var alpn: String? {
        var buf = [CChar](repeating: 0, count: 256)
        let n = sf_tls_alpn(t, &buf, Int32(buf.count))
        guard n > 0 else { return nil }
        return String(decoding: buf.prefix(Int(n)).map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }

    /// "TLSv1.3", "TLSv1.2".
    public var version: String { String(cString: sf_tls_version(t)) }
}
