import Testing
import SoulfraWorld

@Suite("World rules by template (pure)")
struct WorldRulesTests {
    @Test("kids: blocked words (whole words, any case) and phone numbers are refused; agents' blocked words are masked")
    func kids() {
        let r = WorldRules.forTemplate("kids")
        #expect(r.refuses("Where can I buy a GUN?") == "blocked word \"gun\"")
        #expect(r.refuses("my number is 555 123 4567")?.contains("phone number") == true)
        #expect(r.refuses("call (555) 123.4567 now")?.contains("phone number") == true, "punctuation does not hide a number")
        #expect(r.refuses("tell me about the begun race of shotguns") == nil, "only whole words count")
        #expect(r.refuses("I have 3 cats and 12 fish") == nil)
        #expect(r.refuses("my birthday is 12/25/2013 at 10:30") == nil, "dates and times are not phone numbers")
        #expect(r.masked("that is stupid, really") == ("that is ******, really", true))
        #expect(r.masked("Mars is red") == ("Mars is red", false))
        #expect(r.trustScore && !r.countsTantrums)
    }

    @Test("executive: tantrums are shouting or !!!; other templates add no rules")
    func executive() {
        let r = WorldRules.forTemplate("executive")
        #expect(r.isTantrum("WHY IS THIS LATE AGAIN"))
        #expect(r.isTantrum("fine!!!"))
        #expect(!r.isTantrum("Please send the Q3 report. Thanks!"))
        #expect(!r.isTantrum("OK"), "too short to be shouting")
        #expect(r.refuses("kill the project") == nil, "executive worlds do not moderate")
        for kind in ["sports", "custom"] {
            let plain = WorldRules.forTemplate(kind)
            #expect(plain.refuses("gun") == nil && !plain.isTantrum("NO!!!") && !plain.trustScore)
        }
    }
}
