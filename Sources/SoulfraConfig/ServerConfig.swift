import Foundation
import SoulfraKeys
import SoulfraLimits
import SoulfraNet

/// The daemon's configuration: defaults, then `config/soulfra.json` (or `--config`), then environment
/// variables, then flags. Every key carries its unit in its name; `validate()` names the key on error.
public struct ServerConfig: Sendable, Equatable {
    /// Unix socket for local instances ("" disables it).
    public var brokerUnixPath = "/tmp/soulfra/broker.sock"
    /// TCP listener for remote peers, "host:port" ("" disables it). Loopback by default.
    public var brokerTCP = "127.0.0.1:7400"
    /// The admin listener (`/healthz`, `/readyz`, `/metrics`), "host:port" ("" disables it). Loopback by default.
    public var adminTCP = "127.0.0.1:7401"
    /// Bearer token for `/metrics` ("" closes `/metrics`; the health endpoints need none).
    public var adminToken = ""
    public var loop = LoopLimits()
    /// Broker loops (threads with their own ring); 0: one per online CPU.
    public var loopCount = 0
    public var broker = BrokerLimits()
    public var balancer = BalancerPolicy.leastOutstanding
    /// Balancer per world, overriding `balancer` (`broker.balancer_by_world`).
    public var balancerByWorld: [String: BalancerPolicy] = [:]
    /// Print a one-line broker summary to stderr at this interval (0: never).
    public var statsIntervalMilliseconds: UInt32 = 0
    public var runtimeToken = ""
    public var vaultToken = ""
    public var gatewayToken = ""
    public var instanceTokens: [String: String] = [:]
    public var keys: [KeyQuota] = []
    /// Keys apps present at the gateway (those entries of `keys` with a `key` or `sha256`).
    public var gatewayKeys: [KeyRecord] = []
    /// A JSON file (`{"keys": [...]}`) whose keys replace `keys`; the daemon re-reads it when it changes.
    public var keysFile = ""
    /// The gateway's cleartext listener (HTTP/1.1 and h2c), "host:port" ("" disables it).
    public var gatewayTCP = "127.0.0.1:8080"
    /// The gateway's TLS listener (ALPN h2, http/1.1), "host:port" ("" disables it).
    public var gatewayTLS = "127.0.0.1:8443"
    /// PEM certificate chain and key for the TLS listener; both empty: a self-signed development
    /// certificate is generated in `tlsSelfSignedDirectory`.
    public var tlsCertificatePath = ""
    public var tlsKeyPath = ""
    public var tlsSelfSignedDirectory = "/tmp/soulfra/tls"
    public var gateway = GatewayLimits()
    /// The vault's data directory (one directory per world under it); "" runs no vault in this process.
    public var vaultDirectory = "/tmp/soulfra/vault"
    public var vault = VaultLimits()
    /// Worlds whose vault is encrypted at rest (AES-256-GCM, a key per world in `vaultKeyDirectory`, which must
    /// be outside `vaultDirectory`). The worlds layer fills it from templates (PRIVACY_MODE=maximum,
    /// SESSION_ENCRYPTION=enabled).
    public var vaultEncryptedWorlds: [String] = []
    public var vaultKeyDirectory = "/tmp/soulfra/vault-keys"
    /// Runtime worker threads in the daemon (0: none; run `soulfra runtime` instead), and their profile.
    public var runtimeWorkers = 2
    public var runtimeProfile = "balanced"
    /// The runtime's `openai` backend: an OpenAI-compatible endpoint ("" base URL: builtin only), its key and model.
    public var openAIBaseURL = ""
    public var openAIKey = ""
    public var openAIModel = "gpt-4o-mini"

    /// The control plane's directory (control.db, instances' pid and log files); "" runs no control plane (the
    /// worlds then come from the config file's keys and tokens alone).
    public var controlDirectory = "/tmp/soulfra/control"
    /// Which driver runs instances: auto (docker when an engine answers, else process), process or docker.
    public var controlDriver = "auto"
    /// The world templates deploy chooses from (`<type>.json`).
    public var templatesDirectory = "config/templates"
    /// The price table cost is figured from (`pricing`).
    public var pricing = Pricing()
    /// `/metrics` has series per key (`soulfra_key_*{world, key}`, the key's prefix) only when asked: keys are
    /// many and each is a series of its own.
    public var metricsPerKeyLabels = false

    public init() {}

    /// A configuration problem: the key (dotted path) and what is wrong.
    public typealias Invalid = SettingError

    /// These settings with keys and tokens blanked: what a reload cannot change.
    /// The `openai` backend's settings, if one is configured.
    public var openAISettings: (baseURL: String, key: String, model: String)? {
        openAIBaseURL.isEmpty ? nil : (openAIBaseURL, openAIKey, openAIModel)
    }

    public var withoutAccess: ServerConfig {
        var c = self
        c.keys = []
        c.gatewayKeys = []
        c.instanceTokens = [:]
        c.runtimeToken = ""
        c.vaultToken = ""
        c.gatewayToken = ""
        c.adminToken = ""
        c.openAIKey = ""
        return c
    }

    /// The listeners to bind.
    public func listenAddresses() throws(Invalid) -> [ListenAddress] {
        var out: [ListenAddress] = []
        if !brokerUnixPath.isEmpty { out.append(.unix(path: brokerUnixPath)) }
        if !brokerTCP.isEmpty { out.append(try Self.parseHostPort(brokerTCP, key: "listen.broker_tcp")) }
        return out
    }

    /// Parses "host:port" or "[ipv6]:port" for the config key `key`.
    public static func parseHostPort(_ s: String, key: String) throws(Invalid) -> ListenAddress {
        var host: Substring, port: Substring
        if s.hasPrefix("[") {
            guard let close = s.firstIndex(of: "]"), s[s.index(after: close)...].hasPrefix(":") else {
                throw Invalid(key: key, message: "expected [ipv6]:port, got \"\(s)\"")
            }
            host = s[s.index(after: s.startIndex)..<close]
            port = s[s.index(close, offsetBy: 2)...]
        } else {
            guard let colon = s.lastIndex(of: ":") else { throw Invalid(key: key, message: "expected host:port, got \"\(s)\"") }
            host = s[..<colon]
            port = s[s.index(after: colon)...]
        }
        guard let p = UInt16(port) else { throw Invalid(key: key, message: "port must be 0...65535, got \"\(port)\"") }
        guard !host.isEmpty else { throw Invalid(key: key, message: "host is empty in \"\(s)\"") }
        return .tcp(host: String(host), port: p)
    }

    /// Checks every value; the first problem is thrown. Each limits struct checks its own section (ranges from
    /// its settings table, then what depends on what); what spans sections is checked here.
    public func validate() throws(Invalid) {
        func section(_ name: String, _ check: () throws(SettingError) -> Void) throws(Invalid) {
            do { try check() } catch { throw Invalid(key: "\(name).\(error.key)", message: error.message) }
        }
        try section("broker") { () throws(SettingError) in try broker.validate() }
        try section("loop") { () throws(SettingError) in try loop.validate() }
        try section("gateway") { () throws(SettingError) in try gateway.validate() }
        try section("vault") { () throws(SettingError) in try vault.validate() }
        func check(_ ok: Bool, _ key: String, _ message: String) throws(Invalid) {
            if !ok { throw Invalid(key: key, message: message) }
        }
        try check(controlDirectory.isEmpty || controlDirectory.hasPrefix("/"), "control.directory",
                  "must be an absolute path (or \"\" for no control plane), got \"\(controlDirectory)\"")
        try check(["auto", "process", "docker"].contains(controlDriver), "control.driver", "must be auto, process or docker, got \"\(controlDriver)\"")
        if !vaultDirectory.isEmpty {
            try check(vaultDirectory.hasPrefix("/"), "vault.directory", "must be an absolute path (or \"\" for no vault in this process), got \"\(vaultDirectory)\"")
            let inside = (vaultKeyDirectory + "/").hasPrefix(vaultDirectory.hasSuffix("/") ? vaultDirectory : vaultDirectory + "/")
            try check(vaultKeyDirectory.isEmpty || vaultKeyDirectory.hasPrefix("/") && !inside, "vault.key_directory",
                      "must be an absolute path outside vault.directory (keys never sit next to what they encrypt), got \"\(vaultKeyDirectory)\"")
            try check(vaultEncryptedWorlds.isEmpty || !vaultKeyDirectory.isEmpty, "vault.encrypt_worlds",
                      "needs vault.key_directory for the worlds' keys")
        }
        try check((0...64).contains(runtimeWorkers), "runtime.workers", "must be 0 (none in the daemon) to 64, got \(runtimeWorkers)")
        try check(openAIBaseURL.isEmpty || openAIBaseURL.hasPrefix("http://") || openAIBaseURL.hasPrefix("https://"),
                  "runtime.openai_base_url", "must be an http:// or https:// URL (or empty: no openai backend), got \"\(openAIBaseURL)\"")
        try check(["balanced", "enterprise"].contains(runtimeProfile), "runtime.profile", "must be balanced or enterprise, got \"\(runtimeProfile)\"")
        try check((0...256).contains(loopCount), "loop.count", "must be 0 (one per CPU) to 256, got \(loopCount)")
        try check(statsIntervalMilliseconds == 0 || statsIntervalMilliseconds >= 100,
                  "stats_interval_milliseconds", "must be 0 (off) or at least 100, got \(statsIntervalMilliseconds)")
        try check(gateway.maxLineBytes <= Int(broker.maxFrameBytes), "gateway.max_line_bytes",
                  "must be at most broker.max_frame_bytes (\(broker.maxFrameBytes)): a line travels as one frame, got \(gateway.maxLineBytes)")
        try check(!brokerUnixPath.isEmpty || !brokerTCP.isEmpty,
                  "listen", "at least one of listen.broker_unix_path and listen.broker_tcp must be set")
        if !brokerUnixPath.isEmpty {
            try check(brokerUnixPath.utf8.count < 108, "listen.broker_unix_path", "must be shorter than 108 bytes")
        }
        _ = try listenAddresses()
        var seen = Set<UInt64>()
        for (i, k) in keys.enumerated() {
            try check(k.keyID != 0, "keys[\(i)].id", "must be non-zero (0 means no key)")
            try check(seen.insert(k.keyID).inserted, "keys[\(i)].id", "duplicate key id \(k.keyID)")
            try check(!k.world.isEmpty, "keys[\(i)].world", "must name a world")
            try check(k.maxStreams >= 0, "keys[\(i)].max_streams", "must be 0 (unlimited) or positive")
        }
        for (world, token) in instanceTokens {
            try check(!world.isEmpty, "tokens.instances", "world names must not be empty")
            try check(token.utf8.count >= 16, "tokens.instances.\(world)", "must be at least 16 bytes")
        }
        if !adminTCP.isEmpty { _ = try Self.parseHostPort(adminTCP, key: "listen.admin_tcp") }
        if !gatewayTCP.isEmpty { _ = try Self.parseHostPort(gatewayTCP, key: "listen.gateway_tcp") }
        if !gatewayTLS.isEmpty { _ = try Self.parseHostPort(gatewayTLS, key: "listen.gateway_tls") }
        try check(tlsCertificatePath.isEmpty == tlsKeyPath.isEmpty, "tls",
                  "set both tls.certificate_path and tls.key_path, or neither (a development certificate is generated)")
        var digests = Set<SecretDigest>()
        for k in gatewayKeys {
            try check(digests.insert(k.digest).inserted, "keys[id \(k.id)]", "the same key secret appears twice")
        }
        for (key, token) in [("tokens.runtime", runtimeToken), ("tokens.vault", vaultToken), ("tokens.gateway", gatewayToken),
                             ("tokens.admin", adminToken)] {
            try check(token.isEmpty || token.utf8.count >= 16, key, "must be empty (kind disabled) or at least 16 bytes")
        }
    }
}

// MARK: - Loading

extension ServerConfig {
    /// Reads a JSON config file over the defaults. Unknown keys are errors (a typo must not pass silently).
    public static func load(path: String) throws(Invalid) -> ServerConfig {
        guard let data = FileManager.default.contents(atPath: path) else {
            throw Invalid(key: path, message: "cannot read the config file")
        }
        let root: Any
        do { root = try JSONSerialization.jsonObject(with: data) } catch {
            throw Invalid(key: path, message: "not valid JSON: \(error.localizedDescription)")
        }
        guard let top = root as? [String: Any] else { throw Invalid(key: path, message: "the top level must be an object") }
        var c = ServerConfig()
        try c.apply(top)
        return c
    }

    mutating func apply(_ top: [String: Any]) throws(Invalid) {
        var r = JSONReader(object: top, path: "")
        if var l = try r.object("listen") {
            brokerUnixPath = try l.string("broker_unix_path") ?? brokerUnixPath
            brokerTCP = try l.string("broker_tcp") ?? brokerTCP
            adminTCP = try l.string("admin_tcp") ?? adminTCP
            gatewayTCP = try l.string("gateway_tcp") ?? gatewayTCP
            gatewayTLS = try l.string("gateway_tls") ?? gatewayTLS
            try l.finish()
        }
        if var t = try r.object("tls") {
            tlsCertificatePath = try t.string("certificate_path") ?? tlsCertificatePath
            tlsKeyPath = try t.string("key_path") ?? tlsKeyPath
            tlsSelfSignedDirectory = try t.string("self_signed_directory") ?? tlsSelfSignedDirectory
            try t.finish()
        }
        if var g = try r.object("gateway") {
            try g.read(&gateway)
            if var byWorld = try g.object("request_timeout_by_world") {
                for world in byWorld.remainingKeys { gateway.requestTimeoutByWorld[world] = try byWorld.uint32(world) }
                try byWorld.finish()
            }
            try g.finish()
        }
        if var v = try r.object("vault") {
            try v.read(&vault)
            vaultDirectory = try v.string("directory") ?? vaultDirectory
            vaultKeyDirectory = try v.string("key_directory") ?? vaultKeyDirectory
            if let list = try v.array("encrypt_worlds") {
                vaultEncryptedWorlds = try list.enumerated().map { (i, item) throws(Invalid) in
                    guard let w = item as? String, !w.isEmpty else {
                        throw Invalid(key: "vault.encrypt_worlds[\(i)]", message: "must be a world name")
                    }
                    return w
                }
            }
            try v.finish()
        }
        if var c = try r.object("control") {
            controlDirectory = try c.string("directory") ?? controlDirectory
            controlDriver = try c.string("driver") ?? controlDriver
            templatesDirectory = try c.string("templates_directory") ?? templatesDirectory
            try c.finish()
        }
        try readControlExtras(&r)
        if var rt = try r.object("runtime") {
            runtimeWorkers = try rt.int("workers") ?? runtimeWorkers
            runtimeProfile = try rt.string("profile") ?? runtimeProfile
            openAIBaseURL = try rt.string("openai_base_url") ?? openAIBaseURL
            openAIKey = try rt.string("openai_api_key") ?? openAIKey
            openAIModel = try rt.string("openai_model") ?? openAIModel
            try rt.finish()
        }
        keysFile = try r.string("keys_file") ?? keysFile
        if var l = try r.object("loop") {
            try l.read(&loop)
            loopCount = try l.int("count") ?? loopCount
            try l.finish()
        }
        if var b = try r.object("broker") {
            try b.read(&broker)
            if let name = try b.string("balancer") {
                guard let p = BalancerPolicy(rawValue: name) else {
                    throw Invalid(key: "broker.balancer", message: "must be one of \(BalancerPolicy.allCases.map(\.rawValue).joined(separator: ", ")), got \"\(name)\"")
                }
                balancer = p
            }
            if var byWorld = try b.object("balancer_by_world") {
                for world in byWorld.remainingKeys {
                    let name = try byWorld.string(world) ?? ""
                    guard let p = BalancerPolicy(rawValue: name) else {
                        throw Invalid(key: "broker.balancer_by_world.\(world)", message: "must be one of \(BalancerPolicy.allCases.map(\.rawValue).joined(separator: ", ")), got \"\(name)\"")
                    }
                    balancerByWorld[world] = p
                }
                try byWorld.finish()
            }
            try b.finish()
        }
        statsIntervalMilliseconds = try r.uint32("stats_interval_milliseconds") ?? statsIntervalMilliseconds
        if var t = try r.object("tokens") {
            runtimeToken = try t.string("runtime") ?? runtimeToken
            vaultToken = try t.string("vault") ?? vaultToken
            gatewayToken = try t.string("gateway") ?? gatewayToken
            adminToken = try t.string("admin") ?? adminToken
            if var inst = try t.object("instances") {
                for world in inst.remainingKeys { instanceTokens[world] = try inst.string(world) }
                try inst.finish()
            }
            try t.finish()
        }
        if let list = try r.array("keys") { try applyKeys(list, path: "keys") }
        try r.finish()
    }

    /// Reads key entries: the broker's quotas, and for entries with `key` or `sha256`, the gateway's record.
    mutating func applyKeys(_ list: [Any], path: String) throws(Invalid) {
        keys = []
        gatewayKeys = []
        for (i, item) in list.enumerated() {
            let at = "\(path)[\(i)]"
            guard let obj = item as? [String: Any] else { throw Invalid(key: at, message: "must be an object") }
            var k = JSONReader(object: obj, path: at + ".")
            guard let id = try k.uint64("id") else { throw Invalid(key: at + ".id", message: "is required") }
            guard let world = try k.string("world") else { throw Invalid(key: at + ".world", message: "is required") }
            let quota = KeyQuota(
                keyID: id, world: world, maxStreams: try k.int("max_streams") ?? 0,
                framesPerSecond: try k.uint32("frames_per_second") ?? 0,
                bytesPerSecond: try k.uint32("bytes_per_second") ?? 0)
            keys.append(quota)
            let plaintext = try k.string("key")
            let sha = try k.string("sha256")
            var permissions: Permissions = [.worldAccess, .agentInteraction]
            if let names = try k.array("permissions") {
                permissions = []
                for n in names {
                    guard let name = n as? String, let p = Permissions.names.first(where: { $0.0 == name })?.1 else {
                        throw Invalid(key: at + ".permissions", message: "unknown permission \(n); known: \(Permissions.names.map(\.0).joined(separator: ", "))")
                    }
                    permissions.insert(p)
                }
            }
            let rps = try k.uint32("requests_per_second") ?? 0
            let burst = try k.uint32("burst") ?? rps
            let expires = try k.uint64("expires_at")
            let disabled = (try k.raw("disabled") as? Bool) ?? false
            try k.finish()
            var digest: SecretDigest?
            var prefix = "key \(id)"
            if let plaintext {
                guard let parsed = APIKey.parse(plaintext) else {
                    throw Invalid(key: at + ".key", message: "is not a valid key (sk-slfr_<type>_<secret><checksum>)")
                }
                digest = parsed.digest
                prefix = parsed.prefix
            } else if let sha {
                guard let d = SecretDigest(hex: sha) else { throw Invalid(key: at + ".sha256", message: "must be 64 hex digits") }
                digest = d
            }
            if let digest {
                var record = KeyRecord(id: id, digest: digest, prefix: prefix, world: world, permissions: permissions,
                                       requestsPerSecond: rps, burst: burst, expiresAt: expires, disabled: disabled)
                record.framesPerSecond = quota.framesPerSecond
                record.bytesPerSecond = quota.bytesPerSecond
                gatewayKeys.append(record)
            }
        }
    }

    /// Replaces the keys with those of `keysFile` (when set).
    public mutating func loadKeysFile() throws(Invalid) {
        guard !keysFile.isEmpty else { return }
        guard let data = FileManager.default.contents(atPath: keysFile) else {
            throw Invalid(key: "keys_file", message: "cannot read \(keysFile)")
        }
        let root: Any
        do { root = try JSONSerialization.jsonObject(with: data) } catch {
            throw Invalid(key: keysFile, message: "not valid JSON: \(error.localizedDescription)")
        }
        guard let top = root as? [String: Any] else { throw Invalid(key: keysFile, message: "the top level must be an object") }
        var r = JSONReader(object: top, path: "")
        guard let list = try r.array("keys") else { throw Invalid(key: keysFile, message: "needs a \"keys\" array") }
        try r.finish()
        try applyKeys(list, path: "\(keysFile): keys")
    }


    /// Applies `SOULFRA_*` environment variables.
    public mutating func applyEnvironment(_ env: [String: String]) throws(Invalid) {
        if let v = env["SOULFRA_BROKER_UNIX"] { brokerUnixPath = v }
        if let v = env["SOULFRA_BROKER_TCP"] { brokerTCP = v }
        if let v = env["SOULFRA_RUNTIME_TOKEN"] { runtimeToken = v }
        if let v = env["SOULFRA_VAULT_TOKEN"] { vaultToken = v }
        if let v = env["SOULFRA_GATEWAY_TOKEN"] { gatewayToken = v }
        if let v = env["SOULFRA_ADMIN_TOKEN"] { adminToken = v }
        if let v = env["SOULFRA_ADMIN_TCP"] { adminTCP = v }
        if let v = env["SOULFRA_GATEWAY_TCP"] { gatewayTCP = v }
        if let v = env["SOULFRA_GATEWAY_TLS"] { gatewayTLS = v }
        if let v = env["SOULFRA_KEYS_FILE"] { keysFile = v }
        if let v = env["SOULFRA_VAULT_DIR"] { vaultDirectory = v }
        if let v = env["SOULFRA_CONTROL_DIR"] { controlDirectory = v }
        if let v = env["SOULFRA_DRIVER"] { controlDriver = v }
        if let v = env["SOULFRA_TEMPLATES_DIR"] { templatesDirectory = v }
        if let v = env["SOULFRA_OPENAI_BASE_URL"] { openAIBaseURL = v }
        if let v = env["SOULFRA_OPENAI_API_KEY"] ?? env["OPENAI_API_KEY"] { openAIKey = v }
        if let v = env["SOULFRA_OPENAI_MODEL"] { openAIModel = v }
        if let v = env["SOULFRA_RUNTIME_WORKERS"] {
            guard let n = Int(v) else { throw Invalid(key: "SOULFRA_RUNTIME_WORKERS", message: "must be a whole number, got \"\(v)\"") }
            runtimeWorkers = n
        }
        if let v = env["SOULFRA_LOOPS"] {
            guard let n = Int(v) else { throw Invalid(key: "SOULFRA_LOOPS", message: "must be an integer, got \"\(v)\"") }
            loopCount = n
        }
        if let v = env["SOULFRA_STATS_INTERVAL_MILLISECONDS"] {
            guard let n = UInt32(v) else { throw Invalid(key: "SOULFRA_STATS_INTERVAL_MILLISECONDS", message: "must be an integer, got \"\(v)\"") }
            statsIntervalMilliseconds = n
        }
    }
}

/// Reads typed values from a JSON object and remembers which keys were used, so leftovers can be reported.
struct JSONReader {
    let object: [String: Any]
    let path: String
    var used: Set<String> = []

    init(object: [String: Any], path: String) {
        self.object = object
        self.path = path
    }

    var remainingKeys: [String] { object.keys.filter { !used.contains($0) }.sorted() }

    mutating func raw(_ key: String) -> Any? {
        used.insert(key)
        return object[key]
    }

    mutating func object(_ key: String) throws(ServerConfig.Invalid) -> JSONReader? {
        guard let v = raw(key) else { return nil }
        guard let o = v as? [String: Any] else { throw .init(key: path + key, message: "must be an object") }
        return JSONReader(object: o, path: path + key + ".")
    }

    mutating func array(_ key: String) throws(ServerConfig.Invalid) -> [Any]? {
        guard let v = raw(key) else { return nil }
        guard let a = v as? [Any] else { throw .init(key: path + key, message: "must be an array") }
        return a
    }

    mutating func string(_ key: String) throws(ServerConfig.Invalid) -> String? {
        guard let v = raw(key) else { return nil }
        guard let s = v as? String else { throw .init(key: path + key, message: "must be a string") }
        return s
    }

    mutating func integer(_ key: String, max: Double) throws(ServerConfig.Invalid) -> Double? {
        guard let v = raw(key) else { return nil }
        guard let n = v as? NSNumber else {
            throw .init(key: path + key, message: "must be a number")
        }
        let d = n.doubleValue
        guard d == d.rounded(), d >= 0, d <= max else {
            throw .init(key: path + key, message: "must be a whole number between 0 and \(UInt64(max)), got \(d)")
        }
        return d
    }

    mutating func bool(_ key: String) throws(ServerConfig.Invalid) -> Bool? {
        guard let v = raw(key) else { return nil }
        guard let n = v as? NSNumber, String(cString: n.objCType) == "c" else { throw .init(key: path + key, message: "must be true or false") }
        return n.boolValue
    }

    mutating func uint32(_ key: String) throws(ServerConfig.Invalid) -> UInt32? {
        try integer(key, max: Double(UInt32.max)).map { UInt32($0) }
    }
    mutating func int(_ key: String) throws(ServerConfig.Invalid) -> Int? {
        try integer(key, max: 9.0e15).map { Int($0) }
    }
    mutating func uint64(_ key: String) throws(ServerConfig.Invalid) -> UInt64? {
        try integer(key, max: 9.0e15).map { UInt64($0) }
    }

    func finish() throws(ServerConfig.Invalid) {
        if let extra = remainingKeys.first { throw .init(key: path + extra, message: "unknown key") }
    }

    /// Reads every setting `T` lists that this object has (ranges are `validate`'s to check).
    mutating func read<T: SettingsTable>(_ limits: inout T) throws(ServerConfig.Invalid) {
        for setting in T.settings {
            guard let v = try uint64(setting.key) else { continue }
            guard setting.set(v, in: &limits) else {
                throw .init(key: path + setting.key, message: "is too large, got \(v)")
            }
        }
    }
}
