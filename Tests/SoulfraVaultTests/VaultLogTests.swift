import Testing
import SoulfraTestSupport
@testable import SoulfraVault

/// A disk as the vault's log sees it: writes land in the file's page cache, a sync makes what was written
/// durable, and a crash keeps what was synced plus any part of what was not — possibly torn, possibly garbage.
/// Writes can be made short or failing.
struct SimulatedDisk {
    var file: [UInt8] = []
    /// Bytes known on stable storage.
    var synced = 0
    /// The next write is cut to this many bytes (a short write).
    var shortNext: Int?
    /// Writes and syncs fail with this errno while set.
    var failing: Int32?
    /// Writes so far, and the one (counted from 1) that lands whole but whose sync fails with EIO.
    var writes = 0
    var syncFailsOnWrite: Int?

    /// Performs a write-with-linked-sync; returns the two results as the loop would report them.
    mutating func writeAndSync(_ bytes: ArraySlice<UInt8>, at offset: UInt64) -> (written: Int32, synced: Int32) {
        if let e = failing { return (-e, -LinuxErrno.canceled) }
        let n = min(bytes.count, shortNext ?? bytes.count)
        shortNext = nil
        let at = Int(offset)
        if file.count < at + n { file += [UInt8](repeating: 0, count: at + n - file.count) }
        file.replaceSubrange(at..<(at + n), with: bytes.prefix(n))
        guard n == bytes.count else { return (Int32(n), -LinuxErrno.canceled) }
        writes += 1
        if writes == syncFailsOnWrite { return (Int32(n), -5) }
        synced = max(synced, at + n)
        return (Int32(n), 0)
    }

    /// The file after a crash: the synced bytes, then `keep` bytes of what was written but not synced, then
    /// `garbage` random bytes.
    func afterCrash(keep: Int, garbage: Int, _ rng: inout SeededRandom) -> [UInt8] {
        let unsynced = max(0, file.count - synced)
        return Array(file[..<synced]) + Array(file[synced..<(synced + min(keep, unsynced))])
            + (0..<garbage).map { _ in UInt8.random(in: 0...255, using: &rng) }
    }
}

/// Runs the actions a policy returns against a disk, completing every write at once; returns what was
/// acknowledged and failed.
func drive(_ g: inout GroupCommit, _ disk: inout SimulatedDisk, _ actions: [GroupCommit.Action], now: UInt64)
    -> (acked: [GroupCommit.Durable], failed: [UInt64]) {
    var queue = actions
    var acked: [GroupCommit.Durable] = []
    var failed: [UInt64] = []
    while !queue.isEmpty {
        let a = queue.removeFirst()
        switch a {
        case .writeAndSync(let offset, let from, let count):
            let r = disk.writeAndSync(g.staged[from..<(from + count)], at: offset)
            queue += g.completed(written: r.written, synced: r.synced, now: now)
        case .acknowledge(let d): acked += d
        case .fail(let ids, _): failed += ids
        case .wake(let at): queue += g.tick(now: at)  // the owner looks again when told
        case .prepare(let offset, let count):
            let r = disk.writeAndSync(ArraySlice(repeating: 0, count: count), at: offset)
            queue += g.prepared(written: r.written, synced: r.synced, now: now)
        }
    }
    return (acked, failed)
}

func records(_ bytes: [UInt8], after: UInt64 = 0) -> (records: [VaultRecord], valid: Int, tail: SegmentTail) {
    var out: [VaultRecord] = []
    let r = bytes.withUnsafeBytes { SegmentScan.scan($0, after: after) { rec, _ in out.append(rec) } }
    return (out, r.valid, r.tail)
}

func event(_ id: UInt64, _ session: String = "s", _ text: String) -> GroupCommit.Append {
    GroupCommit.Append(id: id, session: Array(session.utf8), unixMilliseconds: 1_700_000_000_000 + id, payload: Array(text.utf8))
}

@Suite("Vault log: records, recovery, group commit (sans-IO)")
struct VaultLogTests {
    @Test("CRC-32C matches the standard check value and is the same in pieces as whole")
    func crc() {
        #expect(Array("123456789".utf8).withUnsafeBytes { CRC32C.checksum($0) } == 0xE306_9283)
        let data = (0..<1_000).map { UInt8(truncatingIfNeeded: $0 &* 31 &+ 7) }
        let whole = data.withUnsafeBytes { CRC32C.checksum($0) }
        for split in [0, 1, 7, 8, 9, 500, 999, 1_000] {
            let a = data[..<split].withUnsafeBytes { CRC32C.checksum($0) }
            let b = data[split...].withUnsafeBytes { CRC32C.checksum($0, continuing: a) }
            #expect(b == whole, "split at \(split)")
        }
    }

    @Test("records round-trip: every field, empty and long payloads, binary sessions")
    func roundTrip() {
        let list = [
            VaultRecord(sequence: 1, sessionSequence: 1, unixMilliseconds: 42, kind: 3, flags: 1, session: Array("u-1".utf8), payload: Array("hello".utf8)),
            VaultRecord(sequence: 2, sessionSequence: 7, unixMilliseconds: .max, session: [], payload: []),
            VaultRecord(sequence: 3, sessionSequence: 1, unixMilliseconds: 0, session: [0, 255, 10], payload: [UInt8](repeating: 0xAB, count: 70_000)),
        ]
        var bytes: [UInt8] = []
        for r in list { r.encode(into: &bytes) }
        #expect(bytes.count == list.reduce(0) { $0 + $1.encodedBytes })
        let scanned = records(bytes)
        #expect(scanned.records == list && scanned.valid == bytes.count && scanned.tail == .clean)
    }

    @Test("a log torn at every byte offset is cut there: every whole record before it is kept, nothing after")
    func tornEverywhere() {
        var bytes: [UInt8] = []
        var ends: [Int] = []
        for i in 1...6 {
            VaultRecord(sequence: UInt64(i), sessionSequence: UInt64(i), unixMilliseconds: 1, session: Array("s".utf8),
                        payload: Array(String(repeating: "x", count: i * 5).utf8)).encode(into: &bytes)
            ends.append(bytes.count)
        }
        for cut in 0...bytes.count {
            let r = records(Array(bytes[..<cut]))
            let whole = ends.filter { $0 <= cut }
            #expect(r.records.count == whole.count, "cut at \(cut)")
            #expect(r.valid == (whole.last ?? 0), "cut at \(cut)")
            #expect(r.tail == (r.valid == cut ? .clean : .torn(at: r.valid)), "cut at \(cut)")
        }
    }

    @Test("a flipped bit, a stale record and an impossible length are corruption: the scan stops before them")
    func corruption() {
        var bytes: [UInt8] = []
        for i in 1...3 {
            VaultRecord(sequence: UInt64(i), sessionSequence: 1, unixMilliseconds: 1, session: [], payload: Array("abc".utf8)).encode(into: &bytes)
        }
        let second = VaultRecord.headerBytes + 3
        var flipped = bytes
        flipped[second + VaultRecord.headerBytes] ^= 0x04
        if case .corrupt(let at, _) = records(flipped).tail { #expect(at == second) } else { Issue.record("a flipped bit passed") }
        #expect(records(flipped).records.count == 1)
        // A record whose checksum is right but whose sequence does not follow (left over from an older write).
        var stale = Array(bytes[..<second])
        VaultRecord(sequence: 9, sessionSequence: 1, unixMilliseconds: 1, session: [], payload: []).encode(into: &stale)
        if case .corrupt(_, let why) = records(stale).tail { #expect(why.contains("sequence")) } else { Issue.record("a stale record passed") }
        var huge = Array(bytes[..<second])
        huge += [0xFF, 0xFF, 0xFF, 0x7F] + [UInt8](repeating: 0, count: 40)
        if case .corrupt(_, let why) = records(huge).tail { #expect(why.contains("length")) } else { Issue.record("an impossible length passed") }
    }

    @Test("group commit: appends that arrive while a write is in flight share the next sync; acks only after it")
    func groupCommit() {
        var g = GroupCommit()
        var disk = SimulatedDisk()
        let first = g.append(event(1, "a", "one"), now: 10)
        #expect(first == [.writeAndSync(offset: 0, from: 0, count: g.staged.count)])
        // Three more arrive while the first write is in flight: they wait.
        for id: UInt64 in 2...4 { #expect(g.append(event(id, id == 3 ? "b" : "a", "more"), now: 11).isEmpty) }
        #expect(g.writing && g.pendingBytes > 0)
        // The first write completes: 1 is acknowledged, 2…4 go out together.
        let r = drive(&g, &disk, first, now: 20)
        #expect(r.acked.map(\.id) == [1, 2, 3, 4])
        #expect(g.batches == 2 && g.largestBatch == 3)
        #expect(r.acked.map(\.sequence) == [1, 2, 3, 4])
        #expect(r.acked.map(\.sessionSequence) == [1, 2, 1, 3], "per-session numbers: a, a, b, a")
        let scanned = records(disk.file)
        #expect(scanned.records.map { String(decoding: $0.payload, as: UTF8.self) } == ["one", "more", "more", "more"])
        #expect(g.durableBytes == UInt64(disk.file.count))
    }

    @Test("gathering: after a batch of several, the next waits for as many appends as were outstanding, or one commit time")
    func gathering() {
        var g = GroupCommit(maxGatherNanoseconds: 1_000_000)
        var disk = SimulatedDisk()
        // Batch 1: one append (2–4 wait behind it); batch 2: 2–4.
        var actions = g.append(event(1, "a", "x"), now: 0)
        for id: UInt64 in 2...4 { actions += g.append(event(id, "a", "x"), now: 1) }
        guard case .writeAndSync(let o, let f, let c) = actions[0] else { Issue.record("no write"); return }
        let r1 = disk.writeAndSync(g.staged[f..<(f + c)], at: o)
        let after1 = g.completed(written: r1.written, synced: r1.synced, now: 100_000)
        #expect(after1.count == 2, "one append acknowledged: no gathering, 2–4 start at once")
        guard case .writeAndSync(let o2, let f2, let c2) = after1[1] else { Issue.record("no second write"); return }
        let r2 = disk.writeAndSync(g.staged[f2..<(f2 + c2)], at: o2)
        // Batch 2 completes after 300 µs with three producers answered and nobody waiting: gather them.
        let after2 = g.completed(written: r2.written, synced: r2.synced, now: 400_000)
        #expect(after2.count == 2 && after2.last == .wake(at: 400_000 + 300_000))
        #expect(g.gatherTarget == 3)
        #expect(g.append(event(5, "a", "x"), now: 450_000).isEmpty, "1 of 3: wait")
        #expect(g.append(event(6, "a", "x"), now: 460_000).isEmpty, "2 of 3: wait")
        let third = g.append(event(7, "a", "x"), now: 470_000)
        #expect(third.count == 1 && g.writing, "all three are back: one batch for them")
        guard case .writeAndSync(let o3, let f3, let c3) = third[0] else { return }
        let r3 = disk.writeAndSync(g.staged[f3..<(f3 + c3)], at: o3)
        let after3 = g.completed(written: r3.written, synced: r3.synced, now: 700_000)
        #expect(after3.last == .wake(at: 700_000 + 230_000))
        // Only one comes back: it goes once the commit time is up, not before.
        #expect(g.append(event(8, "a", "x"), now: 710_000).isEmpty)
        #expect(g.tick(now: 900_000).isEmpty)
        #expect(g.tick(now: 930_000).count == 1 && g.gatherTimeouts == 1 && g.gathers == 2)
        #expect(g.largestBatch == 3)
    }

    @Test("a short write continues where it stopped; the record lands whole")
    func shortWrite() {
        var g = GroupCommit()
        var disk = SimulatedDisk()
        disk.shortNext = 10
        let r = drive(&g, &disk, g.append(event(1, "s", String(repeating: "z", count: 100)), now: 1), now: 2)
        #expect(r.acked.map(\.id) == [1])
        #expect(records(disk.file).records.count == 1 && records(disk.file).tail == .clean)
    }

    @Test("a full disk fails the batch with its errno, gives the sequence numbers back, and appends resume after the delay")
    func fullDisk() {
        var g = GroupCommit(retryNanoseconds: 100, maxRetryNanoseconds: 400)
        var disk = SimulatedDisk()
        _ = drive(&g, &disk, g.append(event(1, "s", "kept"), now: 0), now: 0)
        disk.failing = 28  // ENOSPC
        let failedFirst = g.append(event(2, "s", "lost"), now: 10)
        var r = drive(&g, &disk, failedFirst, now: 10)
        #expect(r.failed == [2] && r.acked.isEmpty)
        #expect(g.appendsFailed == 1)
        // While the delay runs, new appends wait; a tick before it is over does nothing.
        #expect(g.append(event(3, "s", "later"), now: 20).isEmpty)
        #expect(g.tick(now: 50).isEmpty)
        disk.failing = nil  // space is back
        r = drive(&g, &disk, g.tick(now: 111), now: 111)
        #expect(r.acked.map(\.numbers) == [[3, 2, 2]], "no gap where the failed append was")
        let scanned = records(disk.file)
        #expect(scanned.records.map { String(decoding: $0.payload, as: UTF8.self) } == ["kept", "later"] && scanned.tail == .clean)
    }

    @Test("a batch whose sync failed is overwritten by the next: its records never come back, even where they would follow on")
    func failedBatchNeverComesBack() {
        var g = GroupCommit(retryNanoseconds: 1)
        var disk = SimulatedDisk()
        _ = drive(&g, &disk, g.append(event(1, "s", "kept"), now: 0), now: 0)
        // A and B wait behind X and go out together; both land, but the sync fails: both are reported failed.
        var first = g.append(event(2, "s", "XXXX"), now: 1)
        first += g.append(event(3, "s", "AAAA"), now: 1)
        first += g.append(event(4, "s", "BBBB"), now: 1)
        disk.syncFailsOnWrite = 3  // 1: "kept", 2: X, 3: A and B
        let r1 = drive(&g, &disk, first, now: 1)
        #expect(r1.acked.map(\.id) == [2] && r1.failed == [3, 4])
        let r1b = drive(&g, &disk, g.tick(now: 10), now: 10)
        // C has A's size and takes A's sequence: without zeroing, B (sequence 3) would follow on from it.
        #expect(r1b.acked.isEmpty && r1b.failed.isEmpty)
        let r2 = drive(&g, &disk, g.append(event(5, "s", "CCCC"), now: 20), now: 20)
        #expect(r2.acked.map(\.numbers) == [[5, 3, 3]])
        let found = records(disk.file).records.map { String(decoding: $0.payload, as: UTF8.self) }
        #expect(found == ["kept", "XXXX", "CCCC"], "a failed event came back: \(found)")
        #expect(records(disk.file).records.map(\.sequence) == (0..<found.count).map { UInt64($0 + 1) })
    }

    @Test("zeros are kept written ahead of the records; a batch waits for a chunk in flight it would overlap; recovery reads the zeros as the end")
    func preparation() {
        var g = GroupCommit(prepareAheadBytes: 8 << 10, prepareChunkBytes: 4 << 10, prepareLimit: 1 << 20)
        var disk = SimulatedDisk()
        // The first batch goes at once; the first chunk of zeros leaves a gap after it for the next batches.
        let first = g.append(event(1, "s", "one"), now: 0)
        #expect(first.count == 2)
        guard case .prepare(let offset, let count) = first[1] else { Issue.record("no zeros: \(first)"); return }
        #expect(offset == 4_096 + 4_096 && count == 4 << 10, "past the page the record is in, and a gap of 4 KiB")
        // Completing everything: the records end in zeros, which a recovery reads as the clean end.
        let r = drive(&g, &disk, first, now: 1)
        #expect(r.acked.map(\.id) == [1])
        #expect(g.preparedBytes >= offset + UInt64(count) && g.preparedChunks >= 1)
        #expect(disk.file.count > Int(g.durableBytes))
        let scanned = records(disk.file)
        #expect(scanned.records.count == 1 && scanned.valid == Int(g.durableBytes) && scanned.tail == .clean)
        // Zeros then anything else is not an end: it is cut.
        var damaged = disk.file
        damaged[damaged.count - 1] = 7
        #expect(records(damaged).tail != .clean && records(damaged).valid == Int(g.durableBytes))

        // Appends catch up with a chunk in flight: the batch that would overlap it waits until it is written.
        var h = GroupCommit(preparedBytes: 0, prepareAheadBytes: 100_000, prepareChunkBytes: 4_096, prepareLimit: 1 << 20)
        var disk2 = SimulatedDisk()
        var held: [GroupCommit.Action] = []
        var id: UInt64 = 0
        var acked: [UInt64] = []
        for _ in 0..<400 {
            id += 1
            for a in h.append(event(id, "s", String(repeating: "p", count: 900)), now: id) {
                if case .prepare = a { held.append(a) } else { acked += drive(&h, &disk2, [a], now: id).acked.map(\.id) }
            }
            if h.writing == false && h.pendingBytes > 0 && h.preparing != nil {
                // Waiting for the zeros: nothing was written over them.
                let chunk = h.preparing!
                #expect(h.durableBytes + UInt64(h.pendingBytes) > chunk.offset)
                #expect(disk2.file.count <= Int(chunk.offset) || disk2.file[Int(chunk.offset)...].allSatisfy { $0 == 0 })
                acked += drive(&h, &disk2, [held.removeFirst()], now: id).acked.map(\.id)
            }
        }
        #expect(acked == Array(1...UInt64(acked.count)) && acked.count > 300)
        #expect(records(disk2.file).records.count == acked.count)

        // A chunk that fails (a full disk) fails no append, and is tried again after the delay.
        var f = GroupCommit(retryNanoseconds: 1_000, prepareAheadBytes: 8 << 10, prepareChunkBytes: 4 << 10, prepareLimit: 1 << 20)
        var disk3 = SimulatedDisk()
        let start = f.append(event(1, "s", "x"), now: 0)
        guard case .writeAndSync(let o, let from, let c) = start[0], case .prepare = start[1] else { Issue.record("\(start)"); return }
        let w = disk3.writeAndSync(f.staged[from..<(from + c)], at: o)
        _ = f.completed(written: w.written, synced: w.synced, now: 10)
        #expect(f.prepared(written: -28, synced: -LinuxErrno.canceled, now: 20).isEmpty)
        #expect(f.prepareFailures == 1 && f.appendsFailed == 0 && f.preparing == nil)
        let early = f.append(event(2, "s", "y"), now: 500)
        #expect(early.count == 1, "the batch goes, no zeros before the delay: \(early)")
        let later = drive(&f, &disk3, early, now: 500)
        #expect(later.acked.map(\.id) == [2])
        #expect(f.tick(now: 1_100).contains { if case .prepare = $0 { true } else { false } })
    }

    @Test("a crash at any point keeps every acknowledged event exactly once and in order", arguments: [1, 2, 3])
    func crashes(seed: UInt64) {
        var rng = SeededRandom(seed: seed)
        for round in 0..<300 {
            // Every other round keeps zeros written ahead of the records, in small chunks.
            var g = round % 2 == 0 ? GroupCommit(maxBatchBytes: 512)
                : GroupCommit(maxBatchBytes: 512, prepareAheadBytes: 1_024, prepareChunkBytes: 300, prepareLimit: 8_192)
            var disk = SimulatedDisk()
            var acked: [GroupCommit.Durable] = []
            var id: UInt64 = 0
            var inFlight: [GroupCommit.Action] = []
            // Appends arrive and writes complete in a random interleaving; the crash comes at a random step.
            let steps = Int.random(in: 1...60, using: &rng)
            for _ in 0..<steps {
                if Bool.random(using: &rng) || inFlight.isEmpty {
                    id += 1
                    inFlight += g.append(event(id, "s\(id % 3)", String(repeating: "e", count: Int.random(in: 0...200, using: &rng))), now: id)
                } else {
                    if Int.random(in: 0..<8, using: &rng) == 0 { disk.shortNext = Int.random(in: 0...50, using: &rng) }
                    let r = drive(&g, &disk, [inFlight.removeFirst()], now: id)
                    acked += r.acked
                }
            }
            let crashed = disk.afterCrash(keep: Int.random(in: 0...300, using: &rng), garbage: Int.random(in: 0...40, using: &rng), &rng)
            let recovered = records(crashed)
            let found = recovered.records.map(\.sequence)
            #expect(found == (0..<found.count).map { UInt64($0 + 1) }, "seed \(seed) round \(round): out of order")
            for d in acked {
                #expect(found.contains(d.sequence), "seed \(seed) round \(round): acknowledged \(d.sequence) lost")
            }
            #expect(Set(found).count == found.count, "a record found twice")
        }
    }
}
