import Foundation

/// What a world's template adds to the plain conversation: kids worlds moderate both directions and keep a
/// trust score per user; executive worlds count tantrums. Pure logic; the instance applies it.
public struct WorldRules: Sendable {
    /// Words that are not said in this world (matched whole, any case), both by users and by agents.
    public var blockedWords: Set<String> = []
    /// What an agent answers to a message it will not take up.
    public var refusal = ""
    /// Keep a trust score per user: up for a friendly message, down for a blocked one.
    public var trustScore = false
    public static let trustReward = 5
    public static let trustPenalty = -10
    /// Count tantrums (shouting: mostly capitals, or a run of exclamation marks).
    public var countsTantrums = false
    /// A room every agent reply is also published to, for all its viewers (sports: `live`).
    public var broadcastRoom: String?

    public init() {}

    /// The rules a template kind brings (`kids`, `executive`, `sports`, `custom`).
    public static func forTemplate(_ kind: String) -> WorldRules {
        var r = WorldRules()
        switch kind {
        case "kids":
            r.blockedWords = kidsBlocked
            r.refusal = "Let's keep our chat friendly and safe! I can't talk about that, but I'd love to help with something else."
            r.trustScore = true
        case "executive":
            r.countsTantrums = true
        case "sports":
            r.broadcastRoom = "live"
        default:
            break
        }
        return r
    }

    /// Kept short and plain on purpose: a world that needs more sets its own list (docs/operations.md).
    static let kidsBlocked: Set<String> = ["kill", "gun", "guns", "weapon", "drugs", "alcohol", "beer", "stupid", "idiot", "hate",
                                          "damn", "hell", "sexy", "password", "address"]

    /// Why a user's message is refused, if it is: a blocked word, or what looks like a phone number (seven
    /// digits or more: children do not share those here).
    public func refuses(_ text: String) -> String? {
        guard !blockedWords.isEmpty else { return nil }
        if let w = words(text).first(where: { blockedWords.contains($0) }) { return "blocked word \"\(w)\"" }
        // Digits count across what phone numbers are written with ("(555) 123.4567", "+1 555-123-4567");
        // anything else (a letter, "/", ":") starts the count over, so dates and times pass.
        var run = 0
        for ch in text.unicodeScalars {
            if ch.properties.numericType != nil { run += 1 } else if !" -().+".unicodeScalars.contains(ch) { run = 0 }
            if run >= 7 { return "personal information (a phone number)" }
        }
        return nil
    }

    /// An agent's token with blocked words masked, and whether any was.
    public func masked(_ token: String) -> (String, Bool) {
        guard !blockedWords.isEmpty, words(token).contains(where: blockedWords.contains) else { return (token, false) }
        var out = ""
        var word = ""
        func close() {
            out += blockedWords.contains(word.lowercased()) ? String(repeating: "*", count: word.count) : word
            word = ""
        }
        for ch in token {
            if ch.isLetter { word.append(ch) } else {
                close()
                out.append(ch)
            }
        }
        close()
        return (out, true)
    }

    /// Shouting: at least 8 letters of which 80 % are capitals, or three exclamation marks in a row.
    public func isTantrum(_ text: String) -> Bool {
        guard countsTantrums else { return false }
        let letters = text.filter(\.isLetter)
        let upper = letters.filter(\.isUppercase).count
        return (letters.count >= 8 && upper * 5 >= letters.count * 4) || text.contains("!!!")
    }

    func words(_ text: String) -> [String] {
        text.lowercased().split(whereSeparator: { !$0.isLetter }).map(String.init)
    }
}
