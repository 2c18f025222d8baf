#if canImport(Glibc)
import Glibc
#endif

/// What an instance is to run: the world and instance it is, the `soulfra world` command line, its
/// environment, and the template's limits.
public struct InstanceSpec: Sendable, Equatable {
    public var world: String
    public var id: String
    public var arguments: [String]
    public var environment: [String: String]
    public var memoryBytes: UInt64
    public var cpus: Double

    /// The image a container runs (the docker driver; the process driver runs the soulfra binary).
    public var image: String
    /// A disk quota for the instance (0: none), where the driver can enforce one.
    public var storageBytes: UInt64

    public init(world: String, id: String, arguments: [String], environment: [String: String] = [:], memoryBytes: UInt64 = 0, cpus: Double = 0,
                image: String = "soulfra/base-world:latest", storageBytes: UInt64 = 0) {
        self.world = world
        self.id = id
        self.arguments = arguments
        self.environment = environment
        self.memoryBytes = memoryBytes
        self.cpus = cpus
        self.image = image
        self.storageBytes = storageBytes
    }
}

/// An instance as its driver sees it now.
public struct ObservedInstance: Sendable, Equatable {
    public enum State: Sendable, Equatable {
        case running
        /// Gone: its exit status when the driver saw it (nil when it could not: not its child any more).
        case exited(Int32?)
    }

    public var world: String
    public var id: String
    /// The driver's handle: a pid, a container id.
    public var handle: String
    public var state: State
    /// When it started, unix milliseconds.
    public var startedAt: Int64

    /// `world/id`: how drivers and the reconciler key an instance.
    public static func key(_ world: String, _ id: String) -> String { world + "/" + id }

    public init(world: String, id: String, handle: String, state: State, startedAt: Int64) {
        self.world = world
        self.id = id
        self.handle = handle
        self.state = state
        self.startedAt = startedAt
    }
}

public struct DriverError: Error, CustomStringConvertible, Equatable {
    public let message: String
    public init(_ message: String) { self.message = message }
    public var description: String { message }
}

/// How instances are run: child processes (`ProcessDriver`), containers (the docker driver), later a swarm.
/// A driver finds the instances it runs again after the daemon restarted (`observe`), so the reconciler
/// adopts them instead of starting duplicates.
public protocol InstanceDriver: AnyObject {
    /// `process`, `docker`.
    var name: String { get }
    /// Starts an instance; throws when it could not be started at all.
    func start(_ spec: InstanceSpec, now: Int64) throws(DriverError) -> ObservedInstance
    /// Stops an instance: asked to finish (SIGTERM, or the engine's stop), killed once `graceMilliseconds` are
    /// over. Nothing to do for one already gone.
    func stop(world: String, id: String, graceMilliseconds: Int) throws(DriverError)
    /// Asks an instance to stop without waiting: the first call sends it the polite signal (it drains), a call
    /// once `graceMilliseconds` have passed since then kills it. Called again on every pass until the
    /// instance is seen exited.
    func requestStop(world: String, id: String, graceMilliseconds: Int, now: Int64)
    /// Every instance this driver runs or ran and has not forgotten, as it is now.
    func observe() -> [ObservedInstance]
    /// Forgets a gone instance (its records: pid file, container).
    func forget(world: String, id: String)
    /// The template's settings this driver cannot enforce for `spec` (reported, never silently ignored).
    func unenforced(_ spec: InstanceSpec) -> [String]
    /// A reader of the CPU time used and memory held by `instances` (the running ones), keyed by `world/id`.
    /// What it needs is taken here, on the control queue; the reader may block (the engine's stats take a
    /// request per container) and runs off it.
    func usageReader(_ instances: [ObservedInstance]) -> @Sendable () -> [String: InstanceUsage]
}

/// An instance's CPU time used and memory held, as last sampled.
public struct InstanceUsage: Sendable, Equatable {
    public var cpuSeconds: Double
    public var memoryBytes: UInt64

    public init(cpuSeconds: Double, memoryBytes: UInt64) {
        self.cpuSeconds = cpuSeconds
        self.memoryBytes = memoryBytes
    }
}

/// Instances as child processes of the daemon: `soulfra world …` spawned with its output appended to
/// `<directory>/<world>/<id>.log`, and `<id>.pid` holding its pid and kernel start time — so that a daemon
/// started again (even after `kill -9`) finds the instances still running and adopts them, and a pid the
/// kernel has since given to another process is not taken for one of them.
public final class ProcessDriver: InstanceDriver {
    public let name = "process"
    public let directory: String
    public let executable: String

    public init(directory: String, executable: String) throws(DriverError) {
        self.directory = directory
        self.executable = executable
        try Self.makeDirectories(directory)
    }

    static func makeDirectories(_ path: String) throws(DriverError) {
        var p = ""
        for part in path.split(separator: "/") {
            p += "/" + part
            if mkdir(p, 0o755) != 0 && errno != EEXIST { throw DriverError("cannot make \(p): \(String(cString: strerror(errno)))") }
        }
    }

    func pidPath(_ world: String, _ id: String) -> String { "\(directory)/\(world)/\(id).pid" }
    public func logPath(world: String, id: String) -> String { "\(directory)/\(world)/\(id).log" }

    public func start(_ spec: InstanceSpec, now: Int64) throws(DriverError) -> ObservedInstance {
        try Self.makeDirectories(directory + "/" + spec.world)
        // Only what an instance needs of the daemon's environment: never its tokens or loader settings.
        var environment = ProcessEnvironment.current().filter { ProcessEnvironment.passed.contains($0.key) }
        for (k, v) in spec.environment { environment[k] = v }
        environment["SOULFRA_WORLD"] = spec.world
        environment["SOULFRA_INSTANCE"] = spec.id
        // Its own process group: the daemon's SIGINT at a terminal is not the instance's, and it is stopped
        // only by the driver (the whole group).
        let pid = try spawnLogged(executable, spec.arguments, environment: environment, logPath: logPath(world: spec.world, id: spec.id),
                                  placement: .processGroup)
        exitStatus[Self.key(spec.world, spec.id)] = nil
        // The pid file is what finds the instance again (also after the daemon crashed): written whole and
        // durably before the start counts, or the instance is stopped and the start fails.
        guard let started = Self.startTime(pid),
              Self.writeDurably("\(pid) \(started) \(now)\n", to: pidPath(spec.world, spec.id), directory: directory + "/" + spec.world) else {
            let e = errno
            kill(-pid, SIGKILL)
            var status: Int32 = 0
            waitpid(pid, &status, 0)
            throw DriverError("cannot record instance \(spec.id) of \(spec.world) in \(pidPath(spec.world, spec.id)): \(String(cString: strerror(e))); it was stopped")
        }
        return ObservedInstance(world: spec.world, id: spec.id, handle: String(pid), state: .running, startedAt: now)
    }

    public func stop(world: String, id: String, graceMilliseconds: Int) throws(DriverError) {
        guard let r = record(world, id), case .running = state(of: r) else { return }
        // The instance leads its own process group: whatever it started goes with it.
        kill(-r.pid, SIGTERM)
        var waited = 0
        while waited < graceMilliseconds {
            if case .exited = state(of: r) { return }
            usleep(10_000)
            waited += 10
        }
        kill(-r.pid, SIGKILL)
        for _ in 0..<200 {
            if case .exited = state(of: r) { return }
            usleep(5_000)
        }
        throw DriverError("instance \(id) of \(world) (pid \(r.pid)) did not exit after SIGKILL")
    }

    public func requestStop(world: String, id: String, graceMilliseconds: Int, now: Int64) {
        guard let r = record(world, id), case .running = state(of: r) else { return }
        guard let asked = stopAsked[r.key] else {
            stopAsked[r.key] = now
            kill(-r.pid, SIGTERM)
            return
        }
        if now - asked >= Int64(graceMilliseconds) { kill(-r.pid, SIGKILL) }
    }

    public func observe() -> [ObservedInstance] {
        var out: [ObservedInstance] = []
        for world in Self.list(directory) {
            for file in Self.list(directory + "/" + world) where file.hasSuffix(".pid") {
                let id = String(file.dropLast(4))
                guard let r = record(world, id) else { continue }
                out.append(ObservedInstance(world: world, id: id, handle: String(r.pid), state: state(of: r), startedAt: r.startedAt))
            }
        }
        return out.sorted { ($0.world, $0.id) < ($1.world, $1.id) }
    }

    public func forget(world: String, id: String) {
        unlink(pidPath(world, id))
        exitStatus[Self.key(world, id)] = nil
        stopAsked[Self.key(world, id)] = nil
    }

    public func unenforced(_ spec: InstanceSpec) -> [String] {
        var out: [String] = []
        if spec.memoryBytes > 0 { out.append("resources.memory: the process driver does not limit an instance's memory (the docker driver does)") }
        if spec.cpus > 0 { out.append("resources.cpu: the process driver does not limit an instance's CPU (the docker driver does)") }
        return out
    }

    /// From /proc: user and system time (fields 14 and 15 of stat, in clock ticks) and the resident set, for the
    /// pids whose kernel start time is still the instance's (a pid given to another process is not read).
    public func usageReader(_ instances: [ObservedInstance]) -> @Sendable () -> [String: InstanceUsage] {
        let running = instances.compactMap { i -> (key: String, pid: pid_t, start: UInt64)? in
            guard i.state == .running, let r = record(i.world, i.id) else { return nil }
            return (r.key, r.pid, r.kernelStart)
        }
        return {
            var out: [String: InstanceUsage] = [:]
            for r in running { out[r.key] = Self.usage(pid: r.pid, startedAt: r.start) }
            return out
        }
    }

    /// One read of stat (and statm): nil unless the pid's kernel start time (field 22) is `startedAt`.
    static func usage(pid: pid_t, startedAt: UInt64) -> InstanceUsage? {
        guard let stat = read("/proc/\(pid)/stat"), let close = stat.lastIndex(of: ")") else { return nil }
        // After the command, fields count from 3 (state): utime 14, stime 15, start time 22.
        let fields = stat[stat.index(after: close)...].split(separator: " ")
        guard fields.count > 19, UInt64(fields[19]) == startedAt, let user = Double(fields[11]), let system = Double(fields[12]),
              let statm = read("/proc/\(pid)/statm") else { return nil }
        let pages = statm.split(separator: " ")
        guard pages.count > 1, let rss = UInt64(pages[1]) else { return nil }
        let ticks = Double(sysconf(Int32(_SC_CLK_TCK)))
        return InstanceUsage(cpuSeconds: (user + system) / ticks, memoryBytes: rss * UInt64(sysconf(Int32(_SC_PAGESIZE))))
    }

    // MARK: - Records

    struct Record {
        let pid: pid_t
        let kernelStart: UInt64
        let startedAt: Int64
        let key: String
    }

    /// Exit statuses reaped from our own children, by world/id.
    private var exitStatus: [String: Int32] = [:]
    /// When each instance being stopped was asked to (`requestStop`), by world/id.
    private var stopAsked: [String: Int64] = [:]

    static func key(_ world: String, _ id: String) -> String { world + "/" + id }

    func record(_ world: String, _ id: String) -> Record? {
        guard let text = Self.read(pidPath(world, id)) else { return nil }
        let parts = text.split(whereSeparator: { $0 == " " || $0 == "\n" })
        guard parts.count >= 3, let pid = pid_t(parts[0]), let start = UInt64(parts[1]), let at = Int64(parts[2]) else { return nil }
        return Record(pid: pid, kernelStart: start, startedAt: at, key: Self.key(world, id))
    }

    /// Running when a process with the pid and the same kernel start time exists (and is not a zombie we
    /// have just reaped); a child of ours that exited is reaped here and its status kept.
    func state(of r: Record) -> ObservedInstance.State {
        if let code = exitStatus[r.key] { return .exited(code) }
        // The pid is this instance only while its start time matches (a zombie keeps it until reaped): only
        // then may it be reaped here, or another child's status would be taken for this one.
        guard let now = Self.startTime(r.pid), now == r.kernelStart else { return .exited(nil) }
        guard Self.isZombie(r.pid) else { return .running }
        var status: Int32 = 0
        guard waitpid(r.pid, &status, WNOHANG) == r.pid else { return .exited(nil) }  // not our child
        let code: Int32 = (status & 0x7F) == 0 ? (status >> 8) & 0xFF : 128 + (status & 0x7F)
        exitStatus[r.key] = code
        return .exited(code)
    }

    /// Writes `text` to `path` so that a crash leaves the old file or the whole new one.
    static func writeDurably(_ text: String, to path: String, directory: String) -> Bool {
        let tmp = path + ".new"
        let fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
        guard fd >= 0 else { return false }
        let bytes = Array(text.utf8)
        let written = bytes.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
        let synced = fsync(fd) == 0
        close(fd)
        guard written == bytes.count, synced, rename(tmp, path) == 0 else {
            unlink(tmp)
            return false
        }
        let d = open(directory, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        if d >= 0 {
            fsync(d)
            close(d)
        }
        return true
    }

    /// Field 22 of /proc/<pid>/stat: when the process started, in clock ticks since boot.
    static func startTime(_ pid: pid_t) -> UInt64? {
        guard let stat = read("/proc/\(pid)/stat"), let close = stat.lastIndex(of: ")") else { return nil }
        let fields = stat[stat.index(after: close)...].split(separator: " ")
        // After the command: state is field 3, start time field 22.
        guard fields.count > 19 else { return nil }
        return UInt64(fields[19])
    }

    static func isZombie(_ pid: pid_t) -> Bool {
        guard let stat = read("/proc/\(pid)/stat"), let close = stat.lastIndex(of: ")") else { return false }
        return stat[stat.index(after: close)...].split(separator: " ").first == "Z"
    }

    static func read(_ path: String) -> String? {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return nil }
        defer { close(fd) }
        var buf = [UInt8](repeating: 0, count: 4_096)
        let n = buf.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress, $0.count) }
        guard n > 0 else { return nil }
        return String(decoding: buf[..<n], as: UTF8.self)
    }

    static func list(_ path: String) -> [String] {
        guard let dir = opendir(path) else { return [] }
        defer { closedir(dir) }
        var out: [String] = []
        while let e = readdir(dir) {
            let name = withUnsafeBytes(of: e.pointee.d_name) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
            if name != "." && name != ".." { out.append(name) }
        }
        return out.sorted()
    }
}

/// The daemon's environment, to pass on to the instances it starts.
enum ProcessEnvironment {
    /// The daemon's variables an instance inherits (the rest of its environment is the spec's).
    static let passed: Set<String> = ["PATH", "HOME", "LANG", "LC_ALL", "TZ", "TMPDIR"]

    static func current() -> [String: String] {
        var out: [String: String] = [:]
        var p = environ
        while let entry = p.pointee {
            let s = String(cString: entry)
            if let eq = s.firstIndex(of: "=") { out[String(s[..<eq])] = String(s[s.index(after: eq)...]) }
            p += 1
        }
        return out
    }
}

/// Calls `body` with a NULL-terminated C array of `strings`.
func withCStrings<R>(_ strings: [String], _ body: ([UnsafeMutablePointer<CChar>?]) -> R) -> R {
    var pointers: [UnsafeMutablePointer<CChar>?] = strings.map { strdup($0) }
    pointers.append(nil)
    defer { for p in pointers { free(p) } }
    return body(pointers)
}

/// Starts `executable` in a session of its own (it outlives the caller and its terminal), stdin from
/// /dev/null and output appended to `logPath`, with the caller's environment; returns its pid.
public func spawnDetached(_ executable: String, _ arguments: [String], logPath: String) throws(DriverError) -> pid_t {
    try spawnLogged(executable, arguments, environment: ProcessEnvironment.current(), logPath: logPath, placement: .session)
}

/// Where a child stands: in a process group of its own (an instance), or a session of its own (the daemon).
enum SpawnPlacement { case processGroup, session }

/// posix_spawn with stdin from /dev/null, stdout and stderr appended to `logPath`, no other descriptor of the
/// caller's (one opened without close-on-exec — a parent's exit-watch socket, a test's pipe — would otherwise
/// live on in the child), default signal dispositions and nothing blocked.
func spawnLogged(_ executable: String, _ arguments: [String], environment: [String: String], logPath: String,
                 placement: SpawnPlacement) throws(DriverError) -> pid_t {
    let log = open(logPath, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0o644)
    guard log >= 0 else { throw DriverError("cannot open \(logPath): \(String(cString: strerror(errno)))") }
    defer { close(log) }
    let devNull = open("/dev/null", O_RDONLY | O_CLOEXEC)
    defer { if devNull >= 0 { close(devNull) } }
    var actions = posix_spawn_file_actions_t()
    posix_spawn_file_actions_init(&actions)
    defer { posix_spawn_file_actions_destroy(&actions) }
    posix_spawn_file_actions_adddup2(&actions, devNull, 0)
    posix_spawn_file_actions_adddup2(&actions, log, 1)
    posix_spawn_file_actions_adddup2(&actions, log, 2)
    closeFrom3(&actions)
    var attributes = posix_spawnattr_t()
    posix_spawnattr_init(&attributes)
    defer { posix_spawnattr_destroy(&attributes) }
    var defaults = sigset_t()
    sigfillset(&defaults)
    posix_spawnattr_setsigdefault(&attributes, &defaults)
    var unblocked = sigset_t()
    sigemptyset(&unblocked)
    posix_spawnattr_setsigmask(&attributes, &unblocked)
    var flags = POSIX_SPAWN_SETSIGDEF | POSIX_SPAWN_SETSIGMASK
    switch placement {
    case .processGroup:
        posix_spawnattr_setpgroup(&attributes, 0)
        flags |= POSIX_SPAWN_SETPGROUP
    case .session:
        flags |= 0x80  // POSIX_SPAWN_SETSID (glibc ≥ 2.26)
    }
    posix_spawnattr_setflags(&attributes, Int16(flags))
    let envp = environment.map { "\($0.key)=\($0.value)" }.sorted()
    var pid: pid_t = 0
    let rc = withCStrings([executable] + arguments) { a in withCStrings(envp) { e in posix_spawn(&pid, executable, &actions, &attributes, a, e) } }
    guard rc == 0, pid > 0 else { throw DriverError("cannot start \(executable): \(String(cString: strerror(rc)))") }
    return pid
}

/// `posix_spawn_file_actions_addclosefrom_np(actions, 3)` (glibc ≥ 2.34; Swift's Glibc module does not
/// declare it, so it is found by name): the child keeps only descriptors 0–2.
func closeFrom3(_ actions: inout posix_spawn_file_actions_t) {
    typealias AddCloseFrom = @convention(c) (UnsafeMutablePointer<posix_spawn_file_actions_t>, Int32) -> Int32
    guard let symbol = dlsym(UnsafeMutableRawPointer(bitPattern: 0), "posix_spawn_file_actions_addclosefrom_np") else { return }
    _ = unsafeBitCast(symbol, to: AddCloseFrom.self)(&actions, 3)
}
