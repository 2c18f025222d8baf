import Testing
import SoulfraRate

@Suite("Token buckets")
struct TokenBucketTests {
    let second: UInt64 = 1_000_000_000

    @Test("starts full, refills at its rate up to its capacity, and ignores a clock that went backwards")
    func refill() {
        var b = TokenBucket(ratePerSecond: 10, capacity: 5, now: 100 * second)
        let five = b.take(5), sixth = b.take(1)
        #expect(five && !sixth)
        b.refill(now: 100 * second + second / 10)  // 0.1 s: one token
        let one = b.take(1), two = b.take(1)
        #expect(one && !two)
        b.refill(now: 200 * second)  // long idle: capped at 5
        #expect(b.tokens == 5)
        b.refill(now: 150 * second)
        #expect(b.tokens == 5 && b.refilledAt == 200 * second)
    }

    @Test("take(upTo:) grants what is there in whole tokens; take(n) all or nothing")
    func partial() {
        var b = TokenBucket(ratePerSecond: 100, capacity: 100, now: 0)
        let got = [b.take(upTo: 30), b.take(upTo: 500), b.take(upTo: 1)]
        #expect(got == [30, 70, 0])
        let more = b.take(1)
        #expect(!more)
    }

    @Test("a charge may go into debt, which delays later grants until repaid")
    func debt() {
        var b = TokenBucket(ratePerSecond: 1_000, capacity: 1_000, now: 0)
        b.charge(3_000)
        #expect(b.tokens == -2_000)
        b.refill(now: 2 * second)
        let early = b.take(upTo: 10)
        #expect(early == 0, "still in debt after two seconds")
        b.refill(now: 2 * second + second / 100)  // 10 ms more: 10 tokens
        let late = b.take(upTo: 100)
        #expect(late == 10)
    }

    @Test("a quota of 0 is no limit; a rate of 0 is the burst and nothing more; waits round up to whole seconds")
    func unlimitedAndWaits() {
        var burstOnly = TokenBucket(ratePerSecond: 0, capacity: 2, now: 0)
        let two = burstOnly.take(2)
        burstOnly.refill(now: 100 * second)
        let third = burstOnly.take(1)
        #expect(two && !third && burstOnly.secondsUntil(1) == .max, "a bucket that never refills gave more than its burst")
        var u = TokenBucket(quotaPerSecond: 0, now: 0)
        let all = u.take(1_000_000), seven = u.take(upTo: 7)
        #expect(all && seven == 7 && u.secondsUntil(5) == 0)
        var b = TokenBucket(ratePerSecond: 2, capacity: 2, now: 0)
        #expect(b.secondsUntil(1) == 0)
        let both = b.take(2)
        #expect(both)
        #expect(b.secondsUntil(1) == 1)
        #expect(b.secondsUntil(2) == 1)
        b.charge(4)
        #expect(b.secondsUntil(1) == 3)
    }
}
