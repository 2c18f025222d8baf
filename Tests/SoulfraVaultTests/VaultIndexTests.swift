import Testing
import SoulfraVault

@Suite("Vault messages, index and cipher (sans-IO)")
struct VaultIndexTests {
    @Test("every vault message round-trips; truncated or trailing bytes are refused")
    func messagesRoundTrip() {
        let all: [VaultMessage] = [
            .ack([.init(sequence: 7, sessionSequence: 3), .init(sequence: 9, sessionSequence: 4)]),
            .fail(count: 2, errno: 28, retryAfterMilliseconds: 100, reason: "No space left on device"),
            .record(StoredEvent(sequence: 1, sessionSequence: 1, unixMilliseconds: 1_700_000_000_000, kind: 2,
                                session: Array("u1".utf8), payload: Array("{\"a\":1}".utf8))),
            .end(next: 42, more: true),
        ]
        for m in all {
            var bytes: [UInt8] = []
            m.encode(into: &bytes)
            #expect(bytes.withUnsafeBytes { VaultMessage.decode($0) } == m)
            if case .record = m {} else {
                #expect(Array(bytes.dropLast()).withUnsafeBytes { VaultMessage.decode($0) } == nil, "\(m) truncated")
                #expect((bytes + [0]).withUnsafeBytes { VaultMessage.decode($0) } == nil, "\(m) with a trailing byte")
            }
        }
        #expect([UInt8(9)].withUnsafeBytes { VaultMessage.decode($0) } == nil)
    }

    @Test("OPEN details parse into requests and back; anything else is refused")
    func requests() {
        #expect(VaultRequest(detail: "append") == .append)
        #expect(VaultRequest(detail: "read after=5 limit=10") == .read(after: 5, limit: 10))
        #expect(VaultRequest(detail: "replay from_ms=1 to_ms=9 after=2 limit=3 bytes=4096")
                == .replay(fromMilliseconds: 1, toMilliseconds: 9, after: 2, limit: 3, maxBytes: 4096))
        for r in [VaultRequest.append, .read(after: 1, limit: 2, maxBytes: 3), .replay(fromMilliseconds: 4, toMilliseconds: 5, after: 6, limit: 7)] {
            #expect(VaultRequest(detail: r.detail) == r)
        }
        for bad in ["", "delete", "append after=1", "read limit=0", "read limit=1001", "read after=-1", "read after=x",
                    "read bytes=0", "read nope=1", "replay after"] {
            #expect(VaultRequest(detail: bad) == nil, "\(bad)")
        }
    }

    func index(_ sessions: [String], segmentEvery: Int = 1_000) -> VaultIndex {
        var ix = VaultIndex()
        var per: [String: UInt64] = [:]
        for (i, s) in sessions.enumerated() {
            per[s, default: 0] += 1
            ix.add(RecordPosition(segment: UInt32(1 + i / segmentEvery), offset: UInt64(i * 100), length: 100, sequence: UInt64(i + 1),
                                  sessionSequence: per[s]!, unixMilliseconds: UInt64(1_000 + i * 10)), session: Array(s.utf8))
        }
        return ix
    }

    @Test("the index pages a session in order and a time range in log order, and forgets dropped segments")
    func indexQueries() {
        var ix = index(["a", "b", "a", "a", "b", "c", "a"], segmentEvery: 3)
        let a = ix.session(Array("a".utf8), after: 1, limit: 2)
        #expect(a.positions.map(\.sequence) == [3, 4] && a.more)
        #expect(ix.session(Array("a".utf8), after: 3, limit: 10).positions.map(\.sequence) == [7])
        #expect(ix.session(Array("z".utf8), after: 0, limit: 10).positions.isEmpty)
        #expect(ix.lastSessionSequence(Array("a".utf8)) == 4)
        let r = ix.range(fromMilliseconds: 1_015, toMilliseconds: 1_055, after: 0, limit: 10)
        #expect(r.positions.map(\.sequence) == [3, 4, 5, 6] && !r.more)
        #expect(ix.range(fromMilliseconds: 0, toMilliseconds: .max, after: 5, limit: 1).positions.map(\.sequence) == [6])
        ix.dropSegments(before: 2)  // records 1–3 go
        #expect(ix.firstSequence == 4)
        #expect(ix.session(Array("a".utf8), after: 0, limit: 10).positions.map(\.sessionSequence) == [3, 4])
        #expect(ix.session(Array("b".utf8), after: 0, limit: 10).positions.map(\.sequence) == [5])
        #expect(ix.position(ofSequence: 2) == nil && ix.position(ofSequence: 7)?.sessionSequence == 4)
    }

    @Test("sealed payloads: nonces never repeat, the AAD binds world, session and kind, a new epoch keeps old records readable")
    func cipher() throws {
        let key = try #require(VaultCipher.newKey())
        let c = VaultCipher(key: key, epoch: 1, world: "w")
        let plain = Array("hello".utf8)
        let s1 = try #require(c.seal(plain, session: [1], kind: 1))
        let s2 = try #require(c.seal(plain, session: [1], kind: 1))
        #expect(s1 != s2 && s1.prefix(12) != s2.prefix(12))
        #expect(c.open(s1, session: [1], kind: 1) == plain)
        #expect(c.open(s1, session: [2], kind: 1) == nil)
        #expect(c.open(s1, session: [1], kind: 2) == nil)
        #expect(VaultCipher(key: key, epoch: 1, world: "other").open(s1, session: [1], kind: 1) == nil)
        var flipped = s1
        flipped[14] ^= 1
        #expect(c.open(flipped, session: [1], kind: 1) == nil)
        let later = VaultCipher(key: key, epoch: 2, world: "w")
        #expect(later.open(s1, session: [1], kind: 1) == plain)
        #expect(try #require(later.seal(plain, session: [1], kind: 1)).prefix(4) == [0, 0, 0, 2])
        #expect(c.open(try #require(c.seal([], session: [], kind: 0)), session: [], kind: 0) == [])
    }
}
