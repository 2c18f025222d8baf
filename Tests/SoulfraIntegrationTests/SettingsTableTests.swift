import SoulfraConfig
import Foundation
import Testing
import SoulfraBroker
import SoulfraGateway
import SoulfraLoop
import SoulfraServer
import SoulfraLimits

@Suite("Config: one table per section")
struct SettingsTableTests {
    static let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()

    /// The numeric settings a table lists, with their values in `limits`.
    func values<T: SettingsTable>(_ limits: T) -> [String: Int] {
        var out: [String: Int] = [:]
        for s in T.settings {
            switch s.place {
            case .uint32(let p, _): out[s.key] = Int(limits[keyPath: p])
            case .int(let p, _): out[s.key] = limits[keyPath: p]
            }
        }
        return out
    }

    @Test("config/soulfra.json lists every numeric setting of every table, at its built-in default")
    func embeddedDefaults() throws {
        let data = try Data(contentsOf: Self.root.appendingPathComponent("config/soulfra.json"))
        let json = try #require(try JSONSerialization.jsonObject(with: data) as? [String: Any])
        for (section, defaults) in [("gateway", values(GatewayLimits())), ("loop", values(LoopLimits())), ("broker", values(BrokerLimits()))] {
            let written = try #require(json[section] as? [String: Any], "no \(section) section")
            for (key, value) in defaults {
                #expect((written[key] as? NSNumber)?.intValue == value, "\(section).\(key): the file says \(written[key] ?? "nothing"), the default is \(value)")
            }
        }
    }

    @Test("defaults pass their own tables; a value out of range is named with its section, range and note")
    func ranges() throws {
        try GatewayLimits().validate()
        try LoopLimits().validate()
        try BrokerLimits().validate()
        var c = ServerConfig()
        c.gateway.requestTimeoutMilliseconds = 50
        do { try c.validate(); Issue.record("accepted") } catch {
            #expect(error.key == "gateway.request_timeout_milliseconds")
            #expect(error.message.contains("0 (off)"))
        }
        c = ServerConfig()
        c.gateway.maxBodyBytes = 10
        do { try c.validate(); Issue.record("accepted") } catch {
            #expect(error.key == "gateway.max_body_bytes" && error.message == "must be between 1024 and 268435456, got 10")
        }
        c = ServerConfig()
        c.loop.ringEntries = 100
        do { try c.validate(); Issue.record("accepted") } catch {
            #expect(error.key == "loop.ring_entries" && error.message.contains("power of two"))
        }
    }
}
