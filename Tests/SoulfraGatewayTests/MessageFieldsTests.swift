import Testing
@testable import SoulfraGateway

@Suite("Gateway: the fields read from a message body")
struct MessageFieldsTests {
    func scan(_ s: String) -> MessageFields? { MessageFields.scan(Array(s.utf8)) }

    @Test("session and stream are read from the top level only; other values are skipped whatever they hold")
    func fields() {
        #expect(scan(#"{"text":"hi","session":"u-1","stream":true}"#) == MessageFields(session: "u-1", stream: true))
        #expect(scan(#" { "stream" : false , "session" : "a_b" } "#) == MessageFields(session: "a_b", stream: false))
        #expect(scan(#"{"nested":{"session":"no","stream":true},"list":[1,"]",{"x":"}"}],"n":-1.5e3,"b":null}"#)
                == MessageFields(session: "", stream: false))
        #expect(scan("{}") == MessageFields())
        #expect(scan(#"{"text":"a \"quoted\" \\ word","session":"s"}"#)?.session == "s")
    }

    @Test("anything but one JSON object is refused", arguments: [
        "", "[]", "\"s\"", "{", "{\"a\":}", "{\"a\":1,}", "{\"a\" 1}", "{\"a\":1} x", "{\"a\":\"unterminated}", "{\"a\":[1,2}",
    ])
    func refused(_ body: String) {
        #expect(scan(body) == nil, "\(body.debugDescription)")
    }

    @Test("a long string is skipped whole, with quotes and backslashes at every offset of the eight-byte steps")
    func longStrings() {
        for k in 0..<24 {
            let filler = String(repeating: "x", count: k) + #"\"\\"# + String(repeating: "y", count: 1_000 + k)
            let body = #"{"text":"\#(filler)","session":"s\#(k)","stream":true}"#
            #expect(scan(body) == MessageFields(session: "s\(k)", stream: true), "offset \(k)")
        }
        let big = #"{"text":""# + String(repeating: "z", count: 64 << 10) + #"","stream":true}"#
        #expect(scan(big)?.stream == true)
    }
}
