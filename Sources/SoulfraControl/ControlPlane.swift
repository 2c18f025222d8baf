/// The control plane's loop body: what the store says is wanted, what the driver sees, the reconciler's plan,
/// applied through the driver and recorded back in the store. `tick` runs on the control plane's thread
/// (every second, and after each operator change); it never runs on a data-plane loop.
public final class ControlPlane {
    public let store: ControlStore
    public let driver: InstanceDriver
    public let reconciler: Reconciler
    /// How long a stopping instance has to finish its streams before it is killed.
    public var stopGraceMilliseconds = 5_000
    /// The instance to run for a slot of a world (its `soulfra world` command line, environment and limits);
    /// nil when the world cannot be run (its template is gone), which is reported like a failed start.
    let spec: (WorldRecord, String) -> InstanceSpec?
    /// The last failure to start or stop each instance (`world/id`), for `status`.
    public private(set) var problems: [String: String] = [:]

    public init(store: ControlStore, driver: InstanceDriver, reconciler: Reconciler = Reconciler(),
                spec: @escaping (WorldRecord, String) -> InstanceSpec?) {
        self.store = store
        self.driver = driver
        self.reconciler = reconciler
        self.spec = spec
    }

    /// The instances as the last pass saw them (before it acted).
    public private(set) var lastObserved: [ObservedInstance] = []

    /// One pass: plan, apply, record. Returns what was done.
    @discardableResult
    public func tick(now: Int64) throws(ControlError) -> [Reconciler.Action] {
        let worlds = try store.worlds().filter { $0.state == "active" }
        let byName = Dictionary(uniqueKeysWithValues: worlds.map { ($0.name, $0) })
        let observed = driver.observe()
        lastObserved = observed
        let actions = reconciler.plan(desired: byName.mapValues(\.instances), observed: observed, now: now)
        for action in actions {
            switch action {
            case .start(let world, let id):
                guard let w = byName[world], let s = spec(w, id) else {
                    fail(world, id, "no instance can be made for world \(world) (its template?)", now: now)
                    continue
                }
                do {
                    let started = try driver.start(s, now: now)
                    problems[world + "/" + id] = nil
                    try store.record(instance: InstanceRecord(world: world, id: id, driver: driver.name, handle: started.handle,
                                                              state: "running", startedAt: now, seenAt: now))
                } catch let e as DriverError {
                    fail(world, id, e.message, now: now)
                } catch let e as ControlError {
                    throw e
                } catch {
                    fail(world, id, "\(error)", now: now)
                }
            case .stop(let world, let id):
                driver.requestStop(world: world, id: id, graceMilliseconds: stopGraceMilliseconds, now: now)
            case .forget(let world, let id):
                driver.forget(world: world, id: id)
                if byName[world] != nil { try store.forget(instance: id, world: world) }
            }
        }
        // What runs now, as observed, for `status` (worlds deleted took their rows with them).
        for o in driver.observe() where byName[o.world] != nil {
            let state: String = switch o.state {
            case .running: "running"
            case .exited(let code): code.map { "exited(\($0))" } ?? "exited"
            }
            try store.record(instance: InstanceRecord(world: o.world, id: o.id, driver: driver.name, handle: o.handle, state: state,
                                                      startedAt: o.startedAt, seenAt: now))
        }
        return actions
    }

    private func fail(_ world: String, _ id: String, _ message: String, now: Int64) {
        problems[world + "/" + id] = message
        reconciler.startFailed(world: world, id: id, now: now)
    }
}
