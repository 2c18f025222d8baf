#if canImport(Glibc)
import Glibc
#endif
import SoulfraLoop
import SoulfraVault

/// One world's log: segment files `<directory>/<world>/<number>.seg`, oldest first, the last one taking
/// appends; the index of every record kept.
///
/// **Rotation.** Once the active segment holds `segmentBytes`, the next one is made ahead (created, and the
/// directory synced through the ring so the new file survives a crash); when that is done the active one is
/// sealed, its batch in flight completes, and what waited moves to the new one. A sealed segment is never
/// written again: bytes a failed write left past its records stay there, harmless, and recovery reads it up to
/// its last good record (without cutting); the next segment must go on from exactly that record.
final class VaultWorld {
    struct Segment {
        let number: UInt32
        let segment: VaultSegment
    }

    let name: String
    let directory: String
    unowned let store: VaultStore
    private(set) var segments: [Segment] = []
    private(set) var index = VaultIndex()
    /// The segment made ahead for rotation, and whether its directory entry is synced.
    private var next: (number: UInt32, segment: VaultSegment)?
    /// The next segment is being made on the opener thread.
    private var makingNext = false
    private var lastStamp: UInt64 = 0
    /// `<world>/LOCK`, held with flock(2) while the world is open: a second process (a `soulfra vault` next to a
    /// daemon's own vault on the same directory) cannot open the world and write over it.
    private var lockFD: Int32 = -1
    /// The world's key when it has one; `encrypting` when new events are sealed with it.
    private(set) var cipher: VaultCipher?
    let encrypting: Bool

    private(set) var batches: UInt64 = 0
    private(set) var appendsDurable: UInt64 = 0
    private(set) var appendsFailed: UInt64 = 0
    private(set) var largestBatch = 0
    private(set) var lastCommitNanoseconds: UInt64 = 0
    private(set) var commitNanosecondsTotal: UInt64 = 0
    /// Group commits by duration (`VaultStoreCounters.commitBoundsMicros`, the last: above them all).
    private(set) var commitBuckets = [UInt64](repeating: 0, count: VaultStoreCounters.commitBoundsMicros.count + 1)
    private(set) var segmentsDropped: UInt64 = 0
    private(set) var recoveredCutBytes: UInt64 = 0
    private(set) var preparedChunks: UInt64 = 0
    private(set) var prepareFailures: UInt64 = 0

    static func validName(_ name: String) -> Bool {
        guard !name.isEmpty, name.utf8.count <= 128, name.first != "." else { return false }
        return name.utf8.allSatisfy { b in
            (b >= 0x30 && b <= 0x39) || (b >= 0x41 && b <= 0x5A) || (b >= 0x61 && b <= 0x7A) || b == 0x2E || b == 0x5F || b == 0x2D
        }
    }

    /// A world opened and recovered but not yet on a loop: the blocking half of opening (directory, lock,
    /// key, segments read and checked, index built), done at start-up or on the store's opener thread.
    struct Opened: @unchecked Sendable {
        let name: String
        let directory: String
        let lockFD: Int32
        let cipher: VaultCipher?
        let encrypting: Bool
        let segments: [(number: UInt32, opened: VaultSegment.Opened)]
        let index: VaultIndex

        func discard() {
            Glibc.close(lockFD)
            for s in segments { s.opened.discard() }
        }
    }

    /// Opens the world's directory (made if new) and recovers its segments in order, with blocking calls (never
    /// on a loop thread that serves). Only the last segment may end torn (its tail is cut); an earlier one that
    /// does not end clean is damage, and the world is not opened.
    static func open(name: String, settings: VaultSettings) throws(VaultFailure) -> Opened {
        let directory = settings.directory + "/" + name
        // Listed worlds are encrypted, and so is any world that has a key (the control plane makes one when a
        // template asks for privacy): a world with a key never goes back to writing in the clear.
        let cipher = try loadKey(world: name, settings: settings, create: settings.encryptedWorlds.contains(name))
        let encrypting = cipher != nil
        let created = access(directory, F_OK) != 0
        try VaultStore.makeDirectory(directory)
        let lockFD = Glibc.open(directory + "/LOCK", O_RDWR | O_CREAT | O_CLOEXEC, 0o600)
        guard lockFD >= 0, flock(lockFD, LOCK_EX | LOCK_NB) == 0 else {
            let e = errno
            if lockFD >= 0 { Glibc.close(lockFD) }
            throw VaultFailure(errno: e, reason: "\(directory) is open in another vault process (its LOCK is held)")
        }
        var opened: [(number: UInt32, opened: VaultSegment.Opened)] = []
        func fail(_ e: VaultFailure) -> VaultFailure {
            Glibc.close(lockFD)
            for s in opened { s.opened.discard() }
            return e
        }
        var numbers: [UInt32]
        do { numbers = try segmentNumbers(directory) } catch { throw fail(error) }
        // A segment made ahead and never written (a crash before rotation) goes: the one before it is the last.
        while numbers.count > 1, isEmptyFile(directory + "/" + segmentName(numbers[numbers.count - 1])) {
            unlink(directory + "/" + segmentName(numbers.removeLast()))
        }
        if numbers.isEmpty { numbers = [1] }
        var index = VaultIndex()
        var after: UInt64 = 0
        var sessions: [[UInt8]: UInt64] = [:]
        for (k, number) in numbers.enumerated() {
            let path = directory + "/" + segmentName(number)
            let last = k == numbers.count - 1
            do {
                // The oldest segment may start anywhere: retention dropped the ones before it.
                let o = try VaultSegment.open(path: path, after: after, anyFirst: k == 0, sessions: sessions, repair: last,
                                              prepareAhead: last && settings.prepareAheadBytes > 0) { record, offset in
                    index.add(RecordPosition(segment: number, offset: UInt64(offset), length: UInt32(record.encodedBytes),
                                             sequence: record.sequence, sessionSequence: record.sessionSequence,
                                             unixMilliseconds: record.unixMilliseconds), session: record.session)
                }
                opened.append((number, o))
                after = o.last
                sessions = o.sessions
            } catch {
                throw fail(VaultFailure(errno: error.errno, reason: "cannot open \(path): \(error)"))
            }
        }
        do {
            if created { try syncDirectoryNow(settings.directory) }
            try syncDirectoryNow(directory)
        } catch {
            throw fail(error)
        }
        return Opened(name: name, directory: directory, lockFD: lockFD, cipher: cipher, encrypting: encrypting,
                      segments: opened, index: index)
    }

    /// Takes an opened world onto the store's loop (on the loop's thread).
    init(_ o: Opened, store: VaultStore) throws(VaultFailure) {
        name = o.name
        self.store = store
        directory = o.directory
        encrypting = o.encrypting
        cipher = o.cipher
        lockFD = o.lockFD
        index = o.index
        for (k, s) in o.segments.enumerated() {
            let last = k == o.segments.count - 1
            let segment: VaultSegment
            do {
                segment = try VaultSegment(s.opened, loop: store.loop, prepareAhead: last ? store.settings.prepareAheadBytes : 0,
                                           capacity: UInt64(store.settings.segmentBytes))
            } catch {
                for rest in o.segments[(k + 1)...] { rest.opened.discard() }
                close()
                throw VaultFailure(errno: error.errno, reason: "cannot open \(s.opened.path): \(error)")
            }
            segments.append(Segment(number: s.number, segment: segment))
            for f in segment.files { store.owners[f] = self }
            if last && segment.cutBytes > 0 {
                recoveredCutBytes += UInt64(segment.cutBytes)
                store.log("vault: world \(name): cut \(segment.cutBytes) bytes off the end of \(segment.path) (\(segment.recoveredTail))")
            }
            wire(segment)
        }
        lastStamp = index.lastUnixMilliseconds
    }

    private func segmentPath(_ number: UInt32) -> String { directory + "/" + Self.segmentName(number) }

    static func segmentName(_ number: UInt32) -> String {
        let digits = String(number)
        return String(repeating: "0", count: max(0, 8 - digits.count)) + digits + ".seg"
    }

    static func isEmptyFile(_ path: String) -> Bool {
        var st = stat()
        return stat(path, &st) == 0 && st.st_size == 0
    }

    private static func segmentNumbers(_ directory: String) throws(VaultFailure) -> [UInt32] {
        guard let dir = opendir(directory) else { throw VaultFailure(errno: errno, reason: "cannot list \(directory)") }
        defer { closedir(dir) }
        var out: [UInt32] = []
        while let e = readdir(dir) {
            let name = withUnsafeBytes(of: e.pointee.d_name) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
            if name.hasSuffix(".seg"), let n = UInt32(name.dropLast(4)) { out.append(n) }
        }
        return out.sorted()
    }

    /// fsync on a directory with a blocking call (opening a world, before or outside the hot path).
    private static func syncDirectoryNow(_ path: String) throws(VaultFailure) {
        let fd = Glibc.open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        guard fd >= 0, fsync(fd) == 0 else {
            let e = errno
            if fd >= 0 { Glibc.close(fd) }
            throw VaultFailure(errno: e, reason: "cannot sync directory \(path)")
        }
        Glibc.close(fd)
    }

    private var active: VaultSegment { segments[segments.count - 1].segment }

    private func wire(_ segment: VaultSegment) {
        segment.onWake = { [unowned self, unowned segment] _ in self.store.gathering.append(segment) }
        segment.onDurable = { [unowned self, unowned segment] done in self.durable(done, in: segment) }
        segment.onFailed = { [unowned self, unowned segment] ids, errno in self.failed(ids, errno: errno, in: segment) }
        segment.onPrepared = { [unowned self] ok in
            if ok { preparedChunks &+= 1 } else { prepareFailures &+= 1 }
        }
    }

    var pendingBytes: Int { segments.reduce(0) { $0 + $1.segment.policy.pendingBytes } }

    // MARK: - Appends

    func append(_ a: GroupCommit.Append, now: UInt64) throws(VaultFailure) {
        var a = a
        // Stamps never go back in a world's log (the time index relies on it), whatever the wall clock does.
        lastStamp = max(lastStamp, a.unixMilliseconds)
        a.unixMilliseconds = lastStamp
        if encrypting, let cipher {
            guard let sealed = cipher.seal(a.payload, session: a.session, kind: a.kind) else {
                throw VaultFailure(errno: EIO, reason: "encrypting an event of world \(name) failed")
            }
            a.payload = sealed
            a.flags |= VaultCipher.sealedFlag
        }
        active.append(a, now: now)
    }

    // MARK: - Keys

    /// The world's key from `<key directory>/<world>.key` (32 key bytes, then the epoch, u32 big-endian), its
    /// epoch raised and stored before use so no nonce of an earlier run comes again; made if `create` and absent.
    static func loadKey(world: String, settings: VaultSettings, create: Bool) throws(VaultFailure) -> VaultCipher? {
        guard !settings.keyDirectory.isEmpty else {
            if create { throw VaultFailure(errno: EINVAL, reason: "world \(world) is to be encrypted but vault.key_directory is not set") }
            return nil
        }
        let path = settings.keyDirectory + "/" + world + ".key"
        var key: [UInt8]
        var epoch: UInt32 = 0
        let fd = Glibc.open(path, O_RDONLY | O_CLOEXEC)
        if fd >= 0 {
            var buf = [UInt8](repeating: 0, count: VaultCipher.keyBytes + 4)
            let n = buf.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress, $0.count) }
            Glibc.close(fd)
            guard n == buf.count else { throw VaultFailure(errno: EIO, reason: "\(path) is not a vault key (32 bytes and an epoch)") }
            key = Array(buf[0..<VaultCipher.keyBytes])
            epoch = buf[VaultCipher.keyBytes...].reduce(0) { $0 << 8 | UInt32($1) }
        } else if errno == ENOENT && create {
            guard let k = VaultCipher.newKey() else { throw VaultFailure(errno: EIO, reason: "no random bytes for a key") }
            key = k
            var path = ""
            for part in settings.keyDirectory.split(separator: "/") {
                path += "/" + part
                if mkdir(path, 0o700) != 0 && errno != EEXIST {
                    throw VaultFailure(errno: errno, reason: "cannot create the key directory \(path)")
                }
            }
        } else if errno == ENOENT {
            return nil
        } else {
            throw VaultFailure(errno: errno, reason: "cannot read \(path)")
        }
        guard epoch < UInt32.max else { throw VaultFailure(errno: EOVERFLOW, reason: "\(path): epochs are used up; rotate the key") }
        epoch += 1
        try writeDurably(path: path, bytes: key + withUnsafeBytes(of: epoch.bigEndian, Array.init), directory: settings.keyDirectory)
        return VaultCipher(key: key, epoch: epoch, world: world)
    }

    /// Replaces `path` with `bytes` so that a crash leaves the old file or the new one: a temporary file, synced,
    /// renamed over it, and the directory synced.
    private static func writeDurably(path: String, bytes: [UInt8], directory: String) throws(VaultFailure) {
        let tmp = path + ".new"
        let fd = Glibc.open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw VaultFailure(errno: errno, reason: "cannot write \(tmp)") }
        let n = bytes.withUnsafeBytes { Glibc.write(fd, $0.baseAddress, $0.count) }
        let synced = fsync(fd) == 0
        Glibc.close(fd)
        guard n == bytes.count, synced, rename(tmp, path) == 0 else { throw VaultFailure(errno: errno, reason: "cannot store \(path)") }
        let d = Glibc.open(directory, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        if d >= 0 {
            fsync(d)
            Glibc.close(d)
        }
    }

    private func durable(_ done: [GroupCommit.Durable], in segment: VaultSegment) {
        guard let number = segments.first(where: { $0.segment === segment })?.number else { return }
        for d in done {
            index.add(RecordPosition(segment: number, offset: d.offset, length: d.length, sequence: d.sequence,
                                     sessionSequence: d.sessionSequence, unixMilliseconds: d.unixMilliseconds), session: d.session)
        }
        batches &+= 1
        appendsDurable &+= UInt64(done.count)
        largestBatch = max(largestBatch, done.count)
        lastCommitNanoseconds = segment.policy.lastCommitNanoseconds
        commitNanosecondsTotal &+= lastCommitNanoseconds
        commitBuckets[VaultStoreCounters.commitBucket(lastCommitNanoseconds / 1_000)] &+= 1
        store.onDurable(name, done)
        rotateIfDue()
    }

    private func failed(_ ids: [UInt64], errno: Int32, in segment: VaultSegment) {
        appendsFailed &+= UInt64(ids.count)
        let retry = UInt32(clamping: segment.policy.retryNanoseconds / 1_000_000)
        store.log("error_alert vault: world \(name): \(ids.count) events not stored: \(String(cString: strerror(errno))) (errno \(errno)); appends are retried and resume by themselves")
        store.onFailed(name, ids, errno, max(1, retry))
    }

    // MARK: - Rotation

    func tick(now: UInt64) {
        for s in segments { s.segment.tick(now: now) }
        rotateIfDue(tick: true)
    }

    /// Moves the log to the next segment when the active one is full: makes the next one (on a tick, so a failure
    /// to is retried at the tick's pace), seals the active one once the next is ready, and moves over once the
    /// active one's last batch completed. A batch in flight is formed before its predecessor's acknowledgement
    /// runs, so sealing takes effect one completion later.
    private func rotateIfDue(tick: Bool = false) {
        let a = active
        guard a.durableBytes >= UInt64(store.settings.segmentBytes) else { return }
        if next == nil {
            if tick && !makingNext { makeNext() }
            return
        }
        if !a.policy.sealed { a.seal() }
        guard !a.policy.writing, let n = next else { return }
        for f in a.files where f != a.file { store.owners[f] = nil }
        a.stopPreparing()
        let moving = a.takePending()
        n.segment.continueFrom(lastSequence: moving.lastSequence, sessions: moving.sessions)
        segments.append(Segment(number: n.number, segment: n.segment))
        next = nil
        for p in moving.appends { n.segment.append(p, now: 0) }
    }

    /// Makes the next segment file on the opener thread (created, and the directory synced so that it survives
    /// a crash); `nextOpened` takes it.
    private func makeNext() {
        let number = segments[segments.count - 1].number + 1
        makingNext = true
        let (name, path, directory, ahead) = (name, segmentPath(number), directory, store.settings.prepareAheadBytes > 0)
        store.offLoop(world: name) {
            .segment(name, number, Result { () throws(VaultFailure) in
                let o: VaultSegment.Opened
                do throws(SocketError) { o = try VaultSegment.open(path: path, prepareAhead: ahead) } catch {
                    throw VaultFailure(errno: error.errno, reason: "cannot create \(path): \(error)")
                }
                do throws(VaultFailure) { try VaultWorld.syncDirectoryNow(directory) } catch {
                    o.discard()
                    throw error
                }
                return o
            })
        }
    }

    /// The next segment, made on the opener thread: on the loop now, and rotation goes on.
    func nextOpened(_ number: UInt32, _ result: Result<VaultSegment.Opened, VaultFailure>) {
        makingNext = false
        do {
            let s = try VaultSegment(result.get(), loop: store.loop, prepareAhead: store.settings.prepareAheadBytes,
                                     capacity: UInt64(store.settings.segmentBytes))
            for f in s.files { store.owners[f] = self }
            wire(s)
            next = (number, s)
            rotateIfDue()
        } catch let e as VaultFailure {
            store.log("error_alert vault: world \(name): \(e.reason) (retried)")
        } catch {
            store.log("error_alert vault: world \(name): cannot create segment \(number): \(error) (retried)")
        }
    }

    func fileDone(file: UInt32, operation: FileOperation, result: Int32, now: UInt64) {
        if let s = segments.last(where: { $0.segment.files.contains(file) })?.segment
            ?? next.flatMap({ $0.segment.files.contains(file) ? $0.segment : nil }) {
            s.fileDone(file: file, operation, result: result, now: now)
        }
    }

    // MARK: - Retention

    func applyRetention(unixSeconds: UInt64) {
        let s = store.settings
        guard s.maxAgeSeconds > 0 || s.maxBytes > 0 else { return }
        while segments.count > 1 {
            let oldest = segments[0]
            let total = segments.reduce(0) { $0 + $1.segment.durableBytes }
            let newestInOldest = index.records.last(where: { $0.segment == oldest.number })?.unixMilliseconds ?? 0
            let tooOld = s.maxAgeSeconds > 0 && newestInOldest / 1_000 + s.maxAgeSeconds < unixSeconds
            // Past the byte bound the oldest goes — but never the last records: a segment that overgrew while its
            // successor was being made (rotation opens the next one off the loop) would otherwise go whole,
            // leaving only the new, empty one.
            let tooBig = s.maxBytes > 0 && total > s.maxBytes && total - oldest.segment.durableBytes > 0
            guard tooOld || tooBig else { return }
            index.dropSegments(before: segments[1].number)
            segments.removeFirst()
            for f in oldest.segment.files { store.owners[f] = nil }
            oldest.segment.close()
            removals.append(oldest.segment.path)
            segmentsDropped &+= 1
            store.log("vault: world \(name): retention dropped \(oldest.segment.path) (\(tooOld ? "older than \(s.maxAgeSeconds) s" : "over \(s.maxBytes) bytes"))")
            removeNext()
        }
    }

    /// Segment files to remove, oldest first, and whether one is being removed: one at a time, so that after
    /// a crash what is left is always a run of segments that follow on (never a newer one gone before an
    /// older one).
    private var removals: [String] = []
    private var removing = false

    private func removeNext() {
        guard !removing, !removals.isEmpty else { return }
        removing = true
        store.remove(file: removals.removeFirst()) { [weak self] in
            self?.removing = false
            self?.removeNext()
        }
    }

    // MARK: - Reads

    func read(session: [UInt8], _ request: VaultRequest, done: @escaping (Result<VaultPage, VaultFailure>) -> Void) {
        var (positions, more): ([RecordPosition], Bool)
        var after: UInt64
        var budget = VaultRequest.maxPageBytes
        switch request {
        case .read(let a, let limit, let b):
            (positions, more) = index.session(session, after: a, limit: limit)
            (after, budget) = (a, b)
        case .tail(let limit, let b):
            let last = index.lastSessionSequence(session)
            (positions, more) = index.session(session, after: last > UInt64(limit) ? last - UInt64(limit) : 0, limit: limit)
            (after, budget) = (0, b)
        case .replay(let from, let to, let a, let limit, let b):
            (positions, more) = index.range(fromMilliseconds: from, toMilliseconds: to, after: a, limit: limit)
            (after, budget) = (a, b)
        case .append:
            done(.success(VaultPage(events: [], next: 0, more: false)))
            return
        }
        // A page stops at its byte budget (it always has one record).
        var bytes = 0
        if let cut = positions.firstIndex(where: { bytes += Int($0.length); return bytes > budget }), cut > 0 {
            positions.removeLast(positions.count - cut)
            more = true
        }
        let isSession = if case .replay = request { false } else { true }
        let next = positions.last.map { isSession ? $0.sessionSequence : $0.sequence } ?? after
        guard !positions.isEmpty else {
            done(.success(VaultPage(events: [], next: next, more: more)))
            return
        }
        PageRead(world: self, positions: positions, next: next, more: more, done: done).start()
    }

    func segment(numbered n: UInt32) -> VaultSegment? { segments.first { $0.number == n }?.segment }

    func close() {
        if lockFD >= 0 {
            Glibc.close(lockFD)
            lockFD = -1
        }
        for s in segments {
            for f in s.segment.files { store.owners[f] = nil }
            s.segment.close()
        }
        segments = []
        if let n = next {
            for f in n.segment.files { store.owners[f] = nil }
            n.segment.close()
            next = nil
        }
    }
}

/// One page being read: adjacent records are read together, each run from its segment through the ring;
/// when all are in, the records are checked (checksum, sequence) and handed over in order.
final class PageRead {
    struct Run {
        let segment: UInt32
        let offset: UInt64
        var length: Int
        var positions: [RecordPosition]
    }

    let world: VaultWorld
    let next: UInt64
    let more: Bool
    let done: (Result<VaultPage, VaultFailure>) -> Void
    var runs: [Run] = []
    var events: [[StoredEvent]]
    var waiting = 0
    var failure: VaultFailure?

    init(world: VaultWorld, positions: [RecordPosition], next: UInt64, more: Bool, done: @escaping (Result<VaultPage, VaultFailure>) -> Void) {
        self.world = world
        self.next = next
        self.more = more
        self.done = done
        for p in positions {
            if var last = runs.last, last.segment == p.segment, last.offset + UInt64(last.length) == p.offset {
                last.length += Int(p.length)
                last.positions.append(p)
                runs[runs.count - 1] = last
            } else {
                runs.append(Run(segment: p.segment, offset: p.offset, length: Int(p.length), positions: [p]))
            }
        }
        events = Array(repeating: [], count: runs.count)
    }

    func start() {
        waiting = runs.count
        for (k, run) in runs.enumerated() {
            guard let segment = world.segment(numbered: run.segment) else {
                finishRun(k, .failure(VaultFailure(errno: ENOENT, reason: "segment \(run.segment) is gone (retention)")))
                continue
            }
            segment.read(offset: run.offset, count: run.length) { result in
                switch result {
                case .success(let bytes): self.finishRun(k, .success(self.decode(run, bytes)))
                case .failure(let e): self.finishRun(k, .failure(VaultFailure(errno: e.errno, reason: "\(e)")))
                }
            }
        }
    }

    private func decode(_ run: Run, _ bytes: UnsafeRawBufferPointer) -> [StoredEvent]? {
        var out: [StoredEvent] = []
        var k = 0
        var ok = true
        var at = 0
        for p in run.positions {
            let slice = UnsafeRawBufferPointer(rebasing: bytes[at..<(at + Int(p.length))])
            let scan = SegmentScan.scan(slice, after: p.sequence - 1) { r, _ in
                var payload = r.payload
                if r.flags & VaultCipher.sealedFlag != 0 {
                    guard let plain = world.cipher?.open(r.payload, session: r.session, kind: r.kind) else {
                        ok = false
                        return
                    }
                    payload = plain
                }
                out.append(StoredEvent(sequence: r.sequence, sessionSequence: r.sessionSequence, unixMilliseconds: r.unixMilliseconds,
                                       kind: r.kind, session: r.session, payload: payload))
            }
            if scan.tail != .clean || out.count != k + 1 { ok = false }
            k += 1
            at += Int(p.length)
        }
        return ok ? out : nil
    }

    private func finishRun(_ k: Int, _ result: Result<[StoredEvent]?, VaultFailure>) {
        switch result {
        case .success(let e?): events[k] = e
        case .success(nil): failure = failure ?? VaultFailure(errno: EIO, reason: "a record read back failed its checksum or did not decrypt")
        case .failure(let f): failure = failure ?? f
        }
        waiting -= 1
        guard waiting == 0 else { return }
        if let failure {
            done(.failure(failure))
        } else {
            done(.success(VaultPage(events: events.flatMap { $0 }, next: next, more: more)))
        }
    }
}

/// Worlds' vault keys, for the control plane.
public enum VaultKeys {
    /// Makes a world's key in `keyDirectory` if it has none, so the vault encrypts the world from its first
    /// event (at deploy, for a template that asks for privacy).
    public static func prepare(world: String, keyDirectory: String) throws(VaultFailure) {
        var settings = VaultSettings(directory: "")
        settings.keyDirectory = keyDirectory
        guard access(keyDirectory + "/" + world + ".key", F_OK) != 0 else { return }
        _ = try VaultWorld.loadKey(world: world, settings: settings, create: true)
    }
}
