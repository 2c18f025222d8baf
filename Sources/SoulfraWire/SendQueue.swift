/// Output for one socket, double-buffered: `out` is appended to while `sending` is with the kernel. `take`
/// hands `sending` over whole (first swapping in `out` when `sending` is empty), and nothing moves the bytes
/// of a send in flight; a short send leaves the rest in `sending`, which goes first next time, before anything
/// newer. The one send queue of broker links, gateway connections, the gateway's links to other loops and
/// admin connections.
public final class SendQueue {
    // Stored properties are `@exclusivity(unchecked)` for the reason given at `ByteQueue`.
    /// Where new output is appended.
    @exclusivity(unchecked) public private(set) var out: ByteQueue
    /// What was handed to the kernel and is not yet confirmed sent.
    @exclusivity(unchecked) public private(set) var sending: ByteQueue
    @exclusivity(unchecked) public private(set) var inFlight = false

    /// `tight`: the buffers grow by a quarter past 4 KiB rather than doubling (`ByteQueue`).
    public init(tight: Bool = false) {
        out = ByteQueue(tight: tight)
        sending = ByteQueue(tight: tight)
    }

    /// Bytes waiting, including a send in flight.
    @inline(__always) public var count: Int { out.count + sending.count }
    @inline(__always) public var isEmpty: Bool { out.isEmpty && sending.isEmpty }

    /// The bytes to send now (valid and unmoved until `sent`); nil while a send is in flight or nothing waits.
    @inline(__always)
    public func take() -> UnsafeRawBufferPointer? {
        guard !inFlight else { return nil }
        if sending.isEmpty {
            guard !out.isEmpty else { return nil }
            swap(&sending, &out)
        }
        inFlight = true
        return sending.readable
    }

    /// The send handed out by `take` completed with `count` bytes written (0: it failed). With none in flight
    /// (the owner reports an empty hand-off) nothing changes.
    @inline(__always)
    public func sent(_ count: Int) {
        guard inFlight else {
            precondition(count == 0, "\(count) bytes reported sent with no send in flight")
            return
        }
        inFlight = false
        sending.consume(min(count, sending.count))
    }

    /// Gives back the buffers' memory once nothing waits (an idle socket keeps none).
    public func shrinkIfIdle() {
        out.shrinkIfEmpty()
        if !inFlight { sending.shrinkIfEmpty() }
    }
}
