// libFuzzer target for the HTTP/1.1 request parser (compiled together with Sources/SoulfraHTTP by fuzz/run.sh).
//
// Each input is parsed whole and cut into chunks whose sizes come from the input itself; both runs must report
// the same heads, the same body bytes, the same ends and the same error. Neither may crash or hang, and
// every error must be a 4xx/5xx status.

struct Outcome: Equatable {
    var heads: [HTTPRequestHead] = []
    var body: [UInt8] = []
    var ends = 0
    var error: HTTP1Error?
}

func run(_ bytes: UnsafeRawBufferPointer, chunks: [Int]) -> Outcome {
    var p = HTTP1Parser()
    var out = Outcome()
    var offset = 0
    var i = 0
    while offset < bytes.count {
        let n = chunks.isEmpty ? bytes.count - offset : max(1, min(chunks[i % chunks.count], bytes.count - offset))
        i += 1
        let used = p.feed(UnsafeRawBufferPointer(rebasing: bytes[offset..<offset + n]), onEvent: { e in
            switch e {
            case .head(let h): out.heads.append(h)
            case .body(let b): out.body.append(contentsOf: b)
            case .end: out.ends += 1
            }
            return true
        }, onError: { out.error = $0 })
        precondition(used == n, "the parser consumed \(used) of \(n) bytes without being paused")
        offset += n
    }
    return out
}

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzHTTP1Parser(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    guard size >= 1 else { return 0 }
    let pattern = Int(data[0])
    let bytes = UnsafeRawBufferPointer(start: data + 1, count: size - 1)
    let chunks = pattern == 0 ? [1] : [pattern % 13 + 1, pattern % 7 + 1, pattern % 31 + 1]
    let whole = run(bytes, chunks: [])
    let split = run(bytes, chunks: chunks)
    precondition(whole == split, "whole and split parsing disagree")
    if let e = whole.error { precondition((400...505).contains(e.status), "status \(e.status) out of range") }
    return 0
}
