import SoulfraWire

/// How much a client connection may hold, and how its streams share it.
///
/// The instances behind a connection's streams may only send what the gateway granted them (broker credit).
/// Everything they send ends up queued for the client until the client reads it, so the gateway bounds what
/// a connection holds — bytes queued for its client plus the credit its streams still hold — by
/// `connectionOutputHighBytes` (B), and what all connections of the loop hold by its share of
/// `outputBudgetBytes`. Credit is counted in client bytes: a window of b bytes and f frames may become up to
/// b + 32·f bytes on the wire (a frame's SSE/NDJSON/WebSocket framing and HTTP/2 or chunk header fit in 32).
///
/// Within B: every stream may always hold a small floor (B / 2 / max concurrent streams), so no stream is
/// starved by others that hold credit they do not use; what streams hold above their floor is capped at B/2
/// in total; and a stream's window grows (doubling, up to `streamQueueHighBytes`) only while it uses what it
/// gets. A stream is topped up once half its window is used — as HTTP/2 sends WINDOW_UPDATE — and only when
/// the connection and the loop have room: a client that stops reading stops its instances within B.
extension Gateway {
    /// Client bytes a frame may add beyond its payload.
    static let frameOverhead = 32

    @inline(__always) static func cost(bytes: Int64, frames: Int64) -> Int {
        Int(max(0, bytes)) + frameOverhead * Int(max(0, frames))
    }

    /// The window worth `cost` client bytes for `ex`, split between bytes and frames as the stream's own frames
    /// have been so far (before any: one frame per 64 bytes for streamed replies, whose events are small, one
    /// per KiB for unary replies) — a window of frames too small for its messages, or of frames it never uses,
    /// would hold budget to no purpose.
    static func window(forCost cost: Int, _ ex: Exchange) -> Window {
        let perFrame = ex.replyFrames > 0 ? min(16 << 10, max(64, ex.replyBytes / ex.replyFrames))
                                          : ex.kind == .message ? 1_024 : 64
        let frames = max(1, cost / (perFrame + frameOverhead))
        let bytes = max(0, cost - frameOverhead * frames)
        return Window(bytes: UInt32(min(bytes, Int(Int32.max))), frames: UInt32(frames))
    }

    /// The credit every stream may hold whatever the others of its connection hold: the budget's half shared
    /// by as many streams as a connection may open (HTTP/1.1 and WebSocket too, so an idle stream of any kind
    /// holds little of the loop's budget).
    var floorCost: Int {
        min(limits.streamQueueHighBytes, max(256, limits.connectionOutputHighBytes / (2 * Int(limits.maxConcurrentStreams))))
    }

    /// Records the instance's window on `ex`'s broker stream and what it costs its connection.
    func setWindow(_ ex: Exchange, bytes: Int64, frames: Int64) {
        let c = ex.conn
        let floor = floorCost
        let old = ex.windowCost
        let new = Self.cost(bytes: bytes, frames: frames)
        ex.windowBytes = bytes
        ex.windowFrames = frames
        ex.windowCost = new
        c.creditCost += new - old
        c.growthCost += max(0, new - floor) - max(0, old - floor)
        // What a connection's streams hold is the sum of their windows' costs: it cannot go below nothing, and
        // growth above the floors is part of it.
        precondition(c.creditCost >= 0 && c.growthCost >= 0 && c.growthCost <= c.creditCost,
                     "credit accounting broke: cost \(c.creditCost), growth \(c.growthCost)")
        // The loop's total follows credit at once (many streams may open in one batch); bytes queued for
        // clients are brought in when each connection is flushed.
        if !c.closed && !c.moving {
            c.lastHeld += new - old
            heldTotal += new - old
            if new < old { budgetFreed = true }
        }
    }

    /// The window a new stream opens with: what it may send before the first CREDIT (possibly nothing, when
    /// the connection or the loop holds its whole budget; it is topped up as they drain).
    func initialWindow(_ ex: Exchange) -> Window {
        ex.targetCost = max(floorCost, min(limits.streamQueueHighBytes, 8 << 10))
        let grant = allowance(ex, want: ex.targetCost)
        if grant <= 0 {
            ex.waitingCredit = true
            counters.creditHeld += 1
            ex.world.latency.creditStalls &+= 1
        }
        if grant < ex.targetCost { wantCredit(ex) }
        return grant <= 0 ? Window(bytes: 0, frames: 0) : Self.window(forCost: grant, ex)
    }

    /// How much of `want` the stream may be granted now.
    func allowance(_ ex: Exchange, want: Int) -> Int {
        let c = ex.conn
        let budget = limits.connectionOutputHighBytes
        let held = c.creditCost + c.queuedBytes
        var room = budget - held
        let loopRoom = outputBudget - (heldTotal - c.lastHeld + held)
        // Starved by the loop (not by its own client): the request deadline runs meanwhile (`armDeadline`).
        ex.starvedByLoop = loopRoom <= 0 && loopRoom < room
        if loopRoom < room {
            room = loopRoom
            if room <= 0 && !c.inCreditWaiters {
                c.inCreditWaiters = true
                creditWaiters.append(c)
            }
        }
        guard room > 0 else { return 0 }
        let floorPart = max(0, floorCost - ex.windowCost)
        let growthRoom = max(0, budget / 2 - c.growthCost)
        return min(want, room, floorPart + growthRoom)
    }

    /// Brings `c`'s share of the loop's total up to date (bytes queued for its client change as replies are
    /// delivered and as the client reads).
    @inline(__always) func reconcile(_ c: Connection) {
        guard !c.closed && !c.moving else { return }
        let held = c.creditCost + c.queuedBytes
        heldTotal += held - c.lastHeld
        c.lastHeld = held
        precondition(heldTotal >= 0, "the loop holds \(heldTotal) bytes")
    }

    /// Puts `ex` on its connection's list of streams that may want credit (looked at by the next flush: only
    /// streams whose window moved are, not every stream of the connection).
    @inline(__always) func wantCredit(_ ex: Exchange) {
        guard !ex.inCreditList else { return }
        ex.inCreditList = true
        ex.conn.creditWanted.append(ex)
    }

    /// Grants the streams of `c` that used half their window whatever the budgets allow; those that still
    /// want credit stay listed.
    func grantCredit(_ c: Connection, now: UInt64) {
        guard !c.creditWanted.isEmpty else { return }
        var keep = 0
        for k in c.creditWanted.indices {
            let ex = c.creditWanted[k]
            if topUp(ex) {
                c.creditWanted[keep] = ex
                keep += 1
            } else {
                ex.inCreditList = false
            }
        }
        c.creditWanted.removeLast(c.creditWanted.count - keep)
    }

    /// Tops `ex`'s window up towards its target. Returns whether it still wants credit it could not get.
    @discardableResult
    func topUp(_ ex: Exchange) -> Bool {
        guard ex.kind.usesCredit, ex.brokerStream != 0, !ex.responseEnded, !ex.retired else { return false }
        // What this stream's client has not taken yet counts as held by the stream: a stream whose client stopped
        // taking it (HTTP/2 flow control) gets nothing more, so it cannot crowd out its siblings.
        let unread = ex.conn.unreadBytes(stream: ex.id)
        if unread >= ex.targetCost {
            if !ex.waitingCredit {
                ex.waitingCredit = true
                counters.creditHeld += 1
                ex.world.latency.creditStalls &+= 1
            }
            return true
        }
        let target = Self.window(forCost: ex.targetCost, ex)
        let usedBytes = Int64(target.bytes) - ex.windowBytes, usedFrames = Int64(target.frames) - ex.windowFrames
        // In batches: once half of either side of the window is used (or none is left).
        guard usedBytes * 2 >= Int64(target.bytes) || usedFrames * 2 >= Int64(target.frames) || ex.windowFrames <= 0 else { return false }
        // A stream that used most of its window gets a bigger one, up to the cap: it is busy and its client keeps
        // up. The bigger target holds only if credit is granted now (a starved stream does not keep doubling).
        var targetCost = ex.targetCost
        if (usedBytes * 4 >= Int64(target.bytes) * 3 || usedFrames * 4 >= Int64(target.frames) * 3)
            && targetCost < limits.streamQueueHighBytes {
            targetCost = min(limits.streamQueueHighBytes, targetCost * 2)
        }
        let goal = Self.window(forCost: targetCost, ex)
        var db = max(0, Int64(goal.bytes) - ex.windowBytes), df = max(0, Int64(goal.frames) - ex.windowFrames)
        let want = Self.cost(bytes: db, frames: df)
        guard want > 0 else { return false }
        let grant = allowance(ex, want: want)
        guard grant > 0 else {
            if !ex.waitingCredit {
                ex.waitingCredit = true
                counters.creditHeld += 1
                ex.world.latency.creditStalls &+= 1
            }
            return true
        }
        if grant < want {
            // Scale both sides down to what fits; keep at least one frame when frames are what is missing.
            db = db * Int64(grant) / Int64(want)
            df = max(df > 0 ? 1 : 0, df * Int64(grant) / Int64(want))
            if Self.cost(bytes: db, frames: df) > grant { db = max(0, Int64(grant) - Int64(Self.frameOverhead) * df) }
        }
        guard db > 0 || df > 0 else { return true }
        ex.targetCost = targetCost
        ex.waitingCredit = false
        links[ex.link].peer.grant(stream: ex.brokerStream, bytes: UInt32(db), frames: UInt32(df))
        setWindow(ex, bytes: ex.windowBytes + db, frames: ex.windowFrames + df)
        armDeadline(ex, now: now)
        return grant < want
    }
}
