import SoulfraMetrics
import SoulfraWire

/// Counters the broker bumps as it works. Plain integers on the loop thread; `snapshot()` copies them out.
struct BrokerCounters {
    var framesIn = [UInt64](repeating: 0, count: 5)
    var bytesIn = [UInt64](repeating: 0, count: 5)
    var framesOut = [UInt64](repeating: 0, count: 5)
    var bytesOut = [UInt64](repeating: 0, count: 5)
    var linkCloses = [UInt64](repeating: 0, count: ErrorCode.allCases.count)
    var streamErrors = [UInt64](repeating: 0, count: ErrorCode.allCases.count)
    var pauses = [UInt64](repeating: 0, count: PauseReasons.labelled.count)
    var congestionAlerts = [UInt64](repeating: 0, count: 5)
    var streamsOpened: UInt64 = 0
    var quotaRejections: UInt64 = 0
    var quotaPacedBytes: UInt64 = 0
    var quotaPacedFrames: UInt64 = 0
    var roomFramesPublished: UInt64 = 0
    var roomFramesDelivered: UInt64 = 0
    var roomFramesDropped: UInt64 = 0
    var affinityHits: UInt64 = 0
    var affinityRepins: UInt64 = 0
    var oversizeFrames: UInt64 = 0
    var outlierEjections: UInt64 = 0
}

/// A point-in-time copy of the broker's counters and gauges, for `/metrics` and the load-test report.
/// Arrays indexed by `PeerKind.rawValue` have slot 0 unused (links still in handshake count there).
public struct BrokerSnapshot: Sendable, Equatable {
    public var linksByKind: [Int]
    public var streamsOpen: Int
    public var subscriptions: Int
    public var rooms: Int
    public var queueBytesByKind: [Int]
    /// Send windows the broker has granted to links of each kind and not yet seen used.
    public var creditBytesOutstandingByKind: [Int64]
    public var pausedLinks: Int
    public var congestedLinks: Int
    public var framesIn: [UInt64]
    public var bytesIn: [UInt64]
    public var framesOut: [UInt64]
    public var bytesOut: [UInt64]
    /// Link closes by reason (`ErrorCode.rawValue`).
    public var linkCloses: [UInt64]
    /// Streams ended by an error, by reason.
    public var streamErrors: [UInt64]
    /// Pauses by reason: 0 peer_congested, 1 own_queue_full.
    public var pauses: [UInt64]
    /// Times a runtime, vault or instance link crossed its high watermark (alert).
    public var congestionAlerts: [UInt64]
    public var streamsOpened: UInt64
    public var quotaRejections: UInt64
    public var quotaPacedBytes: UInt64
    public var quotaPacedFrames: UInt64
    public var roomFramesPublished: UInt64
    public var roomFramesDelivered: UInt64
    public var roomFramesDropped: UInt64
    public var affinityHits: UInt64
    public var affinityRepins: UInt64
    /// DATA frames over the link's maximum, dropped (each ended its stream with `frame_too_large`).
    public var oversizeFrames: UInt64 = 0
    /// Times an instance was taken out of rotation by outlier detection, and instances out of rotation now.
    public var outlierEjections: UInt64 = 0
    public var ejectedInstances: Int = 0
    /// Instances attached and taking new streams (not draining), by world: their names (the control plane's
    /// readiness).
    public var attachedInstances: [String: [String]] = [:]
    /// Room subscribers (viewers) and rooms with any, by world.
    public var viewersByWorld: [String: Int] = [:]
    public var roomsByWorld: [String: Int] = [:]

    /// Link closes for one reason.
    public func closes(_ code: ErrorCode) -> UInt64 { linkCloses[Int(code.rawValue)] }

    /// HELLOs refused for a bad token (the `auth_failed` link closes).
    public var authFailures: UInt64 { closes(.authFailed) }
}

extension Broker {
    /// Copies counters and walks links and pairs for gauges. O(links + pairs); call it at scrape rate.
    public func snapshot() -> BrokerSnapshot {
        var linksByKind = [Int](repeating: 0, count: 5)
        var queue = [Int](repeating: 0, count: 5)
        var credit = [Int64](repeating: 0, count: 5)
        var paused = 0, congested = 0, subs = 0, ejected = 0
        var attached: [String: [String]] = [:]
        for case let link? in links where link.state != .closing {
            if link.kind == .instance && link.state != .handshake && !link.draining { attached[link.world, default: []].append(link.instance) }
            if link.ejectedUntil > lastObserved { ejected += 1 }
            let k = link.state == .handshake ? 0 : Int(link.kind.rawValue)
            linksByKind[k] += 1
            queue[k] += link.queuedBytes
            if !link.pause.isEmpty { paused += 1 }
            if link.congestedSince != nil { congested += 1 }
            subs += link.subscriptions.count
        }
        for r in pairs where r.live {
            if let a = links[Int(r.opener.link)] { credit[Int(a.kind.rawValue)] += max(0, r.opener.windowBytes) }
            if let b = links[Int(r.acceptor.link)] { credit[Int(b.kind.rawValue)] += max(0, r.acceptor.windowBytes) }
        }
        let c = metrics
        var snap = BrokerSnapshot(
            linksByKind: linksByKind, streamsOpen: livePairs, subscriptions: subs, rooms: rooms.count,
            queueBytesByKind: queue, creditBytesOutstandingByKind: credit, pausedLinks: paused,
            congestedLinks: congested, framesIn: c.framesIn, bytesIn: c.bytesIn, framesOut: c.framesOut,
            bytesOut: c.bytesOut, linkCloses: c.linkCloses, streamErrors: c.streamErrors, pauses: c.pauses,
            congestionAlerts: c.congestionAlerts, streamsOpened: c.streamsOpened, quotaRejections: c.quotaRejections,
            quotaPacedBytes: c.quotaPacedBytes, quotaPacedFrames: c.quotaPacedFrames,
            roomFramesPublished: c.roomFramesPublished, roomFramesDelivered: c.roomFramesDelivered,
            roomFramesDropped: c.roomFramesDropped, affinityHits: c.affinityHits, affinityRepins: c.affinityRepins)
        snap.oversizeFrames = c.oversizeFrames
        snap.outlierEjections = c.outlierEjections
        snap.ejectedInstances = ejected
        snap.attachedInstances = attached
        for (key, subs) in rooms where !subs.isEmpty {
            let world = String(key.prefix { $0 != "\u{0}" })
            snap.viewersByWorld[world, default: 0] += subs.count
            snap.roomsByWorld[world, default: 0] += 1
        }
        return snap
    }
}

extension BrokerSnapshot {
    /// Renders the snapshot in the Prometheus text exposition format (version 0.0.4).
    public func prometheusText(prefix: String = "soulfra_broker") -> String {
        var out = PrometheusText(prefix: prefix)
        let kinds: [(Int, String)] = [(0, "handshake")] + PeerKind.allCases.map { (Int($0.rawValue), $0.description) }
        let peerKinds = PeerKind.allCases.map { (Int($0.rawValue), $0.description) }
        out.family("links", .gauge, "Links attached, by peer kind (handshake: HELLO not yet accepted).")
        for (i, k) in kinds { out.sample("links", ["kind": k], linksByKind[i]) }
        out.family("queue_bytes", .gauge, "Bytes queued towards peers, by peer kind.")
        for (i, k) in kinds { out.sample("queue_bytes", ["kind": k], queueBytes(i)) }
        out.family("credit_bytes_outstanding", .gauge, "Send window granted to peers and not yet used, by peer kind.")
        for (i, k) in peerKinds { out.sample("credit_bytes_outstanding", ["kind": k], creditBytesOutstandingByKind[i]) }
        out.single("streams_open", .gauge, "Streams open across the broker.", streamsOpen)
        out.single("subscriptions", .gauge, "Room subscriptions.", subscriptions)
        out.single("rooms", .gauge, "Rooms with at least one subscriber.", rooms)
        out.single("paused_links", .gauge, "Links whose reading is paused by backpressure.", pausedLinks)
        out.single("congested_links", .gauge, "Links above their high watermark.", congestedLinks)
        out.single("ejected_instances", .gauge, "Instances out of rotation after consecutive failures (outlier detection).", ejectedInstances)
        for (name, values, help) in [
            ("frames_received_total", framesIn, "Frames received, by peer kind."),
            ("bytes_received_total", bytesIn, "Bytes received, by peer kind."),
            ("frames_sent_total", framesOut, "Frames queued to peers, by peer kind."),
            ("bytes_sent_total", bytesOut, "Bytes queued to peers, by peer kind."),
            ("congestion_alerts_total", congestionAlerts, "Runtime, vault and instance links that crossed their high watermark."),
        ] {
            out.family(name, .counter, help)
            for (i, k) in peerKinds { out.sample(name, ["kind": k], values[i]) }
        }
        out.family("link_closes_total", .counter, "Links closed, by reason.")
        for code in ErrorCode.allCases { out.sample("link_closes_total", ["reason": "\(code)"], linkCloses[Int(code.rawValue)]) }
        out.family("stream_errors_total", .counter, "Streams ended by an error, by reason.")
        for code in ErrorCode.allCases { out.sample("stream_errors_total", ["reason": "\(code)"], streamErrors[Int(code.rawValue)]) }
        out.family("pauses_total", .counter, "Times a link's reading was paused, by reason.")
        for (reason, label) in PauseReasons.labelled { out.sample("pauses_total", ["reason": label], pauses[reason.index]) }
        for (name, value, help) in [
            ("streams_opened_total", streamsOpened, "Streams routed."),
            ("quota_rejections_total", quotaRejections, "Streams refused by a key's concurrent-stream quota."),
            ("quota_paced_bytes_total", quotaPacedBytes, "Credit bytes held back by key quotas."),
            ("quota_paced_frames_total", quotaPacedFrames, "Credit frames held back by key quotas."),
            ("room_frames_published_total", roomFramesPublished, "Frames published to rooms."),
            ("room_frames_delivered_total", roomFramesDelivered, "Room frames queued to subscribers."),
            ("room_frames_dropped_total", roomFramesDropped, "Room frames dropped for drop-oldest subscribers."),
            ("affinity_hits_total", affinityHits, "Streams routed by session affinity."),
            ("affinity_repins_total", affinityRepins, "Session pins removed because their instance left."),
            ("oversize_frames_total", oversizeFrames, "DATA frames over the link's maximum frame size, dropped; each ended its stream with frame_too_large."),
            ("outlier_ejections_total", outlierEjections, "Times an instance was taken out of rotation after consecutive failed streams."),
        ] {
            out.single(name, .counter, help, value)
        }
        return out.text
    }

    private func queueBytes(_ i: Int) -> Int { queueBytesByKind[i] }
}

extension BrokerSnapshot {
    /// The sum of two loops' snapshots (counters and gauges both add up across loops).
    public func merging(_ o: BrokerSnapshot) -> BrokerSnapshot {
        func add<T: AdditiveArithmetic>(_ a: [T], _ b: [T]) -> [T] { zip(a, b).map { $0 + $1 } }
        var m = BrokerSnapshot(
            linksByKind: add(linksByKind, o.linksByKind), streamsOpen: streamsOpen + o.streamsOpen,
            subscriptions: subscriptions + o.subscriptions, rooms: rooms + o.rooms,
            queueBytesByKind: add(queueBytesByKind, o.queueBytesByKind),
            creditBytesOutstandingByKind: add(creditBytesOutstandingByKind, o.creditBytesOutstandingByKind),
            pausedLinks: pausedLinks + o.pausedLinks, congestedLinks: congestedLinks + o.congestedLinks,
            framesIn: add(framesIn, o.framesIn), bytesIn: add(bytesIn, o.bytesIn), framesOut: add(framesOut, o.framesOut),
            bytesOut: add(bytesOut, o.bytesOut), linkCloses: add(linkCloses, o.linkCloses),
            streamErrors: add(streamErrors, o.streamErrors), pauses: add(pauses, o.pauses),
            congestionAlerts: add(congestionAlerts, o.congestionAlerts), streamsOpened: streamsOpened + o.streamsOpened,
            quotaRejections: quotaRejections + o.quotaRejections, quotaPacedBytes: quotaPacedBytes + o.quotaPacedBytes,
            quotaPacedFrames: quotaPacedFrames + o.quotaPacedFrames,
            roomFramesPublished: roomFramesPublished + o.roomFramesPublished,
            roomFramesDelivered: roomFramesDelivered + o.roomFramesDelivered,
            roomFramesDropped: roomFramesDropped + o.roomFramesDropped, affinityHits: affinityHits + o.affinityHits,
            affinityRepins: affinityRepins + o.affinityRepins)
        m.oversizeFrames = oversizeFrames + o.oversizeFrames
        m.outlierEjections = outlierEjections + o.outlierEjections
        m.ejectedInstances = ejectedInstances + o.ejectedInstances
        m.attachedInstances = attachedInstances.merging(o.attachedInstances) { $0 + $1 }
        m.viewersByWorld = viewersByWorld.merging(o.viewersByWorld) { $0 + $1 }
        m.roomsByWorld = roomsByWorld.merging(o.roomsByWorld) { $0 + $1 }
        return m
    }
}
