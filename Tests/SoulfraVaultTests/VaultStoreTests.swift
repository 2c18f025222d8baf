import Foundation
import Synchronization
import Testing
import SoulfraLoop
import SoulfraVault
@testable import SoulfraVaultStore

/// A vault store on a loop of its own thread, wired as the daemon wires it; `step` runs at the end of every
/// batch until it returns true (bounded: 10 s, by `runOnLoopThread`).
final class StoreDriver: LoopThreadDriver, @unchecked Sendable {
    let loop: EventLoop
    let store: VaultStore
    var durable: [UInt64] = []
    var failed: [(id: UInt64, errno: Int32)] = []
    var step: (StoreDriver) -> Bool = { _ in true }
    let done = DispatchSemaphore(value: 0)
    var finished = false
    let stopRequested = Atomic<Bool>(false)

    init(loop: EventLoop, settings: VaultSettings) {
        self.loop = loop
        store = VaultStore(settings: settings, loop: loop)
        store.onDurable = { [unowned self] _, d in durable += d.map(\.id) }
        store.onFailed = { [unowned self] _, ids, e, _ in failed += ids.map { ($0, e) } }
    }

    func loopAccepted(conn: UInt32, listener: Int, now: UInt64) -> Bool { false }
    func loopReceived(conn: UInt32, bytes: UnsafeRawBufferPointer, now: UInt64) {}
    func loopSent(conn: UInt32, count: Int, now: UInt64) {}
    func loopClosed(conn: UInt32, reason: LoopCloseReason, now: UInt64) {}
    func loopHandedOff(conn: UInt32, fd: Int32, now: UInt64) {}
    func loopTick(now: UInt64) { store.tick(now: now, unixSeconds: UInt64(Date().timeIntervalSince1970)) }
    func loopMailbox(now: UInt64) { store.mailbox(now: now) }
    func loopFileDone(file: UInt32, operation: FileOperation, result: Int32, now: UInt64) {
        store.fileDone(file: file, operation: operation, result: result, now: now)
    }
    func loopPathDone(token: UInt64, operation: PathOperation, result: Int32, now: UInt64) { store.pathDone(token: token, result: result) }
    func loopFlush(now: UInt64) {
        store.poll(now: now)
        if !finished, step(self) {
            finished = true
            done.signal()
        }
        if stopRequested.load(ordering: .acquiring) {
            store.close()
            loop.stop()
        }
    }

    /// Runs `setup` on a fresh loop thread (as its first work), then `step` after every batch, until it holds.
    static func run(_ settings: VaultSettings, _ setup: @escaping (StoreDriver) -> Void,
                    until step: @escaping (StoreDriver) -> Bool) throws -> StoreDriver {
        try runOnLoopThread { loop in
            let d = StoreDriver(loop: loop, settings: settings)
            loop.delegate = d
            d.step = step
            setup(d)
            return d
        }
    }
}

@Suite("The vault store on its loop", .enabled(if: ringUsable, "io_uring is not available here"), .serialized)
struct VaultStoreTests {
    static func append(_ id: UInt64, _ text: String) -> GroupCommit.Append {
        GroupCommit.Append(id: id, session: Array("s".utf8), kind: 1, unixMilliseconds: 1_800_000_000_000, payload: Array(text.utf8))
    }

    @Test("append, purge and append again in one turn: the first opening is given up (its append fails ECANCELED), and the second append is in a fresh world on disk, where a store opened afterwards finds it")
    func purgeBetweenTwoOpenings() throws {
        let directory = NSTemporaryDirectory() + "soulfra-store-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let settings = VaultSettings(directory: directory)
        let d = try StoreDriver.run(settings, { d in
            #expect((try? d.store.openExisting()) == [], "a new vault: its directory made, no world in it")
            // All on the loop thread, before it turns: the world's queue gets open, purge, open, in that order.
            #expect(d.store.append(world: "w", Self.append(1, "before the purge"), now: 0) == nil)
            d.store.purge(world: "w") { _ in }
            #expect(d.store.append(world: "w", Self.append(2, "after the purge"), now: 0) == nil)
        }, until: { $0.durable.contains(2) || !$0.failed.filter { $0.id == 2 }.isEmpty })
        #expect(d.durable == [2], "only the append after the purge is stored: \(d.durable)")
        #expect(d.failed.map(\.id) == [1] && d.failed.first?.errno == ECANCELED, "the given-up opening's append fails: \(d.failed)")
        // What was acknowledged is on disk: a store opened on the directory reads it back.
        let again = try StoreDriver.run(settings, { d in
            #expect((try? d.store.openExisting()) == ["w"])
        }, until: { _ in true })
        let records = again.store.index(of: "w")?.session(Array("s".utf8), after: 0, limit: 10).positions.count ?? 0
        #expect(records == 1, "the world on disk holds the append made after the purge: \(records) records")
    }
}
