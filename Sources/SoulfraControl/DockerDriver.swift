import Foundation
import Synchronization
import SoulfraDocker

/// Instances as Docker containers, through the Engine API: `--network none`, the broker socket's directory
/// bind-mounted read-only, labels `soulfra.world` / `soulfra.instance` (and `soulfra.daemon`, so two daemons on
/// one engine never adopt each other's), the template's memory and CPU limits, no restart policy (the
/// reconciler restarts), read-only root, all capabilities dropped, docker-init as PID 1. Each container's
/// output is pumped from the logs API into the same per-instance files the process driver writes, so
/// `soulfra logs` reads one source.
public final class DockerDriver: InstanceDriver, @unchecked Sendable {
    public let name = "docker"
    public let client: DockerClient
    /// Where the log files go (`<directory>/<world>/<id>.log`).
    public let directory: String
    /// Which daemon's containers these are (a hash of its control directory).
    let daemonID: String
    /// The broker's unix socket on the host; its directory is mounted at /run/soulfra.
    let brokerSocket: String
    private var stopAsked: [String: Int64] = [:]
    private let pumps = Mutex<Set<String>>([])
    /// The last list the engine gave: when it does not answer, the reconciler sees that rather than nothing
    /// (which would start every instance again, deleting the ones still running).
    private var lastObserved: [ObservedInstance] = []
    /// Whether the engine's storage can enforce a size quota (xfs with project quotas); read once.
    private lazy var storageQuotas: Bool = {
        guard let info = try? client.json("GET", "/info") as? [String: Any] else { return false }
        let status = info["DriverStatus"] as? [[String]] ?? []
        return status.contains { $0.first == "Backing Filesystem" && $0.last == "xfs" }
    }()

    public init(client: DockerClient, directory: String, brokerSocket: String, daemonID: String) throws(DriverError) {
        self.client = client
        self.directory = directory
        self.brokerSocket = brokerSocket
        self.daemonID = daemonID
        try ProcessDriver.makeDirectories(directory)
    }

    /// `soulfra-<daemon>-<world>-<n>`: two daemons on one engine never touch each other's containers.
    func containerName(_ world: String, _ id: String) -> String { "soulfra-\(daemonID)-\(id)" }

    public func start(_ spec: InstanceSpec, now: Int64) throws(DriverError) -> ObservedInstance {
        let name = containerName(spec.world, spec.id)
        _ = try? client.call("DELETE", "/containers/\(name)?force=1")  // a leftover of the same slot
        var args = spec.arguments
        if let i = args.firstIndex(of: "--broker"), i + 1 < args.count {
            args[i + 1] = "/run/soulfra/" + URL(fileURLWithPath: brokerSocket).lastPathComponent
        }
        var host: [String: Any] = [
            "NetworkMode": "none", "RestartPolicy": ["Name": "no"], "ReadonlyRootfs": true, "CapDrop": ["ALL"],
            "SecurityOpt": ["no-new-privileges"], "Binds": [URL(fileURLWithPath: brokerSocket).deletingLastPathComponent().path + ":/run/soulfra:ro"],
            "LogConfig": ["Type": "json-file", "Config": ["max-size": "10m", "max-file": "3"]],
        ]
        host["PidsLimit"] = 256
        // docker-init as PID 1: it forwards SIGTERM to the instance (a PID 1 that has not yet blocked it would
        // drop it) and reaps.
        host["Init"] = true
        if spec.memoryBytes > 0 {
            host["Memory"] = spec.memoryBytes
            host["MemorySwap"] = spec.memoryBytes  // no swap beyond the limit
        }
        if spec.cpus > 0 { host["NanoCpus"] = Int64(spec.cpus * 1e9) }
        let body: [String: Any] = [
            "Image": spec.image, "Cmd": args, "Env": spec.environment.map { "\($0.key)=\($0.value)" }.sorted() + ["SOULFRA_WORLD=\(spec.world)", "SOULFRA_INSTANCE=\(spec.id)"],
            "Labels": ["soulfra.world": spec.world, "soulfra.instance": spec.id, "soulfra.daemon": daemonID],
            "HostConfig": host, "NetworkDisabled": true,
        ]
        do {
            let created = try client.json("POST", "/containers/create?name=\(name)", json: body) as? [String: Any]
            guard let id = created?["Id"] as? String else { throw DockerError(0, "the engine gave no container id") }
            try client.call("POST", "/containers/\(id)/start")
            stopAsked[ObservedInstance.key(spec.world, spec.id)] = nil
            pump(id: id, world: spec.world, instance: spec.id, since: 0)
            return ObservedInstance(world: spec.world, id: spec.id, handle: String(id.prefix(12)), state: .running, startedAt: now)
        } catch {
            _ = try? client.call("DELETE", "/containers/\(name)?force=1")
            throw DriverError("cannot start container \(name) from \(spec.image): \(error)")
        }
    }

    public func stop(world: String, id: String, graceMilliseconds: Int) throws(DriverError) {
        do {
            try client.call("POST", "/containers/\(containerName(world, id))/stop?t=\(max(1, graceMilliseconds / 1000))",
                            timeoutMilliseconds: graceMilliseconds + 10_000)
        } catch where error.status == 404 || error.status == 304 {
            return
        } catch {
            throw DriverError("cannot stop \(id): \(error)")
        }
    }

    public func requestStop(world: String, id: String, graceMilliseconds: Int, now: Int64) {
        let key = ObservedInstance.key(world, id)
        let name = containerName(world, id)
        guard let asked = stopAsked[key] else {
            stopAsked[key] = now
            _ = try? client.call("POST", "/containers/\(name)/kill?signal=SIGTERM")
            return
        }
        if now - asked >= Int64(graceMilliseconds) { _ = try? client.call("POST", "/containers/\(name)/kill?signal=SIGKILL") }
    }

    public func observe() -> [ObservedInstance] {
        let filters = #"{"label":["soulfra.daemon=\#(daemonID)"]}"#
        guard let list = try? client.json("GET", "/containers/json" + DockerClient.query([("all", "1"), ("filters", filters)]),
                                          timeoutMilliseconds: 10_000) as? [[String: Any]] else {
            return lastObserved
        }
        var out: [ObservedInstance] = []
        for c in list {
            let labels = c["Labels"] as? [String: String] ?? [:]
            guard let world = labels["soulfra.world"], let id = labels["soulfra.instance"], let cid = c["Id"] as? String else { continue }
            let created = Int64((c["Created"] as? Int) ?? 0) * 1000
            var state = ObservedInstance.State.running
            if (c["State"] as? String) != "running" {
                let inspect = try? client.json("GET", "/containers/\(cid)/json") as? [String: Any]
                let code = (inspect?["State"] as? [String: Any])?["ExitCode"] as? Int
                state = (c["State"] as? String) == "created" ? .exited(nil) : .exited(code.map { Int32($0) })
            } else {
                pump(id: cid, world: world, instance: id, since: Int(Self.modified(logPath(world: world, id: id))))
            }
            out.append(ObservedInstance(world: world, id: id, handle: String(cid.prefix(12)), state: state, startedAt: created))
        }
        lastObserved = out.sorted { ($0.world, $0.id) < ($1.world, $1.id) }
        return lastObserved
    }

    public func forget(world: String, id: String) {
        _ = try? client.call("DELETE", "/containers/\(containerName(world, id))?force=1")
        stopAsked[ObservedInstance.key(world, id)] = nil
    }

    public func unenforced(_ spec: InstanceSpec) -> [String] {
        spec.storageBytes > 0 && !storageQuotas
            ? ["resources.storage: the engine's storage (overlay2 without xfs project quotas) cannot limit a container's disk"] : []
    }

    /// The engine's one-shot stats, a request per running container (up to 3 s each).
    public func usageReader(_ instances: [ObservedInstance]) -> @Sendable () -> [String: InstanceUsage] {
        let running = instances.filter { $0.state == .running }.map { (key: ObservedInstance.key($0.world, $0.id), container: containerName($0.world, $0.id)) }
        let client = client
        return {
            var out: [String: InstanceUsage] = [:]
            for r in running {
                guard let s = try? client.json("GET", "/containers/\(r.container)/stats?stream=false&one-shot=true", timeoutMilliseconds: 3_000) as? [String: Any],
                      let cpu = ((s["cpu_stats"] as? [String: Any])?["cpu_usage"] as? [String: Any])?["total_usage"] as? Int,
                      let memory = (s["memory_stats"] as? [String: Any])?["usage"] as? Int else { continue }
                out[r.key] = InstanceUsage(cpuSeconds: Double(cpu) / 1e9, memoryBytes: UInt64(memory))
            }
            return out
        }
    }

    public func logPath(world: String, id: String) -> String { "\(directory)/\(world)/\(id).log" }

    static func modified(_ path: String) -> Int {
        var st = stat()
        return stat(path, &st) == 0 ? Int(st.st_mtim.tv_sec) : 0
    }

    /// Follows a container's output into its log file, on a thread of its own, until the container stops.
    /// `since` (unix seconds) skips what an earlier pump already wrote (after a daemon restart).
    func pump(id: String, world: String, instance: String, since: Int) {
        guard pumps.withLock({ $0.insert(id).inserted }) else { return }
        let path = logPath(world: world, id: instance)
        try? ProcessDriver.makeDirectories(directory + "/" + world)
        let client = client
        Thread { [self] in
            defer { _ = pumps.withLock { $0.remove(id) } }
            let fd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0o644)
            guard fd >= 0 else { return }
            defer { close(fd) }
            var buffer = Data()
            _ = try? client.call("GET", "/containers/\(id)/logs" + DockerClient.query([("follow", "1"), ("stdout", "1"), ("stderr", "1"), ("since", String(since))]),
                                 timeoutMilliseconds: 0) { chunk in
                buffer.append(chunk)
                for payload in demultiplexDockerLog(&buffer) {
                    _ = payload.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
                }
                return true
            }
        }.start()
    }
}
