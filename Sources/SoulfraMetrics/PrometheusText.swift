/// Builds the Prometheus text exposition format (version 0.0.4): each family's `# HELP` and `# TYPE`, then
/// its samples, every name under one prefix (`soulfra_gateway`, `soulfra_broker`, …). Label values are
/// escaped as the format requires. The one writer every `/metrics` section uses.
public struct PrometheusText {
    public enum Kind: String, Sendable {
        case counter, gauge, histogram, summary
    }

    public let prefix: String
    public private(set) var text = ""

    public init(prefix: String) { self.prefix = prefix }

    /// Opens a family: its help line and type.
    public mutating func family(_ name: String, _ kind: Kind, _ help: String) {
        text += "# HELP \(prefix)_\(name) \(help)\n# TYPE \(prefix)_\(name) \(kind.rawValue)\n"
    }

    /// One sample of the family opened last (or of one of its series, such as `_bucket` or `_sum`).
    public mutating func sample(_ name: String, _ labels: KeyValuePairs<String, String>, _ value: some BinaryInteger) {
        line(name, labels, String(value))
    }

    public mutating func sample(_ name: String, _ value: some BinaryInteger) { line(name, [:], String(value)) }

    public mutating func sample(_ name: String, _ labels: KeyValuePairs<String, String>, _ value: Double) {
        line(name, labels, value.isInfinite ? (value > 0 ? "+Inf" : "-Inf") : String(value))
    }

    public mutating func sample(_ name: String, _ value: Double) { sample(name, [:], value) }

    /// A family with a single unlabelled sample.
    public mutating func single(_ name: String, _ kind: Kind, _ help: String, _ value: some BinaryInteger) {
        family(name, kind, help)
        sample(name, value)
    }

    mutating func line(_ name: String, _ labels: KeyValuePairs<String, String>, _ value: String) {
        text += prefix
        text += "_"
        text += name
        if !labels.isEmpty {
            text += "{"
            for (i, (k, v)) in labels.enumerated() {
                if i > 0 { text += "," }
                text += k
                text += "=\""
                text += Self.escape(v)
                text += "\""
            }
            text += "}"
        }
        text += " "
        text += value
        text += "\n"
    }

    /// A label value with `\`, `"` and newlines escaped.
    static func escape(_ v: String) -> String {
        guard v.utf8.contains(where: { $0 == 0x5C || $0 == 0x22 || $0 == 0x0A }) else { return v }
        var out = ""
        for c in v {
            switch c {
            case "\\": out += "\\\\"
            case "\"": out += "\\\""
            case "\n": out += "\\n"
            default: out.append(c)
            }
        }
        return out
    }
}
