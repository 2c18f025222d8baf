#if canImport(Glibc)
import Glibc
#endif
import SoulfraBroker
import SoulfraLimits
import SoulfraLoop
import SoulfraPeerLink
import SoulfraVault
import SoulfraVaultStore
import SoulfraWire

/// The vault in the daemon: on each loop, the worlds of that loop kept in segment files through its ring,
/// attached to its broker as a peer of kind `vault` over an in-process link.
final class InProcessVault {
    let store: VaultStore
    let service: VaultService
    let identity: PeerIdentity
    var link: InProcessLink?

    var metrics: VaultMetrics { VaultMetrics(store: store.counters, service: service.counters) }

    init(store: VaultStore, service: VaultService, identity: PeerIdentity) {
        self.store = store
        self.service = service
        self.identity = identity
    }
}

/// The wall clock in milliseconds (events are stamped with it).
func unixMilliseconds() -> UInt64 {
    var ts = timespec()
    clock_gettime(CLOCK_REALTIME, &ts)
    return UInt64(ts.tv_sec) * 1_000 + UInt64(ts.tv_nsec) / 1_000_000
}

extension Wiring {
    /// Opens this loop's worlds under `directory` (recovering them: blocking reads, before the loop serves) and
    /// attaches the vault to this loop's broker.
    func attachVault(directory: String, limits: VaultLimits, encryptedWorlds: [String], keyDirectory: String, token: String,
                     maxFrameBytes: UInt32, now: UInt64) throws(VaultFailure) {
        var settings = VaultSettings(directory: directory)
        settings.encryptedWorlds = Set(encryptedWorlds)
        settings.keyDirectory = keyDirectory
        settings.segmentBytes = limits.segmentBytes
        settings.maxAgeSeconds = UInt64(limits.retentionMaxAgeSeconds)
        settings.maxBytes = UInt64(limits.retentionMaxBytes)
        let store = VaultStore(settings: settings, loop: loop)
        let index = inbox.index
        let loops = inboxes.count
        let mine = { (world: String) in Wire.loop(forWorld: world, count: loops) == index }
        store.log = log
        let opened = try store.openExisting(mine: mine)
        let service = VaultService(storage: store, highWaterBytes: limits.highWaterBytes, lowWaterBytes: limits.highWaterBytes / 2,
                                   maxEventBytes: limits.maxEventBytes)
        service.servesWorld = mine
        store.onDurable = { [unowned service] _, done in service.durable(done) }
        store.onFailed = { [unowned service] _, ids, errno, retry in
            service.failed(ids, errno: errno, retryAfterMilliseconds: retry, reason: String(cString: strerror(errno)))
        }
        service.unixMilliseconds = unixMilliseconds()
        let v = InProcessVault(store: store, service: service,
                               identity: PeerIdentity(kind: .vault, token: token, maxFrameBytes: maxFrameBytes, loop: UInt16(index)))
        vault = v
        attachVaultLink(v, now: now)
        if !opened.isEmpty { log("vault: loop \(index) opened \(opened.count) world(s) under \(directory)") }
    }

    private func attachVaultLink(_ v: InProcessVault, now: UInt64) {
        let peer = PeerLink(identity: v.identity)
        v.service.add(peer)
        if let link = v.link {
            link.reattach(peer, to: broker, now: now)
        } else {
            let link = InProcessLink(id: firstInProcessID + UInt32(inProcess.count), peer: peer)
            inProcess.append(link)
            v.link = link
            link.attach(to: broker, now: now)
        }
    }

    /// The vault's turn on the loop's tick: its clock, retries, rotation, retention, credit given back; a link the
    /// broker dropped is made again (outside shutdown).
    func tickVault(now: UInt64) {
        guard let v = vault else { return }
        v.service.unixMilliseconds = unixMilliseconds()
        v.store.tick(now: now, unixSeconds: v.service.unixMilliseconds / 1_000)
        v.service.tick(now: now)
        if let link = v.link, link.peer.isClosed, shutdownStarted == nil {
            v.service.remove(link.peer)
            attachVaultLink(v, now: now)
            log("vault: loop \(inbox.index) re-attached its in-process broker link")
        }
    }
}

extension Wiring {
    /// Reads a page of `world`'s events from whichever loop's vault stores it; `done` runs on this loop.
    func readVault(world: String, session: [UInt8], _ request: VaultRequest, now: UInt64,
                   done: @escaping (Result<VaultPage, VaultFailure>) -> Void) {
        let target = Wire.loop(forWorld: world, count: inboxes.count)
        guard target != inbox.index else {
            guard let v = vault else {
                return done(.failure(VaultFailure(errno: ENOENT, reason: "no vault runs in this process (vault.directory is empty)")))
            }
            return v.store.read(world: world, session: session, request, now: now, done: done)
        }
        nextVaultTicket &+= 1
        vaultReplies[nextVaultTicket] = done
        inboxes[target].commands.withLock {
            $0.append(.vaultRead(world: world, session: session, request, ticket: nextVaultTicket, replyTo: inbox.index))
        }
        inboxes[target].wake()
    }
}
