import Foundation
import Synchronization
import SoulfraBroker
import SoulfraConfig
import SoulfraControl
import SoulfraDocker
import SoulfraKeys
import SoulfraGateway
import SoulfraServer
import SoulfraVaultStore

/// The keys and tokens the loops use come from two places: the config file (development keys, peer tokens;
/// reloaded when it changes) and the control plane (worlds' instance tokens and keys). Either changing
/// installs the merged tables on every loop.
final class AccessSources: Sendable {
    private let state: Mutex<(config: ServerConfig, control: ControlTables, server: BrokerServer?, panel: Set<String>)>

    init(config: ServerConfig) { state = Mutex((config, ControlTables(), nil, [])) }

    /// Starts installing on `server`'s loops. The admin listener's own origins (the control panel) may call
    /// every world from a browser.
    func attach(_ server: BrokerServer) {
        state.withLock { s in
            s.server = server
            if server.adminPort != 0 {
                let host = hostOf(s.config.adminTCP)
                s.panel = ["http://\(host):\(server.adminPort)", "http://localhost:\(server.adminPort)", "http://127.0.0.1:\(server.adminPort)"]
            }
        }
        install()
    }

    func set(config: ServerConfig) {
        state.withLock { $0.config = config }
        install()
    }

    func set(control: ControlTables) {
        state.withLock { $0.control = control }
        install()
    }

    private func install() {
        // Built and posted under the lock, so two changes racing cannot install their tables out of order.
        // A world the control plane runs takes its instance token from there.
        state.withLock { s in
            guard let server = s.server else { return }
            let access = AccessTable(keys: s.config.keys + s.control.quotas,
                                     instanceTokens: s.config.instanceTokens.merging(s.control.instanceTokens) { _, control in control },
                                     runtimeToken: s.config.runtimeToken, vaultToken: s.config.vaultToken, gatewayToken: s.config.gatewayToken)
            server.install(access: access, keys: KeyTable(s.config.gatewayKeys + s.control.gatewayKeys, budgets: s.control.budgets))
            server.install(cors: CORSPolicy(origins: s.control.origins.mapValues(Set.init), everyWorld: s.panel))
        }
    }
}

extension Daemon {
    /// The driver `control.driver` asks for: docker when an engine answers (auto) or always (docker, which
    /// fails clearly without one), else process. The world images are built here when missing or stale.
    func makeDriver(executable: String) throws -> InstanceDriver {
        let instances = ControlService.instanceDirectory(config.controlDirectory)
        let process = { () throws -> InstanceDriver in try ProcessDriver(directory: instances, executable: executable) }
        guard config.controlDriver != "process" else { return try process() }
        let client = DockerClient()
        guard client.ping() else {
            if config.controlDriver == "docker" {
                fail("soulfra: control.driver is docker, but no docker engine answers at \(client.socketPath): start dockerd, or use the process driver", code: 69)
            }
            logLine("control plane: no docker engine at \(client.socketPath): instances run as local processes")
            return try process()
        }
        guard !config.brokerUnixPath.isEmpty, Self.directoryHoldsOnlySockets(config.brokerUnixPath) else {
            let why = "the docker driver mounts the broker socket's directory into containers: put listen.broker_unix_path in a directory of its own (soulfra init does)"
            if config.controlDriver == "docker" { fail("soulfra: \(why)", code: 78) }
            logLine("control plane: \(why); instances run as local processes")
            return try process()
        }
        do {
            let built = try WorldImages(client: client, executable: executable).ensure()
            if !built.isEmpty { logLine("control plane: built \(built.joined(separator: ", "))") }
        } catch {
            if config.controlDriver == "docker" { fail("soulfra: cannot build the world images: \(error)", code: 69) }
            logLine("control plane: cannot build the world images (\(error)): instances run as local processes")
            return try process()
        }
        let id = sha256(Array(config.controlDirectory.utf8)).prefix(6).map { String(format: "%02x", $0) }.joined()
        return try DockerDriver(client: client, directory: instances, brokerSocket: config.brokerUnixPath, daemonID: id)
    }

    /// Whether everything beside the socket in its directory is a socket (nothing private gets mounted).
    static func directoryHoldsOnlySockets(_ socket: String) -> Bool {
        let dir = URL(fileURLWithPath: socket).deletingLastPathComponent().path
        guard dir != "/" else { return false }
        for name in (try? FileManager.default.contentsOfDirectory(atPath: dir)) ?? [] {
            var st = stat()
            guard lstat(dir + "/" + name, &st) == 0, (st.st_mode & S_IFMT) == S_IFSOCK else { return false }
        }
        return true
    }
}

/// The control plane's admin API on the admin listener: calls go to the control queue, answers come back as
/// JSON, follows as server-sent events.
struct ControlAdmin: AdminExtension {
    let service: ControlService

    var routes: [(method: String, pattern: String)] { ControlService.routes }

    var metricsText: String { service.metricsText.withLock { $0 } }

    func handle(_ call: AdminCall, route: Int, replier: AdminReplier) {
        let request = ControlRequest(method: call.method, parameters: call.parameters, query: call.queryItems, body: call.body,
                                     wantsEvents: call.accept.contains("text/event-stream"))
        service.handle(request, route: route) { reply in
            switch reply {
            case .json(let status, let body):
                replier.send(.response(status: status, contentType: "application/json", body: Array(body.utf8)))
            case .streamHead: replier.send(.streamHead(status: 200, contentType: "text/event-stream"))
            case .event(let data): replier.send(.chunk(Array("data: \(data)\n\n".utf8)))
            case .end: replier.send(.end)
            }
        }
    }
}

extension Daemon {
    /// The control plane for this daemon's settings (nil: `control.directory` is ""). A problem exits with
    /// what to do.
    func makeControl(sources: AccessSources) -> ControlService? {
        guard !config.controlDirectory.isEmpty else { return nil }
        let executable = (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")) ?? CommandLine.arguments[0]
        let broker: String
        if !config.brokerUnixPath.isEmpty {
            broker = config.brokerUnixPath
        } else if !config.brokerTCP.isEmpty {
            broker = config.brokerTCP
        } else {
            fail("soulfra: the control plane needs a broker listener for its instances (listen.broker_unix_path or listen.broker_tcp)", code: 78)
        }
        var settings = ControlService.Settings(directory: config.controlDirectory, templatesDirectory: config.templatesDirectory,
                                               executable: executable, brokerAddress: broker, gatewayURL: "")
        settings.stopGraceMilliseconds = Int(config.broker.shutdownDrainMilliseconds) + 2_000
        settings.pricing = config.pricing
        settings.perKeyMetrics = config.metricsPerKeyLabels
        do {
            let driver = try makeDriver(executable: executable)
            let service = try ControlService(settings: settings, driver: driver, publish: { sources.set(control: $0) }, log: { logLine($0) })
            if !config.vaultDirectory.isEmpty && !config.vaultKeyDirectory.isEmpty {
                let keys = config.vaultKeyDirectory, vaults = config.vaultDirectory
                service.prepareEncryption = { world in
                    // A vault kept from an earlier world of the name, written in the clear, stays that way while
                    // it is open: such a deploy is refused rather than reported encrypted.
                    if access(vaults + "/" + world, F_OK) == 0 && access(keys + "/" + world + ".key", F_OK) != 0 {
                        throw ControlError.exists("an unencrypted vault kept from an earlier world \(world) (shutdown \(world) --purge removes it, or choose another name)")
                    }
                    try VaultKeys.prepare(world: world, keyDirectory: keys)
                }
            }
            return service
        } catch {
            fail("soulfra: cannot start the control plane in \(config.controlDirectory): \(error)", code: 73)  // EX_CANTCREAT
        }
    }
}
