import Testing
import SoulfraTestSupport
@testable import SoulfraHTTP

/// What a parse produced, in a comparable form.
enum Seen: Equatable {
    case head(String, String, [String])  // method, target, "name: value"
    case body([UInt8])
    case end
    case error(Int)
}

/// Feeds `chunks` in order; adjacent body pieces are merged so results do not depend on the split.
func parse(_ chunks: [[UInt8]], limits: HTTP1Limits = HTTP1Limits()) -> (seen: [Seen], heads: [HTTPRequestHead]) {
    var p = HTTP1Parser(limits: limits)
    var seen: [Seen] = []
    var heads: [HTTPRequestHead] = []
    for c in chunks {
        c.withUnsafeBytes { raw in
            var offset = 0
            while offset <= raw.count {
                let used = p.feed(UnsafeRawBufferPointer(rebasing: raw[offset...]), onEvent: { e in
                    switch e {
                    case .head(let h):
                        heads.append(h)
                        seen.append(.head(h.method, h.target, h.headers.map { "\($0.name): \($0.value)" }))
                    case .body(let b):
                        if case .body(let prev)? = seen.last { seen[seen.count - 1] = .body(prev + Array(b)) } else { seen.append(.body(Array(b))) }
                    case .end:
                        seen.append(.end)
                    }
                    return true
                }, onError: { seen.append(.error($0.status)) })
                offset += used
                if used == 0 || offset >= raw.count { break }
            }
        }
    }
    return (seen, heads)
}

func bytes(_ s: String) -> [UInt8] { Array(s.utf8) }

let pipelined = bytes(
    "GET /v1/worlds/playground/analytics HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer sk-slfr_kids_x\r\n\r\n"
    + "POST /v1/worlds/playground/messages HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: 17\r\n\r\n{\"text\":\"hello\"}\n"
    + "POST /v1/worlds/playground/streams HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\n"
    + "5\r\nhello\r\n7;ext=1\r\n, world\r\n0\r\nX-Trailer: yes\r\n\r\n"
    + "GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")

let pipelinedExpected: [Seen] = [
    .head("GET", "/v1/worlds/playground/analytics", ["Host: localhost", "Authorization: Bearer sk-slfr_kids_x"]), .end,
    .head("POST", "/v1/worlds/playground/messages", ["Host: localhost", "Content-Type: application/json", "Content-Length: 17"]),
    .body(bytes("{\"text\":\"hello\"}\n")), .end,
    .head("POST", "/v1/worlds/playground/streams", ["Host: localhost", "Transfer-Encoding: chunked"]),
    .body(bytes("hello, world")), .end,
    .head("GET", "/healthz", ["Host: localhost", "Connection: close"]), .end,
]

@Suite("HTTP/1.1 parser")
struct HTTP1ParserTests {
    @Test("pipelined requests: no body, Content-Length, chunked with extensions and trailers, Connection: close")
    func pipelinedWhole() {
        let (seen, heads) = parse([pipelined])
        #expect(seen == pipelinedExpected)
        #expect(heads.map(\.keepAlive) == [true, true, true, false])
        #expect(heads[1].body == .length(17) && heads[2].body == .chunked)
    }

    @Test("the same events whether input arrives whole, byte by byte, or split at every position")
    func everySplit() {
        #expect(parse(pipelined.map { [$0] }).seen == pipelinedExpected)
        for cut in 0...pipelined.count {
            #expect(parse([Array(pipelined[..<cut]), Array(pipelined[cut...])]).seen == pipelinedExpected, "split at \(cut)")
        }
    }

    @Test("after Connection: close nothing more is parsed")
    func closeStops() {
        let (seen, _) = parse([bytes("GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\nGET /x HTTP/1.1\r\nHost: a\r\n\r\n")])
        #expect(seen == [.head("GET", "/", ["Host: a", "Connection: close"]), .end])
    }

    @Test("HTTP/1.0 closes unless keep-alive is asked for")
    func http10() {
        let (_, a) = parse([bytes("GET / HTTP/1.0\r\n\r\n")])
        #expect(a.first?.keepAlive == false && a.first?.minorVersion == 0)
        let (_, b) = parse([bytes("GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n")])
        #expect(b.first?.keepAlive == true)
    }

    @Test("pausing after an event stops the feed; the rest is parsed when fed again")
    func pause() {
        var p = HTTP1Parser()
        var events = 0
        let used = pipelined.withUnsafeBytes { raw in
            p.feed(raw, onEvent: { _ in events += 1; return events < 2 })
        }
        #expect(events == 2)
        #expect(used < pipelined.count)
        var rest = 0
        _ = pipelined.withUnsafeBytes { raw in
            p.feed(UnsafeRawBufferPointer(rebasing: raw[used...]), onEvent: { _ in rest += 1; return true })
        }
        #expect(events + rest == pipelinedExpected.count + 1, "chunked body arrives in two pieces here")
    }

    @Test("rejections carry the right status", arguments: [
        ("GET / HTTP/1.1\r\n\r\n", 400),                                            // no Host
        ("GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),                      // two Hosts (RFC 9112 §3.2)
        ("GET / HTTP/1.1\r\nHost: a\r\nhost: a\r\n\r\n", 400),                      // even the same one twice
        ("GET / HTTP/2.0\r\nHost: a\r\n\r\n", 505),
        ("GET / FTP/1.1\r\nHost: a\r\n\r\n", 400),
        ("GET /a b HTTP/1.1\r\nHost: a\r\n\r\n", 400),
        ("G\u{01}T / HTTP/1.1\r\nHost: a\r\n\r\n", 400),
        ("GET / HTTP/1.1\nHost: a\n\n", 400),                                       // bare LF
        ("GET / HTTP/1.1\r\nHost : a\r\n\r\n", 400),                                // space before colon
        ("GET / HTTP/1.1\r\nHost: a\r\n folded\r\n\r\n", 400),                      // obs-fold
        ("GET / HTTP/1.1\r\nHost a\r\n\r\n", 400),
        ("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n", 400),  // smuggling
        ("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n", 400),
        ("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\n", 400),
        ("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 99999999999999999999\r\n\r\n", 400),
        ("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", 501),
        ("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 2000000\r\n\r\n", 413),
        ("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", 400),
        ("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabcX\r\n", 400),
        ("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nFFFFFFFFFFFFFFFFF\r\n", 400),
        ("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n200000\r\n", 413),
    ])
    func rejections(_ input: String, _ status: Int) {
        let (seen, _) = parse([bytes(input)])
        #expect(seen.last == .error(status), "\(input.debugDescription) → \(seen)")
    }

    @Test("limits: request line 414, head 431, header count 431")
    func limits() {
        var l = HTTP1Limits()
        l.maxRequestLineBytes = 64
        l.maxHeadBytes = 256
        l.maxHeaderCount = 3
        #expect(parse([bytes("GET /" + String(repeating: "a", count: 100) + " HTTP/1.1\r\n")], limits: l).seen.last == .error(414))
        #expect(parse([bytes("GET / HTTP/1.1\r\nHost: a\r\nX: " + String(repeating: "b", count: 300) + "\r\n\r\n")], limits: l).seen.last == .error(431))
        #expect(parse([bytes("GET / HTTP/1.1\r\nHost: a\r\nA: 1\r\nB: 2\r\nC: 3\r\n\r\n")], limits: l).seen.last == .error(431))
        // Slowloris-style: an endless head is cut off at the limit, not buffered.
        var p = HTTP1Parser(limits: l)
        var status = 0
        for _ in 0..<1_000 {
            _ = bytes("X-A: b\r\n").withUnsafeBytes { p.feed($0, onEvent: { _ in true }, onError: { status = $0.status }) }
        }
        #expect(status == 414 || status == 431)
        #expect(p.pending.isEmpty)
    }

    @Test("empty lines before a request are ignored (RFC 9112 §2.2)")
    func leadingCRLF() {
        #expect(parse([bytes("\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n")]).seen == [.head("GET", "/", ["Host: a"]), .end])
    }

    @Test("random garbage never crashes; errors are 4xx/5xx (seeded)")
    func garbage() {
        var rng = SeededRandom(seed: 0x5EED_0003)
        func next() -> UInt64 { rng.next() }
        let alphabet = bytes("GET POST / HTTP/1.1\r\n: Host a Content-Length Transfer-Encoding chunked 0123456789abcdef;\t ")
        for round in 0..<3_000 {
            let n = Int(next() % 300)
            let input = (0..<n).map { _ in round % 2 == 0 ? alphabet[Int(next() % UInt64(alphabet.count))] : UInt8(truncatingIfNeeded: next()) }
            for e in parse([input]).seen {
                if case .error(let s) = e { #expect((400...505).contains(s), "seed 0x5EED0003 round \(round)") }
            }
        }
    }
}

@Suite("HTTP/1.1 response heads")
struct HTTP1ResponseTests {
    @Test("a length frames the body; without one the body is chunked (not for 101); close is said when asked")
    func heads() {
        func head(_ status: Int, _ fields: [(name: String, value: String)], _ length: Int?, close: Bool = false) -> String {
            String(decoding: HTTP1Response.head(status: status, fields: fields, contentLength: length, close: close), as: UTF8.self)
        }
        #expect(head(200, [("content-type", "application/json"), ("content-length", "999")], 2)
                == "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n")
        #expect(head(200, [], nil) == "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
        #expect(head(101, [("upgrade", "websocket")], nil) == "HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\n\r\n")
        #expect(head(431, [], 0, close: true) == "HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
        #expect(HTTP1Response.reasonPhrase(599) == "Status")
    }
}
