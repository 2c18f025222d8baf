#if canImport(Glibc)
import Glibc
#endif
import Foundation
import Synchronization
import SoulfraLimits
import SoulfraLoop
import SoulfraNet
import SoulfraPeer
import SoulfraPeerLink
import SoulfraVault
import SoulfraVaultStore
import SoulfraWire

/// `soulfra vault`: the vault on its own, for a daemon run with `vault.directory: ""`. One io_uring loop
/// stores every world and serves one link per broker loop (a world's streams arrive on its loop's link). Links
/// are dialled and handshaken on a helper thread, then handed to the loop; a lost link is dialled again with
/// backoff while the others go on. (`@unchecked Sendable`: other threads touch only `arrivals`, `dialing` and
/// `stopping`, each behind its own lock or atomic, and the loop's mailbox; everything else is the loop's.)
public final class VaultProcess: LoopDelegate, @unchecked Sendable {
    public struct Options: Sendable {
        public var broker: PeerAddress
        public var token: String
        public var settings: VaultSettings
        public var limits = VaultLimits()
        public var maxFrameBytes: UInt32 = 64 << 10

        public init(broker: PeerAddress, token: String, settings: VaultSettings) {
            self.broker = broker
            self.token = token
            self.settings = settings
        }
    }

    /// A link dialled on the helper thread, on its way to the loop.
    final class Arrival: @unchecked Sendable {
        let fd: Int32
        let link: PeerLink
        init(fd: Int32, link: PeerLink) {
            self.fd = fd
            self.link = link
        }
    }

    final class Remote {
        let peer: PeerLink
        let queue = SendQueue()
        init(peer: PeerLink) { self.peer = peer }
    }

    let options: Options
    let loop: EventLoop
    let store: VaultStore
    let service: VaultService
    let log: @Sendable (String) -> Void
    private var remotes: [UInt32: Remote] = [:]
    /// Broker loops (from the first WELCOME), which have a link, and when each missing one is dialled next.
    private var loopCount = 0
    private var linked: Set<Int> = []
    private var dialAt: [Int: UInt64] = [:]
    private var backoff: [Int: UInt64] = [:]
    private let arrivals = Mutex<[Arrival]>([])
    private let dialing = Mutex<Set<Int>>([])
    private let stopping = Atomic<Bool>(false)

    /// Opens the store (recovering every world found: blocking reads before serving).
    public init(_ options: Options, log: @escaping @Sendable (String) -> Void) throws {
        self.options = options
        self.log = log
        loop = try EventLoop()
        store = VaultStore(settings: options.settings, loop: loop)
        service = VaultService(storage: store, highWaterBytes: options.limits.highWaterBytes,
                               lowWaterBytes: options.limits.highWaterBytes / 2, maxEventBytes: options.limits.maxEventBytes)
        store.log = log
        let opened = try store.openExisting()
        store.onDurable = { [unowned service] _, done in service.durable(done) }
        store.onFailed = { [unowned service] _, ids, errno, retry in
            service.failed(ids, errno: errno, retryAfterMilliseconds: retry, reason: String(cString: strerror(errno)))
        }
        loop.delegate = self
        log("vault: \(opened.count) world(s) under \(options.settings.directory); attaching to \(options.broker)")
    }

    /// Runs until `stop()`; dials the broker first (its first link tells how many loops it has).
    public func run() {
        service.unixMilliseconds = unixMilliseconds()
        dial(loop: Int(Wire.anyLoop))
        loop.run()
        store.close()
    }

    /// Stops the loop (from any thread); what is in flight completes first.
    public func stop() {
        stopping.store(true, ordering: .relaxed)
        loop.mailbox.wake()
    }

    /// Dials a link on a helper thread and posts it to the loop.
    private func dial(loop index: Int) {
        guard dialing.withLock({ $0.insert(index).inserted }) else { return }
        let identity = PeerIdentity(kind: .vault, token: options.token, maxFrameBytes: options.maxFrameBytes, loop: UInt16(truncatingIfNeeded: index))
        let address = options.broker
        Thread { [self] in
            let c = PeerConnection(address: address, identity: identity)
            do {
                try c.handshake(timeoutMilliseconds: 2_000)
                let (fd, link) = c.detach()
                arrivals.withLock { $0.append(Arrival(fd: fd, link: link)) }
            } catch {
                log("vault: cannot attach to \(address) (loop \(index == Int(Wire.anyLoop) ? "any" : String(index))): \(error); retrying")
            }
            dialing.withLock { _ = $0.remove(index) }
            loop.mailbox.wake()
        }.start()
    }

    // MARK: - LoopDelegate

    public func loopAccepted(conn: UInt32, listener: Int, now: UInt64) -> Bool { false }

    public func loopReceived(conn: UInt32, bytes: UnsafeRawBufferPointer, now: UInt64) {
        remotes[conn]?.peer.receive(bytes, nowMilliseconds: now / 1_000_000)
    }

    public func loopSent(conn: UInt32, count: Int, now: UInt64) { remotes[conn]?.queue.sent(count) }

    public func loopClosed(conn: UInt32, reason: LoopCloseReason, now: UInt64) {
        guard let r = remotes.removeValue(forKey: conn) else { return }
        let index = Int(r.peer.welcome?.loopIndex ?? 0)
        service.remove(r.peer)
        r.peer.transportClosed(reason: "socket closed")
        linked.remove(index)
        let delay = min((backoff[index] ?? 50_000_000) * 2, 2_000_000_000)
        backoff[index] = delay
        dialAt[index] = now &+ delay
        log("vault: link to broker loop \(index) lost (\(reason)); dialling again")
    }

    public func loopTick(now: UInt64) {
        service.unixMilliseconds = unixMilliseconds()
        store.tick(now: now, unixSeconds: service.unixMilliseconds / 1_000)
        service.tick(now: now)
        for (conn, r) in remotes where r.peer.brokerSilent(now: now / 1_000_000) || r.peer.isClosed {
            loop.close(conn: conn, flush: !r.peer.isClosed, now: now)
        }
        if loopCount == 0 && remotes.isEmpty && dialing.withLock({ $0.isEmpty }) && (dialAt[-1] ?? 0) <= now {
            dialAt[-1] = now &+ 1_000_000_000
            dial(loop: Int(Wire.anyLoop))
        }
        for i in 0..<loopCount where !linked.contains(i) && (dialAt[i] ?? 0) <= now {
            dialAt[i] = now &+ 2_000_000_000  // a dial in progress is not started twice
            dial(loop: i)
        }
    }

    public func loopMailbox(now: UInt64) {
        store.mailbox(now: now)
        if stopping.load(ordering: .relaxed) {
            for (conn, r) in remotes {
                r.peer.goaway(reason: "vault stopping")
                loop.close(conn: conn, flush: true, now: now)
            }
            loop.stop()
            return
        }
        for a in arrivals.withLock({ a in defer { a.removeAll() }; return a }) {
            guard let welcome = a.link.welcome, let conn = loop.adopt(fd: a.fd) else { continue }
            let index = Int(welcome.loopIndex)
            loopCount = Int(welcome.loopCount)
            if linked.contains(index) {
                loop.close(conn: conn, flush: false, now: now)  // a second link to a loop already served
                continue
            }
            service.add(a.link)
            remotes[conn] = Remote(peer: a.link)
            linked.insert(index)
            backoff[index] = nil
            log("vault: attached to broker loop \(index) of \(loopCount)")
        }
    }

    public func loopFlush(now: UInt64) {
        store.poll(now: now)
        for (conn, r) in remotes where !r.queue.inFlight {
            if !r.peer.output.isEmpty {
                r.queue.out.append(r.peer.output.readable)
                r.peer.output.removeAll()
            }
            guard loop.canSend(conn: conn), let bytes = r.queue.take() else { continue }
            loop.send(conn: conn, bytes: bytes)
        }
    }

    public func loopHandedOff(conn: UInt32, fd: Int32, now: UInt64) {}

    public func loopFileDone(file: UInt32, operation: FileOperation, result: Int32, now: UInt64) {
        store.fileDone(file: file, operation: operation, result: result, now: now)
    }

    public func loopPathDone(token: UInt64, operation: PathOperation, result: Int32, now: UInt64) {
        store.pathDone(token: token, result: result)
    }

    /// The vault's figures (for its own log line and tests).
    public var figures: String {
        let c = store.counters
        return "worlds=\(c.worlds) appends=\(c.appendsDurable) batches=\(c.batches) links=\(remotes.count)"
    }
}
