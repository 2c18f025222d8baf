/// One numeric setting of a limits struct: its key in its config section, where it lives in the struct, and
/// the range it must be in. Each limits struct lists its own (`SettingsTable.settings`), so a key is spelled
/// once: the config loader reads it, `validate()` checks it, and the error names it. Defaults are the struct's
/// own property values; units are in the names (`_bytes`, `_milliseconds`, `_per_second`).
public struct Setting<Root>: Sendable {
    public enum Place: Sendable {
        case uint32(WritableKeyPath<Root, UInt32> & Sendable, ClosedRange<UInt32>)
        case int(WritableKeyPath<Root, Int> & Sendable, ClosedRange<Int>)
    }

    public let key: String
    public let place: Place
    /// What some values mean, said with the range when a value is refused (`0: off`).
    public let note: String

    public init(_ key: String, _ path: WritableKeyPath<Root, UInt32> & Sendable, _ range: ClosedRange<UInt32>, note: String = "") {
        self.key = key
        self.place = .uint32(path, range)
        self.note = note
    }

    public init(_ key: String, _ path: WritableKeyPath<Root, Int> & Sendable, _ range: ClosedRange<Int>, note: String = "") {
        self.key = key
        self.place = .int(path, range)
        self.note = note
    }

    /// Why `root`'s value is refused, or nil.
    public func problem(in root: Root) -> String? {
        let (value, low, high): (Int, Int, Int)
        switch place {
        case .uint32(let p, let r): (value, low, high) = (Int(root[keyPath: p]), Int(r.lowerBound), Int(r.upperBound))
        case .int(let p, let r): (value, low, high) = (root[keyPath: p], r.lowerBound, r.upperBound)
        }
        guard value < low || value > high else { return nil }
        return "must be between \(low) and \(high)\(note.isEmpty ? "" : " (\(note))"), got \(value)"
    }

    /// Sets the value from a whole number read from a config file or the environment; false if it does not fit
    /// the field's type (the range is checked by `validate`).
    public func set(_ value: UInt64, in root: inout Root) -> Bool {
        switch place {
        case .uint32(let p, _):
            guard let v = UInt32(exactly: value) else { return false }
            root[keyPath: p] = v
        case .int(let p, _):
            guard let v = Int(exactly: value) else { return false }
            root[keyPath: p] = v
        }
        return true
    }
}

/// A configuration problem: the key (dotted from the section down) and what is wrong.
public struct SettingError: Error, CustomStringConvertible, Equatable, Sendable {
    public let key: String
    public let message: String
    public init(key: String, message: String) {
        self.key = key
        self.message = message
    }
    public var description: String { "config: \(key): \(message)" }
}

/// A limits struct that lists its settings and checks itself.
public protocol SettingsTable {
    /// Its numeric settings, each with its range.
    static var settings: [Setting<Self>] { get }
    /// Checks every range, then what ranges cannot say (powers of two, one bound below another).
    func validate() throws(SettingError)
}

extension SettingsTable {
    /// The first value outside its range, as an error naming its key.
    public func checkRanges() throws(SettingError) {
        for s in Self.settings {
            if let message = s.problem(in: self) { throw SettingError(key: s.key, message: message) }
        }
    }
}
