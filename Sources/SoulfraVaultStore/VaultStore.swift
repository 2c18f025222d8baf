#if canImport(Glibc)
import Glibc
#endif
import Dispatch
import SoulfraLoop
import SoulfraVault
import Synchronization

/// Where and how the vault keeps worlds' events.
public struct VaultSettings: Sendable, Equatable {
    /// The data directory: one directory per world under it.
    public var directory: String
    /// A world's log moves to a new segment once its segment holds this much.
    public var segmentBytes: Int = 64 << 20
    /// Retention, per world: whole segments older than this go (0: kept for ever).
    public var maxAgeSeconds: UInt64 = 0
    /// …and the oldest segments go while a world's log is larger than this (0: no bound).
    public var maxBytes: UInt64 = 0
    /// Worlds whose events are encrypted at rest (AES-256-GCM), and where their keys live: `<world>.key`, outside
    /// the data directory. A world with a key file is readable whether or not it is listed.
    public var encryptedWorlds: Set<String> = []
    public var keyDirectory = ""
    /// How far ahead of its records the active segment is kept written with zeros, which makes each sync
    /// cheaper (a sync then commits no new size or block allocation); 0: not.
    public var prepareAheadBytes = 1 << 20

    public init(directory: String) { self.directory = directory }
}

/// The vault's storage on one loop: each world's log in segment files under `<directory>/<world>/`, written
/// and read through the loop's ring, with its index in memory. Worlds found on disk are opened (and
/// recovered) by `openExisting()` before the loop serves; a world seen for the first time gets its directory
/// then (a few metadata calls on the loop thread, once per world).
public final class VaultStore: VaultStorage {
    public let settings: VaultSettings
    unowned let loop: EventLoop
    private var worlds: [String: VaultWorld] = [:]
    /// Worlds whose directory could not be opened, with why (appends to them fail at once).
    private var broken: [String: VaultFailure] = [:]
    /// Which world owns each file slot (segments and directory syncs).
    var owners: [UInt32: VaultWorld] = [:]
    /// Appends made durable and appends not stored, per world, in log order.
    public var onDurable: (String, [GroupCommit.Durable]) -> Void = { _, _ in }
    public var onFailed: (String, [UInt64], Int32, UInt32) -> Void = { _, _, _, _ in }
    /// Lines for the daemon's log (`error_alert` ones for failures people must see).
    public var log: (String) -> Void = { _ in }
    private var lastRetention: UInt64 = 0
    /// Segments whose next batch is gathering (`poll` looks at them on every loop turn).
    var gathering: [VaultSegment] = []

    public init(settings: VaultSettings, loop: EventLoop) {
        self.settings = settings
        self.loop = loop
    }

    /// Opens every world found under the data directory (blocking reads: call before the loop serves), keeping
    /// those for which `mine` is true (the worlds this loop serves). Returns the worlds opened.
    @discardableResult
    public func openExisting(mine: (String) -> Bool = { _ in true }) throws(VaultFailure) -> [String] {
        var path = ""
        for part in settings.directory.split(separator: "/") {
            path += "/" + part
            try Self.makeDirectory(path)
        }
        guard let dir = opendir(settings.directory) else {
            throw VaultFailure(errno: errno, reason: "cannot list \(settings.directory)")
        }
        defer { closedir(dir) }
        var names: [String] = []
        while let e = readdir(dir) {
            let name = withUnsafeBytes(of: e.pointee.d_name) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
            if VaultWorld.validName(name) && mine(name) { names.append(name) }
        }
        for name in names.sorted() { _ = try world(name) }
        return names.sorted()
    }

    /// A world's log, opened here and now with blocking calls (start-up, before the loop serves).
    func world(_ name: String) throws(VaultFailure) -> VaultWorld {
        if let w = worlds[name] { return w }
        if let b = broken[name] { throw b }
        do {
            try Self.check(name)
            let w = try VaultWorld(VaultWorld.open(name: name, settings: settings), store: self)
            worlds[name] = w
            return w
        } catch {
            log("error_alert vault: world \(name): \(error.reason)")
            broken[name] = error
            throw error
        }
    }

    private static func check(_ name: String) throws(VaultFailure) {
        guard VaultWorld.validName(name) else {
            throw VaultFailure(errno: EINVAL, reason: "world name \"\(name)\" cannot name a directory (letters, digits, . _ -)")
        }
    }

    // MARK: - Off the loop

    /// Files being removed through the ring (retention), by token, with who to tell.
    private var removing: [UInt64: (path: String, done: () -> Void)] = [:]
    private var nextRemoval: UInt64 = 0

    /// Removes `path` through the ring (`IORING_OP_UNLINKAT`); a failure is logged; `done` runs either way.
    func remove(file path: String, done: @escaping () -> Void) {
        nextRemoval &+= 1
        removing[nextRemoval] = (path, done)
        loop.path(.unlink, path, token: nextRemoval)
    }

    /// A path operation of the loop completed (call from `LoopDelegate.loopPathDone`); false when not the vault's.
    @discardableResult
    public func pathDone(token: UInt64, result: Int32) -> Bool {
        guard let r = removing.removeValue(forKey: token) else { return false }
        if result < 0 { log("error_alert vault: cannot remove \(r.path) (errno \(-result)); remove it by hand") }
        r.done()
        return true
    }

    /// Worlds being opened on the opener thread, with the appends that came for them meanwhile (in order).
    private var opening: [String: Opening] = [:]
    private var openings: UInt64 = 0

    /// One opening of a world: its number (a result from an opening that was given up, by a purge, is told
    /// apart from a later one's) and the appends waiting for it.
    struct Opening {
        let number: UInt64
        var waiting: [GroupCommit.Append]
    }
    /// What the opener thread finished, for the loop to take (`mailbox`).
    private let finished = FinishedQueue()

    /// What the opener finished, and whether the store closed (then an opening that finishes later closes
    /// what it opened itself: nobody would take it).
    final class FinishedQueue: Sendable {
        let state = Mutex<(closed: Bool, list: [Finished])>((false, []))
    }
    /// One serial queue per world (loop thread only): a world's work runs in order and never concurrently with
    /// itself, and a world whose opening hangs (a stuck disk, a key file that will not read) holds no other
    /// world's. Serial queues run on libdispatch's overcommitting pool, which starts a thread whenever none is
    /// free, so blocking work elsewhere in the process (a concurrent queue's callers stuck in reads) cannot
    /// starve a rotation or an opening. Kept for every world seen here, purged ones too (a purge and a later
    /// opening stay in order; an idle queue holds no thread).
    private var lanes: [String: DispatchQueue] = [:]

    private func lane(_ world: String) -> DispatchQueue {
        if let q = lanes[world] { return q }
        let q = DispatchQueue(label: "soulfra.vault.opener." + world)
        lanes[world] = q
        return q
    }

    enum Finished: @unchecked Sendable {
        case world(String, opening: UInt64, Result<VaultWorld.Opened, VaultFailure>)
        case segment(String, UInt32, Result<VaultSegment.Opened, VaultFailure>)
    }

    /// Runs `work` on `world`'s opener queue (directory and file creation, recovery reads, directory syncs: the
    /// blocking calls a loop thread must not make); its result comes back through the loop's mailbox.
    func offLoop(world: String, _ work: @escaping @Sendable () -> Finished) {
        let mailbox = loop.mailbox
        lane(world).async { [finished] in
            let done = work()
            let taken = finished.state.withLock { s in
                guard !s.closed else { return false }
                s.list.append(done)
                return true
            }
            if taken { mailbox.wake() } else { Self.discard(done) }
        }
    }

    /// Takes what the opener thread finished (call from the loop's mailbox handler): opened worlds start
    /// storing the appends that waited for them; a world that could not be opened fails them.
    public func mailbox(now: UInt64) {
        let done = finished.state.withLock { s in defer { s.list.removeAll() }; return s.list }
        for d in done {
            switch d {
            case .world(let name, let number, let result):
                // An opening given up (the world purged meanwhile) leaves nothing behind: what it made is gone.
                guard opening[name]?.number == number, let waiting = opening.removeValue(forKey: name)?.waiting else {
                    Self.discard(d)
                    continue
                }
                let w: VaultWorld
                do {
                    w = try VaultWorld(result.get(), store: self)
                } catch {
                    log("error_alert vault: world \(name): \(error.reason)")
                    broken[name] = error
                    if !waiting.isEmpty { onFailed(name, waiting.map(\.id), error.errno, 1_000) }
                    continue
                }
                worlds[name] = w
                // Each waiting append on its own: one that fails (its encryption) fails alone.
                for a in waiting {
                    do { try w.append(a, now: now) } catch { onFailed(name, [a.id], error.errno, 1_000) }
                }
            case .segment(let name, let number, let result):
                // A world's queue runs in order and results come back in order: a segment asked for before a
                // purge arrives while the world is gone (before any opening that came after), and is closed.
                if let w = worlds[name] {
                    w.nextOpened(number, result)
                } else {
                    Self.discard(d)
                }
            }
        }
    }

    /// Closes what an opening that is no longer wanted opened.
    static func discard(_ f: Finished) {
        switch f {
        case .world(_, _, .success(let o)): o.discard()
        case .segment(_, _, .success(let o)): o.discard()
        default: break
        }
    }

    /// The world's index (nil: not open here).
    public func index(of world: String) -> VaultIndex? { worlds[world]?.index }

    public var openWorlds: [String] { worlds.keys.sorted() }

    // MARK: - VaultStorage

    public func append(world name: String, _ append: GroupCommit.Append, now: UInt64) -> VaultFailure? {
        if let w = worlds[name] {
            do {
                try w.append(append, now: now)
                return nil
            } catch {
                return error
            }
        }
        if let b = broken[name] { return b }
        if opening[name] != nil {
            opening[name]!.waiting.append(append)
            return nil
        }
        do { try Self.check(name) } catch { return error }
        // A world seen for the first time: made and opened on the opener thread; its appends wait for it.
        openings &+= 1
        let number = openings
        opening[name] = Opening(number: number, waiting: [append])
        let settings = settings
        offLoop(world: name) { .world(name, opening: number, Result { () throws(VaultFailure) in try VaultWorld.open(name: name, settings: settings) }) }
        return nil
    }

    public func pendingBytes(world name: String) -> Int {
        worlds[name]?.pendingBytes ?? opening[name]?.waiting.reduce(0) { $0 + $1.recordBytes } ?? 0
    }

    public func read(world name: String, session: [UInt8], _ request: VaultRequest, now: UInt64,
                     done: @escaping (Result<VaultPage, VaultFailure>) -> Void) {
        guard let w = worlds[name] else {
            // Nothing stored for a world never seen: an empty page, and no directory made for a read.
            let next: UInt64 = switch request {
            case .read(let after, _, _): after
            case .replay(_, _, let after, _, _): after
            case .append, .tail: 0
            }
            done(.success(VaultPage(events: [], next: next, more: false)))
            return
        }
        w.read(session: session, request, done: done)
    }

    // MARK: - From the loop

    /// A file operation completed; false when the file is not the vault's.
    @discardableResult
    public func fileDone(file: UInt32, operation: FileOperation, result: Int32, now: UInt64) -> Bool {
        guard let w = owners[file] else { return false }
        w.fileDone(file: file, operation: operation, result: result, now: now)
        return true
    }

    /// A loop turn: segments gathering their next batch start it once it is full or its time is up. Cheap when
    /// none is gathering; call it from the loop's flush.
    @inline(__always)
    public func poll(now: UInt64) {
        guard !gathering.isEmpty else { return }
        let list = gathering
        gathering.removeAll(keepingCapacity: true)
        for s in list where s.policy.gatherUntil != nil {
            s.tick(now: now)
            if s.policy.gatherUntil != nil { gathering.append(s) }
        }
    }

    /// Time passed: retries after failures, rotation, retention (once a second).
    public func tick(now: UInt64, unixSeconds: UInt64) {
        for w in worlds.values { w.tick(now: now) }
        guard now &- lastRetention >= 1_000_000_000 else { return }
        lastRetention = now
        for w in worlds.values { w.applyRetention(unixSeconds: unixSeconds) }
    }

    /// Closes every file (after what is in flight).
    /// Closes every file (after what is in flight). Appends still waiting for their world to open fail; what
    /// the opener finishes from now on is closed by the opener.
    public func close() {
        for w in worlds.values { w.close() }
        let leftover = finished.state.withLock { s in
            s.closed = true
            defer { s.list = [] }
            return s.list
        }
        for d in leftover { Self.discard(d) }
        for (name, o) in opening where !o.waiting.isEmpty {
            onFailed(name, o.waiting.map(\.id), ECANCELED, 1_000)
        }
        opening = [:]
    }

    /// Removes a world's log and its key for good (`soulfra shutdown --purge`, once its instances are gone):
    /// its files are closed here, the directory and key removed on the opener thread, then `done` runs there
    /// (nil, or what failed).
    public func purge(world name: String, done: @escaping @Sendable (String?) -> Void) {
        if let w = worlds.removeValue(forKey: name) { w.close() }
        // An opening still on its way is given up: its appends fail now, and what it opens is closed on arrival.
        if let o = opening.removeValue(forKey: name), !o.waiting.isEmpty { onFailed(name, o.waiting.map(\.id), ECANCELED, 1_000) }
        broken[name] = nil  // a world that could not be opened is forgotten with its files
        let directory = settings.directory + "/" + name
        let key = settings.keyDirectory.isEmpty ? nil : settings.keyDirectory + "/" + name + ".key"
        // On the world's own queue: after whatever it was doing, and before anything asked of it later (an
        // opening after the purge finds the directory gone, never half removed).
        lane(name).async {
            var failure: String?
            if access(directory, F_OK) == 0 {
                // A world's directory is flat: its segments and LOCK.
                if let d = opendir(directory) {
                    while let entry = readdir(d) {
                        let file = withUnsafeBytes(of: entry.pointee.d_name) { String(cString: $0.bindMemory(to: CChar.self).baseAddress!) }
                        if file != "." && file != ".." { unlink(directory + "/" + file) }
                    }
                    closedir(d)
                }
                if rmdir(directory) != 0 { failure = "cannot remove \(directory): \(String(cString: strerror(errno)))" }
            }
            if let key, access(key, F_OK) == 0, unlink(key) != 0 { failure = "cannot remove \(key): \(String(cString: strerror(errno)))" }
            done(failure)
        }
    }

    /// Counters for `/metrics`, summed over this loop's worlds.
    public var counters: VaultStoreCounters {
        var c = VaultStoreCounters()
        for w in worlds.values { c.add(w) }
        c.worlds = worlds.count
        return c
    }

    static func makeDirectory(_ path: String) throws(VaultFailure) {
        if mkdir(path, 0o700) != 0 && errno != EEXIST {
            throw VaultFailure(errno: errno, reason: "cannot create \(path): \(String(cString: strerror(errno)))")
        }
    }
}

/// What the vault's logs did (summed over worlds).
public struct VaultStoreCounters: Equatable, Sendable {
    public var worlds = 0
    public var segments = 0
    public var bytes: UInt64 = 0
    public var records = 0
    public var batches: UInt64 = 0
    public var appendsDurable: UInt64 = 0
    public var appendsFailed: UInt64 = 0
    public var largestBatch = 0
    public var lastCommitNanoseconds: UInt64 = 0
    public var commitNanosecondsTotal: UInt64 = 0
    /// Group commits by duration, in `commitBoundsMicros` buckets (fsync latency as a histogram).
    public var commitBuckets = [UInt64](repeating: 0, count: VaultStoreCounters.commitBoundsMicros.count + 1)
    public static let commitBoundsMicros: [UInt64] = [250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000]
    public var pendingBytes = 0
    public var segmentsDropped: UInt64 = 0
    public var recoveredCutBytes: UInt64 = 0
    public var preparedChunks: UInt64 = 0
    public var prepareFailures: UInt64 = 0
    public init() {}

    /// The bucket a commit of `micros` falls in.
    static func commitBucket(_ micros: UInt64) -> Int {
        var i = 0
        while i < commitBoundsMicros.count && micros > commitBoundsMicros[i] { i += 1 }
        return i
    }

    mutating func add(_ w: VaultWorld) {
        var one = VaultStoreCounters()
        one.segments = w.segments.count
        one.bytes = w.segments.reduce(0) { $0 + $1.segment.durableBytes }
        one.records = w.index.records.count
        one.batches = w.batches
        one.appendsDurable = w.appendsDurable
        one.appendsFailed = w.appendsFailed
        one.largestBatch = w.largestBatch
        one.lastCommitNanoseconds = w.lastCommitNanoseconds
        one.commitNanosecondsTotal = w.commitNanosecondsTotal
        one.commitBuckets = w.commitBuckets
        one.pendingBytes = w.pendingBytes
        one.segmentsDropped = w.segmentsDropped
        one.recoveredCutBytes = w.recoveredCutBytes
        one.preparedChunks = w.preparedChunks
        one.prepareFailures = w.prepareFailures
        merge(one)
    }

    public mutating func merge(_ o: VaultStoreCounters) {
        worlds += o.worlds
        segments += o.segments
        bytes += o.bytes
        records += o.records
        batches += o.batches
        appendsDurable += o.appendsDurable
        appendsFailed += o.appendsFailed
        largestBatch = max(largestBatch, o.largestBatch)
        lastCommitNanoseconds = max(lastCommitNanoseconds, o.lastCommitNanoseconds)
        commitNanosecondsTotal += o.commitNanosecondsTotal
        for i in commitBuckets.indices where i < o.commitBuckets.count { commitBuckets[i] += o.commitBuckets[i] }
        pendingBytes += o.pendingBytes
        segmentsDropped += o.segmentsDropped
        recoveredCutBytes += o.recoveredCutBytes
        preparedChunks += o.preparedChunks
        prepareFailures += o.prepareFailures
    }
}
