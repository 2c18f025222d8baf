// libFuzzer target for the broker frame decoder (compiled together with Sources/SoulfraWire by fuzz/run.sh).
//
// Each input is decoded twice: whole, and cut into chunks whose sizes come from the input itself. Both runs
// must agree exactly — same frames, or the same error at the same frame — and neither may crash or hang.
// Parsed control frames are re-encoded and decoded again, and must round-trip.

struct Outcome: Equatable {
    var frames: [Frame] = []
    /// Oversize DATA headers the decoder was told to drop (the broker's per-stream refusal).
    var skipped: [FrameHeader] = []
    var error: WireError?
}

func decode(_ bytes: UnsafeRawBufferPointer, chunks: [Int], maxPayload: UInt32, skipOversizeData: Bool = false) -> Outcome {
    let d = FrameDecoder(maxPayload: maxPayload)
    var out = Outcome()
    var offset = 0
    var i = 0
    let oversize: (FrameHeader) -> Bool = { h in
        guard skipOversizeData, h.type == .data && h.stream != 0 else { return false }
        out.skipped.append(h)
        return true
    }
    do {
        while offset < bytes.count {
            let n = chunks.isEmpty ? bytes.count : max(1, min(chunks[i % chunks.count], bytes.count - offset))
            i += 1
            try d.feed(UnsafeRawBufferPointer(rebasing: bytes[offset..<offset + n]), oversize: oversize) { h, p throws(WireError) in
                out.frames.append(try Frame.parse(h, p))
                return true
            }
            offset += n
        }
    } catch {
        out.error = error
    }
    return out
}

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzFrameDecoder(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    guard size >= 2 else { return 0 }
    // Byte 0 picks the payload limit, byte 1 the chunking pattern; the rest is the stream.
    let limits: [UInt32] = [16, 1_024, 4_096, 65_536]
    let maxPayload = limits[Int(data[0]) % limits.count]
    let pattern = Int(data[1])
    let bytes = UnsafeRawBufferPointer(start: data + 2, count: size - 2)
    let chunks = pattern == 0 ? [1] : [pattern % 17 + 1, pattern % 5 + 1, pattern % 29 + 1]
    let whole = decode(bytes, chunks: [], maxPayload: maxPayload)
    let split = decode(bytes, chunks: chunks, maxPayload: maxPayload)
    precondition(whole == split, "whole and split decoding disagree")
    // The same with oversize DATA dropped per stream instead of failing: still the same whatever the chunking.
    let wholeSkip = decode(bytes, chunks: [], maxPayload: maxPayload, skipOversizeData: true)
    let splitSkip = decode(bytes, chunks: chunks, maxPayload: maxPayload, skipOversizeData: true)
    precondition(wholeSkip == splitSkip, "whole and split decoding disagree when oversize DATA is dropped")
    precondition(wholeSkip.skipped.allSatisfy { $0.length > maxPayload }, "dropped a frame within the limit")
    for f in whole.frames {
        let again = FrameWriter.encode(f)
        let back = again.withUnsafeBytes { decode($0, chunks: [], maxPayload: UInt32.max) }
        precondition(back.error == nil && back.frames == [f], "re-encoded frame does not round-trip")
    }
    return 0
}
