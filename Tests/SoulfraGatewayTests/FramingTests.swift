import SoulfraLimits
import Testing
@testable import SoulfraGateway

@Suite("Gateway: reply framing and per-address budgets")
struct FramingTests {
    /// The SSE bytes for `parts` of one message, framed part by part.
    func sse(_ parts: [String]) -> String {
        var out: [UInt8] = []
        var lastByte: UInt8 = 0
        for (i, p) in parts.enumerated() {
            Array(p.utf8).withUnsafeBytes {
                Framing.ssePart($0, first: i == 0, last: i == parts.count - 1, lastByte: &lastByte, into: &out)
            }
        }
        return String(decoding: out, as: UTF8.self)
    }

    @Test("LF, CR and CRLF each start a new data: line, so a payload cannot inject an SSE field")
    func sseLineBreaks() {
        #expect(sse(["a\nb"]) == "data: a\ndata: b\n\n")
        #expect(sse(["a\rb"]) == "data: a\ndata: b\n\n")
        #expect(sse(["a\r\nb"]) == "data: a\ndata: b\n\n")
        #expect(sse(["a\r\revent: x\nid: 9"]) == "data: a\ndata: \ndata: event: x\ndata: id: 9\n\n")
        #expect(sse(["end\r"]) == "data: end\ndata: \n\n")
    }

    @Test("a CRLF split between two parts is one line break; a CR then a later LF part are two")
    func sseSplitCRLF() {
        #expect(sse(["a\r", "\nb"]) == sse(["a\r\nb"]))
        #expect(sse(["a\r", "\nb"]) == "data: a\ndata: b\n\n")
        #expect(sse(["a\r", "", "x"]) == "data: a\ndata: x\n\n")
        #expect(sse(["a\r", "b", "\nc"]) == "data: a\ndata: b\ndata: c\n\n")
        // Every split of a payload frames as the whole does.
        let whole = "one\r\ntwo\rthree\nfour\r\n\r\nfive"
        let bytes = Array(whole.utf8)
        for i in 0...bytes.count {
            let a = String(decoding: bytes[..<i], as: UTF8.self), b = String(decoding: bytes[i...], as: UTF8.self)
            #expect(sse([a, b]) == sse([whole]), "split at \(i)")
        }
    }

    @Test("a message in one part frames as Framing.sse does")
    func sseWhole() {
        var out: [UInt8] = []
        Array("x\r\ny".utf8).withUnsafeBytes { Framing.sse($0, event: "token", into: &out) }
        #expect(String(decoding: out, as: UTF8.self) == "event: token\ndata: x\ndata: y\n\n")
    }

    @Test("IPv6 clients share one budget per /64; IPv4 clients are kept apart")
    func addressBudgetKeys() {
        var limits = GatewayLimits()
        limits.connectionsPerSecondPerAddress = 1
        limits.connectionBurstPerAddress = 2
        var budgets = AddressBudgets()
        func admit(_ a: ClientAddress) -> Bool { budgets.admitConnection(a, limits, now: 0) }
        let net: UInt64 = 0x2001_0db8_0000_0001
        // Two connections from one /64, under different interface identifiers, spend its budget.
        #expect(admit(ClientAddress(high: net, low: 1)))
        #expect(admit(ClientAddress(high: net, low: 0xdead_beef)))
        #expect(!admit(ClientAddress(high: net, low: 0x1234_5678_9abc)))
        // The next /64 has its own.
        #expect(admit(ClientAddress(high: net + 1, low: 1)))
        // IPv4 (mapped ::ffff:a.b.c.d) addresses are whole: 10.0.0.1 and 10.0.0.2 do not share.
        let v4: UInt64 = 0xFFFF_0000_0000
        for host: UInt64 in [0x0A00_0001, 0x0A00_0002] {
            #expect(admit(ClientAddress(high: 0, low: v4 | host)))
            #expect(admit(ClientAddress(high: 0, low: v4 | host)))
            #expect(!admit(ClientAddress(high: 0, low: v4 | host)))
        }
    }
}
