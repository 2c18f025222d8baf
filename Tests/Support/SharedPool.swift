import Dispatch

/// Holds threads of libdispatch's shared pool (each waiting on a semaphore) until `release`: for showing that
/// code under test does not depend on that pool, whose few threads any caller in the process can tie up.
public final class SharedPoolBlocker: Sendable {
    private let gate = DispatchSemaphore(value: 0)
    private let threads: Int

    public init(threads: Int = 64) {
        self.threads = threads
        for _ in 0..<threads { DispatchQueue.global().async { [gate] in gate.wait() } }
    }

    /// Lets every held thread go (once).
    public func release() {
        for _ in 0..<threads { gate.signal() }
    }
}
