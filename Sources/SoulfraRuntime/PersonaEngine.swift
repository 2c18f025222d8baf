/// An agent as a template describes it: who it is and what it knows.
public struct AgentPersona: Sendable, Equatable {
    public var name: String
    /// How it speaks: `cheerful`, `calm`, `curious`, `formal`, `playful` (anything else reads as `calm`).
    public var style: String
    public var greeting: String
    public var topics: [String]
    /// Facts it can tell, by keyword (matched against the words of the input, lowercased).
    public var knowledge: [String: String]

    public init(name: String, style: String = "calm", greeting: String = "", topics: [String] = [], knowledge: [String: String] = [:]) {
        self.name = name
        self.style = style
        self.greeting = greeting
        self.topics = topics
        self.knowledge = knowledge
    }
}

/// One earlier turn of the session (from the vault).
public struct Turn: Sendable, Equatable {
    public enum Role: String, Sendable { case user, agent }
    public var role: Role
    public var text: String
    public init(role: Role, text: String) {
        self.role = role
        self.text = text
    }
}

/// The builtin backend: a deterministic persona engine. The reply depends on the persona, the input and the
/// session's history — the same three always give the same words — and needs no model and no network. It
/// greets on a session's first turn, answers from the persona's knowledge when the input names a keyword,
/// warms to its topics, remembers how far the conversation has gone, and signs in its style.
public enum PersonaEngine {
    /// The reply as tokens: words with their trailing space, streamed one by one.
    public static func reply(_ p: AgentPersona, input: String, history: [Turn]) -> [String] {
        let words = input.lowercased().split { !$0.isLetter && !$0.isNumber }.map(String.init)
        var seed = fnv(p.name) ^ fnv(input) &* 31 ^ UInt64(history.count)
        func pick(_ options: [String]) -> String {
            seed = seed &* 6364136223846793005 &+ 1442695040888963407
            return options[Int((seed >> 33) % UInt64(options.count))]
        }
        var parts: [String] = []
        if !history.contains(where: { $0.role == .agent }) {
            parts.append(p.greeting.isEmpty ? "Hello, I am \(p.name)." : p.greeting)
        }
        let facts = p.knowledge.keys.sorted().filter { words.contains($0.lowercased()) }.prefix(2).map { p.knowledge[$0]! }
        let topic = p.topics.first { t in words.contains(t.lowercased()) }
        if !facts.isEmpty {
            parts.append(pick(opener(p.style)))
            parts += facts
        } else if let topic {
            parts.append(pick(topicLines(p.style)).replacingOccurrences(of: "{topic}", with: topic))
        } else if words.isEmpty {
            parts.append(pick(["I am listening.", "Say anything you like.", "What shall we talk about?"]))
        } else {
            let echo = words.prefix(4).joined(separator: " ")
            parts.append(pick(unknownLines(p.style)).replacingOccurrences(of: "{echo}", with: echo))
            if let t = p.topics.first { parts.append("I know a lot about \(t), if you like.") }
        }
        let said = history.filter { $0.role == .user }.count
        if said > 0 { parts.append("That makes \(said + 1) messages from you in this conversation.") }
        parts.append(signOff(p))
        let text = parts.joined(separator: " ")
        let split = text.split(separator: " ", omittingEmptySubsequences: true)
        return split.enumerated().map { i, w in i == split.count - 1 ? String(w) : w + " " }
    }

    static func opener(_ style: String) -> [String] {
        switch style {
        case "cheerful": ["Oh, I love this one!", "Great question!", "Ooh, here is what I know:"]
        case "formal": ["Certainly.", "Here is the relevant information.", "Allow me to explain."]
        case "playful": ["Ta-da!", "Guess what?", "Fun fact time!"]
        case "curious": ["Interesting! Here is what I know.", "Good thinking.", "Let me share something."]
        default: ["Here is what I know.", "Let me tell you.", "Good question."]
        }
    }

    static func topicLines(_ style: String) -> [String] {
        switch style {
        case "cheerful": ["Yay, {topic}! That is my favourite thing to talk about.", "I could talk about {topic} all day!"]
        case "formal": ["{topic} is a subject I can advise on.", "On {topic}, I am at your service."]
        case "playful": ["{topic}? Let's play with that idea!", "Ooh, {topic} is so much fun."]
        case "curious": ["{topic}! What would you like to discover about it?", "I wonder about {topic} too."]
        default: ["Let's talk about {topic}.", "{topic} is a fine subject."]
        }
    }

    static func unknownLines(_ style: String) -> [String] {
        switch style {
        case "cheerful": ["You said \"{echo}\" and that sounds exciting!", "Tell me more about \"{echo}\"!"]
        case "formal": ["Noted: \"{echo}\". Could you say more?", "I have recorded \"{echo}\"."]
        case "playful": ["\"{echo}\"? Silly and wonderful!", "Hmm, \"{echo}\"... tell me a story about it!"]
        case "curious": ["Why \"{echo}\"? I want to know more.", "\"{echo}\" makes me curious."]
        default: ["I hear you: \"{echo}\".", "Tell me more about \"{echo}\"."]
        }
    }

    static func signOff(_ p: AgentPersona) -> String {
        switch p.style {
        case "cheerful": "Yours, \(p.name)!"
        case "formal": "Regards, \(p.name)."
        case "playful": "Bye for now, from \(p.name)!"
        default: "— \(p.name)"
        }
    }

    static func fnv(_ s: String) -> UInt64 {
        var h: UInt64 = 0xCBF2_9CE4_8422_2325
        for b in s.utf8 { h = (h ^ UInt64(b)) &* 0x100_0000_01B3 }
        return h
    }
}
