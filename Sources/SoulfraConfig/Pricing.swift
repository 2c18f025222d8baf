import Foundation

/// What a world costs (design §6): a price table in the config's `pricing` object. Cost is reported, never
/// charged: instance-seconds by template, plus interactions and tokens.
public struct Pricing: Sendable, Equatable {
    public var currency = "USD"
    /// Per instance-second, by template type; `default` for types not named.
    public var instanceSecond: [String: Double] = ["default": 0.000_012, "kids": 0.000_012, "executive": 0.000_024,
                                                   "sports": 0.000_018, "custom": 0.000_012]
    public var interaction = 0.000_2
    public var tokenIn = 0.000_000_5
    public var tokenOut = 0.000_001_5

    public init() {}

    public func instanceSecond(template: String) -> Double {
        instanceSecond[template] ?? instanceSecond["default"] ?? 0
    }

    /// The table as JSON (`soulfra usage` and the panel show it with the figures).
    public var object: [String: Any] {
        ["currency": currency, "instance_second": instanceSecond, "interaction": interaction,
         "token_in": tokenIn, "token_out": tokenOut]
    }
}

extension JSONReader {
    /// A price: any number at least 0.
    mutating func price(_ key: String) throws(ServerConfig.Invalid) -> Double? {
        guard let v = raw(key) else { return nil }
        // A JSON boolean is an NSNumber too (type "c"); it is not a price.
        guard let n = v as? NSNumber, String(cString: n.objCType) != "c" else {
            throw .init(key: path + key, message: "must be a number")
        }
        let d = n.doubleValue
        guard d.isFinite, d >= 0 else { throw .init(key: path + key, message: "must be a price of 0 or more, got \(d)") }
        return d
    }

    /// The `pricing` object.
    mutating func read(_ p: inout Pricing) throws(ServerConfig.Invalid) {
        p.currency = try string("currency") ?? p.currency
        if var t = try object("instance_second") {
            for name in t.object.keys.sorted() { p.instanceSecond[name] = try t.price(name) }
        }
        p.interaction = try price("interaction") ?? p.interaction
        p.tokenIn = try price("token_in") ?? p.tokenIn
        p.tokenOut = try price("token_out") ?? p.tokenOut
    }
}

extension ServerConfig {
    /// The `metrics` and `pricing` objects.
    mutating func readControlExtras(_ r: inout JSONReader) throws(ServerConfig.Invalid) {
        if var m = try r.object("metrics") {
            metricsPerKeyLabels = try m.bool("per_key_labels") ?? metricsPerKeyLabels
            try m.finish()
        }
        if var p = try r.object("pricing") {
            try p.read(&pricing)
            try p.finish()
        }
    }
}
