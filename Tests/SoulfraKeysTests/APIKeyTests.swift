import Testing
import SoulfraTestSupport
@testable import SoulfraKeys


@Suite("API keys")
struct APIKeyTests {
    @Test("CRC32 matches the standard check value")
    func crc() {
        #expect(CRC32.of(Array("123456789".utf8)) == 0xCBF4_3926)
        #expect(CRC32.of([UInt8]()) == 0)
    }

    @Test("generated keys have the documented shape and parse back")
    func roundTrip() throws {
        var rng = SeededRandom(seed: 42)
        for type in ["kids", "exec", "sports", "custom"] {
            let k = try #require(APIKey.generate(type: type, using: &rng))
            #expect(k.plaintext.hasPrefix("sk-slfr_\(type)_"))
            #expect(k.plaintext.count == "sk-slfr_".count + type.count + 1 + 36)
            #expect(k.plaintext.split(separator: "_").count == 3, "double-click selects it whole: no other separators")
            #expect(APIKey.parse(k.plaintext) == k)
            #expect(k.prefix.hasPrefix("sk-slfr_\(type)_") && k.prefix.hasSuffix("…"))
            #expect(APIKey.parse(k.plaintext)!.digest == k.digest)
        }
    }

    @Test("every single-character typo is caught by the checksum (seeded)")
    func typos() throws {
        var rng = SeededRandom(seed: 7)
        let k = try #require(APIKey.generate(type: "kids", using: &rng))
        let chars = Array(k.plaintext)
        let start = "sk-slfr_kids_".count
        var caught = 0, tried = 0
        for i in start..<chars.count {
            for replacement in ["0", "a", "Z", "q"] where String(chars[i]) != replacement {
                var t = chars
                t[i] = Character(replacement)
                tried += 1
                if APIKey.parse(String(t)) == nil { caught += 1 }
            }
        }
        #expect(caught == tried, "CRC32 catches every single-character substitution")
    }

    @Test("malformed keys are refused before any lookup", arguments: [
        "", "sk-slfr_", "sk-slfr_kids_", "sk-live_kids_0123456789abcdefghijABCDEFGHIJ012345",
        "sk-slfr_Kids_0123456789abcdefghijABCDEFGHIJ012345", "sk-slfr_kids-0123456789abcdefghijABCDEFGHIJ012345",
        "sk-slfr_kids_0123456789abcdefghijABCDEFGHIJ01234", "sk-slfr_kids_0123456789abcdefghijABCDEFGHI!012345",
        "sk-slfr_averyveryverylongtype_0123456789abcdefghijABCDEFGHIJ012345",
        "sk-slfr_kids_0123456789abcdefghijABCDEFGHIJ012345",  // right shape, wrong checksum
    ])
    func malformed(_ s: String) {
        #expect(APIKey.parse(s) == nil)
    }

    @Test("bad types are refused at generation")
    func badTypes() {
        var rng = SeededRandom(seed: 1)
        #expect(APIKey.generate(type: "", using: &rng) == nil)
        #expect(APIKey.generate(type: "Kids", using: &rng) == nil)
        #expect(APIKey.generate(type: "my_world", using: &rng) == nil)
    }
}
