import Foundation
import Testing
import SoulfraControl
import SoulfraServer
import SoulfraWire

@Suite("The process driver", .enabled(if: uringAvailable, "io_uring is not available here"), .serialized)
struct ProcessDriverTests {
    @Test("instances are child processes: started, seen linked to the broker, killed and seen gone, found again by a new driver (no duplicate), stopped gracefully")
    func lifecycle() throws {
        let dir = NSTemporaryDirectory() + "soulfra-driver-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try "{}".write(toFile: dir + "/empty.json", atomically: true, encoding: .utf8)
        let server = try BrokerServer.start(testConfig())
        defer { server.stop() }
        let driver = try ProcessDriver(directory: dir + "/instances", executable: soulfraBinary)
        defer { for i in driver.observe() { try? driver.stop(world: i.world, id: i.id, graceMilliseconds: 100) } }
        let spec = InstanceSpec(world: "playground", id: "playground-1",
                                arguments: ["world", "--world", "playground", "--config", dir + "/empty.json", "--broker", server.unixPath!,
                                            "--agent", "cal:cheerful"],
                                environment: ["SOULFRA_INSTANCE_TOKEN": testTokens.instance], memoryBytes: 256 << 20, cpus: 0.5)
        func linked() -> Int { server.snapshotNow()?.linksByKind[Int(PeerKind.instance.rawValue)] ?? 0 }

        let started = try driver.start(spec, now: 1_000)
        #expect(started.state == .running && Int32(started.handle)! > 0)
        for _ in 0..<3_000 where linked() < 1 { usleep(10_000) }
        #expect(linked() == 1, "the instance never attached to the broker")
        #expect(driver.observe() == [ObservedInstance(world: "playground", id: "playground-1", handle: started.handle, state: .running, startedAt: 1_000)])
        #expect(driver.unenforced(spec).count == 2, "memory and CPU limits are reported as not enforced")

        // Killed: seen gone, with the signal in its status; the broker sees the link go.
        kill(pid_t(started.handle)!, SIGKILL)
        var state = driver.observe().first?.state
        for _ in 0..<300 where state == .running {
            usleep(10_000)
            state = driver.observe().first?.state
        }
        #expect(state == .exited(128 + SIGKILL))
        for _ in 0..<500 where linked() > 0 { usleep(10_000) }
        #expect(linked() == 0)

        // Replaced, as the reconciler will: forgotten, started again.
        driver.forget(world: "playground", id: "playground-1")
        let second = try driver.start(spec, now: 2_000)
        for _ in 0..<3_000 where linked() < 1 { usleep(10_000) }
        #expect(linked() == 1 && second.handle != started.handle)

        // A daemon started again finds it running (its pid and start time match) and does not start another.
        let again = try ProcessDriver(directory: dir + "/instances", executable: soulfraBinary)
        #expect(again.observe() == [ObservedInstance(world: "playground", id: "playground-1", handle: second.handle, state: .running, startedAt: 2_000)])

        // Stopped gracefully (SIGTERM, well within the grace): gone, and the broker's link with it.
        try again.stop(world: "playground", id: "playground-1", graceMilliseconds: 5_000)
        #expect(again.observe().first?.state == .exited(0), "a graceful exit: \(again.observe())")
        for _ in 0..<500 where linked() > 0 { usleep(10_000) }
        #expect(linked() == 0)
        #expect(((try? String(contentsOfFile: driver.logPath(world: "playground", id: "playground-1"), encoding: .utf8)) ?? "").isEmpty == false,
                "the instance's output is in its log")
    }

    @Test("a pid file whose pid now belongs to another process is not taken for a running instance, nor are its CPU and memory")
    func pidReuse() throws {
        let dir = NSTemporaryDirectory() + "soulfra-driver-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let driver = try ProcessDriver(directory: dir, executable: soulfraBinary)
        try FileManager.default.createDirectory(atPath: dir + "/w", withIntermediateDirectories: true)
        // Our own pid, with a start time that is not ours: a process the kernel gave the pid to since.
        try "\(getpid()) 1 5\n".write(toFile: dir + "/w/w-1.pid", atomically: true, encoding: .utf8)
        #expect(driver.observe() == [ObservedInstance(world: "w", id: "w-1", handle: "\(getpid())", state: .exited(nil), startedAt: 5)])
        // Nor is that process's CPU and memory read as the instance's; with the pid's own start time, it is.
        let asRunning = [ObservedInstance(world: "w", id: "w-1", handle: "\(getpid())", state: .running, startedAt: 5)]
        #expect(driver.usageReader(asRunning)().isEmpty, "another process's figures")
        let stat = try String(contentsOfFile: "/proc/self/stat", encoding: .utf8)
        let ownStart = stat[stat.index(after: stat.lastIndex(of: ")")!)...].split(separator: " ")[19]
        try "\(getpid()) \(ownStart) 5\n".write(toFile: dir + "/w/w-1.pid", atomically: true, encoding: .utf8)
        let own = driver.usageReader(asRunning)()["w/w-1"]
        #expect((own?.memoryBytes ?? 0) > 1_000_000 && (own?.cpuSeconds ?? 0) > 0, "\(String(describing: own))")
        try "\(getpid()) 1 5\n".write(toFile: dir + "/w/w-1.pid", atomically: true, encoding: .utf8)
        try driver.stop(world: "w", id: "w-1", graceMilliseconds: 10)  // nothing to stop: this process is left alone
        driver.forget(world: "w", id: "w-1")
        #expect(driver.observe().isEmpty)
    }

    @Test("a stale pid file naming a pid that is now another child of ours does not take that child's exit status")
    func staleRecordTakesNoStatus() throws {
        let dir = NSTemporaryDirectory() + "soulfra-driver-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let driver = try ProcessDriver(directory: dir, executable: "/bin/sh")
        let child = try driver.start(InstanceSpec(world: "w", id: "w-2", arguments: ["-c", "exit 3"]), now: 1)
        for _ in 0..<200 where !((try? String(contentsOfFile: "/proc/\(child.handle)/stat", encoding: .utf8))?.contains(") Z ") ?? true) {
            usleep(5_000)
        }
        // w-1's record names the same pid with another start time: a process that had the pid before.
        try "\(child.handle) 1 5\n".write(toFile: dir + "/w/w-1.pid", atomically: true, encoding: .utf8)
        let seen = driver.observe()
        #expect(seen.first { $0.id == "w-1" }?.state == .exited(nil))
        #expect(seen.first { $0.id == "w-2" }?.state == .exited(3), "w-1's record took w-2's exit status: \(seen)")
    }
}

@Suite("The control plane: store, reconciler and process driver", .enabled(if: uringAvailable, "io_uring is not available here"), .serialized)
struct ControlPlaneTests {
    @Test("a world wanted in the store gets its instances on the broker; scaled down, one stops; a killed one is replaced after its backoff; a restarted control plane adopts them; a deleted world's instances go")
    func reconciles() throws {
        let dir = NSTemporaryDirectory() + "soulfra-plane-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try "{}".write(toFile: dir + "/empty.json", atomically: true, encoding: .utf8)
        let server = try BrokerServer.start(testConfig())
        defer { server.stop() }
        func linked() -> Int { server.snapshotNow()?.linksByKind[Int(PeerKind.instance.rawValue)] ?? 0 }
        let spec = { (w: WorldRecord, id: String) -> InstanceSpec? in
            InstanceSpec(world: w.name, id: id,
                         arguments: ["world", "--world", w.name, "--config", dir + "/empty.json", "--broker", server.unixPath!, "--agent", "cal"],
                         environment: ["SOULFRA_INSTANCE_TOKEN": testTokens.instance])
        }
        var policy = Reconciler.Policy()
        policy.baseBackoffMilliseconds = 200
        let driver = try ProcessDriver(directory: dir + "/instances", executable: soulfraBinary)
        defer { for i in driver.observe() { try? driver.stop(world: i.world, id: i.id, graceMilliseconds: 100) } }
        var store: ControlStore? = try ControlStore(directory: dir + "/state")
        var plane: ControlPlane! = ControlPlane(store: store!, driver: driver, reconciler: Reconciler(policy: policy), spec: spec)
        plane.stopGraceMilliseconds = 3_000
        func now() -> Int64 { Int64(Date().timeIntervalSince1970 * 1_000) }
        func settle(until done: () -> Bool) {
            for _ in 0..<3_000 where !done() {
                _ = try? plane.tick(now: now())
                usleep(10_000)
            }
        }

        try store!.createWorld(WorldRecord(name: "playground", template: "kids", spec: "{}", instances: 2), actor: "test", now: now())
        #expect(try plane.tick(now: now()).count == 2)
        settle { linked() == 2 }
        #expect(linked() == 2, "two instances on the broker")
        #expect(try store!.instances(world: "playground").map(\.state) == ["running", "running"])

        try store!.scale(world: "playground", instances: 1, actor: "test", now: now())
        settle { linked() == 1 && driver.observe().count == 1 }
        #expect(linked() == 1 && driver.observe().map(\.id) == ["playground-1"])

        let first = try #require(driver.observe().first?.handle)
        kill(pid_t(first)!, SIGKILL)
        settle { driver.observe().first.map { $0.state == .running && $0.handle != first } ?? false }
        #expect(driver.observe().first?.state == .running && driver.observe().first?.handle != first, "the killed instance was replaced")
        #expect(plane.reconciler.restarts == 1)
        settle { linked() == 1 }

        // The daemon restarts: a new store and control plane find the instance running, and start nothing.
        let running = driver.observe().first?.handle
        plane = nil
        store = nil
        store = try ControlStore(directory: dir + "/state")
        plane = ControlPlane(store: store!, driver: try ProcessDriver(directory: dir + "/instances", executable: soulfraBinary),
                             reconciler: Reconciler(policy: policy), spec: spec)
        #expect(try plane.tick(now: now()).isEmpty, "adopted, not started again")
        #expect(plane.driver.observe().map(\.handle) == [running])

        try store!.deleteWorld("playground", actor: "test", now: now())
        settle { plane.driver.observe().isEmpty }
        #expect(plane.driver.observe().isEmpty && linked() == 0, "a deleted world's instance stopped and was forgotten")
        #expect(try store!.auditLog().map(\.action) == ["world.create", "world.scale", "world.delete"])
    }
}
