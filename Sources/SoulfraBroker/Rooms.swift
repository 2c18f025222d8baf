import SoulfraWire

/// Rooms: one publisher, many subscribers. A slow subscriber never slows the room: a reliable one is closed
/// with `slow_consumer` past the hard watermark; a drop-oldest one keeps a bounded queue, loses the oldest
/// frames and is told how many with DROPPED.
extension Broker {
    @inline(__always) static func roomKey(world: String, room: String) -> String { world + "\u{0}" + room }

    func onSubscribe(_ link: Link, stream: UInt32, _ sub: Subscribe, now: UInt64) {
        guard stream & 1 == 1, link.streams[stream] == nil, link.subscriptions[stream] == nil else {
            fail(link, .protocolError, "subscription id \(stream) must be odd and unused")
            return
        }
        guard link.kind != .vault else {
            return refuse(link, stream, .notPermitted, "vault peers do not subscribe to rooms", now: now)
        }
        if link.kind == .instance && sub.world != link.world {
            return refuse(link, stream, .notPermitted, "an instance of \"\(link.world)\" subscribed to a room of \"\(sub.world)\"", now: now)
        }
        if !serves(sub.world) {
            return refuse(link, stream, .wrongLoop, wrongLoopReason(sub.world), now: now)
        }
        if link.streams.count + link.subscriptions.count >= limits.maxStreamsPerLink {
            return refuse(link, stream, .streamLimit, "link holds max_streams_per_link (\(limits.maxStreamsPerLink)) streams", now: now)
        }
        let key = Self.roomKey(world: sub.world, room: sub.room)
        let s = Subscription(link: link.id, stream: stream, mode: sub.mode, roomKey: key)
        link.subscriptions[stream] = s
        rooms[key, default: []].append(s)
    }

    func removeSubscription(_ sub: Subscription, from link: Link) {
        link.subscriptions.removeValue(forKey: sub.stream)
        guard var subs = rooms[sub.roomKey] else { return }
        if let i = subs.firstIndex(where: { $0 === sub }) { subs.swapAt(i, subs.count - 1); subs.removeLast() }
        rooms[sub.roomKey] = subs.isEmpty ? nil : subs
    }

    func onPublish(_ link: Link, world: String, room: String, key: String, payload: UnsafeRawBufferPointer, now: UInt64) {
        switch link.kind {
        case .vault:
            fail(link, .notPermitted, "vault peers may not publish")
            return
        case .instance where world != link.world:
            fail(link, .notPermitted, "an instance of \"\(link.world)\" published to \"\(world)\"")
            return
        default: break
        }
        guard serves(world) else {
            fail(link, .wrongLoop, wrongLoopReason(world))
            return
        }
        metrics.roomFramesPublished &+= 1
        guard let subs = rooms[key] else { return }
        var slow: [Link] = []
        let frameBytes = Wire.headerBytes + payload.count
        // Indexed, not `for sub in subs`: an unspecialized iterator (debug builds, which the allocation tests
        // run) allocates on every step.
        for i in subs.indices {
            let sub = subs[i]
            guard let dst = liveLink(sub.link), dst.state == .active else { continue }
            if payload.count > Int(dst.maxFrameBytes) {
                metrics.roomFramesDropped &+= 1
                continue
            }
            switch sub.mode {
            case .reliable:
                if dst.queuedBytes + frameBytes > limits.linkQueueBytesHard {
                    slow.append(dst)
                    continue
                }
                FrameWriter.data(dst.out, stream: sub.stream, payload: payload)
            case .dropOldest:
                if sub.heldCount > 0 || dst.queuedBytes >= limits.linkQueueBytesHigh {
                    hold(sub, payload, on: dst)
                    continue
                }
                FrameWriter.data(dst.out, stream: sub.stream, payload: payload)
            }
            metrics.roomFramesDelivered &+= 1
            // A subscriber's backlog never pauses the publisher: no source is passed.
            queued(on: dst, from: nil, frames: 1, bytes: frameBytes, now: now)
        }
        for dst in slow {
            fail(dst, .slowConsumer, "room subscriber fell more than link_queue_bytes_hard (\(limits.linkQueueBytesHard) bytes) behind")
        }
    }

    func hold(_ sub: Subscription, _ payload: UnsafeRawBufferPointer, on link: Link) {
        if sub.heldCount >= limits.roomSubscriberQueueFrames {
            sub.heldHead += 1
            sub.lost &+= 1
            metrics.roomFramesDropped &+= 1
            if sub.heldHead >= 64 && sub.heldHead * 2 >= sub.held.count {
                sub.held.removeFirst(sub.heldHead)
                sub.heldHead = 0
            }
        }
        sub.held.append(Array(payload))
        link.hasHeldRoomFrames = true
    }

    /// The link drained below its low watermark: tell drop-oldest subscribers what they lost, then send
    /// what they hold, until the high watermark.
    func releaseHeldRoomFrames(_ link: Link, now: UInt64) {
        var stillHeld = false
        for sub in link.subscriptions.values where sub.heldCount > 0 || sub.lost > 0 {
            if sub.lost > 0 {
                let before = link.out.count
                FrameWriter.write(.dropped(stream: sub.stream, count: sub.lost), to: link.out)
                queued(on: link, from: nil, frames: 1, bytes: link.out.count - before, now: now)
                sub.lost = 0
            }
            while sub.heldCount > 0 && link.queuedBytes < limits.linkQueueBytesHigh {
                let frame = sub.held[sub.heldHead]
                sub.heldHead += 1
                frame.withUnsafeBytes { FrameWriter.data(link.out, stream: sub.stream, payload: $0) }
                metrics.roomFramesDelivered &+= 1
                queued(on: link, from: nil, frames: 1, bytes: Wire.headerBytes + frame.count, now: now)
            }
            if sub.heldCount == 0 {
                sub.held.removeAll()
                sub.heldHead = 0
            } else {
                stillHeld = true
            }
        }
        link.hasHeldRoomFrames = stillHeld
    }
}
