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

    /// The window worth `cost` client bytes: one frame per 64 payload bytes, at least one.
    static func window(forCost cost: Int) -> Window {
        let frames = max(1, cost / (64 + frameOverhead))
        let bytes = max(0, cost - frameOverhead * frames)
        return Window(bytes: UInt32(min(bytes, Int(Int32.max))), frames: UInt32(frames))
    }

    /// The credit every stream of `c` may hold whatever the others hold.
    func floorCost(_ c: Connection) -> Int {
        let streams = c.proto == .http2 ? Int(limits.maxConcurrentStreams) : 1
        return min(limits.streamQueueHighBytes, max(256, limits.connectionOutputHighBytes / (2 * streams)))
    }

    /// Records the instance's window on `ex`'s broker stream and what it costs its connection.
    func setWindow(_ ex: Exchange, bytes: Int64, frames: Int64) {
        let c = ex.conn
        let floor = floorCost(c)
        let old = ex.windowCost
        let new = Self.cost(bytes: bytes, frames: frames)
        ex.windowBytes = bytes
        ex.windowFrames = frames
        ex.windowCost = new
        c.creditCost += new - old
        c.growthCost += max(0, new - floor) - max(0, old - floor)
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
        let floor = floorCost(ex.conn)
        ex.targetCost = max(floor, min(limits.streamQueueHighBytes, 8 << 10))
        let grant = allowance(ex, want: ex.targetCost)
        if grant <= 0 {
            ex.waitingCredit = true
            counters.creditHeld += 1
        }
        if grant < ex.targetCost { wantCredit(ex) }
        return grant <= 0 ? Window(bytes: 0, frames: 0) : Self.window(forCost: grant)
    }

    /// How much of `want` the stream may be granted now.
    func allowance(_ ex: Exchange, want: Int) -> Int {
        let c = ex.conn
        let budget = limits.connectionOutputHighBytes
        let held = c.creditCost + c.queuedBytes
        var room = budget - held
        let loopRoom = outputBudget - (heldTotal - c.lastHeld + held)
        if loopRoom < room {
            room = loopRoom
            if room <= 0 && !creditWaiters.contains(where: { $0 === c }) { creditWaiters.append(c) }
        }
        guard room > 0 else { return 0 }
        let floorPart = max(0, floorCost(c) - ex.windowCost)
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
        let target = Self.window(forCost: ex.targetCost)
        let usedBytes = Int64(target.bytes) - ex.windowBytes, usedFrames = Int64(target.frames) - ex.windowFrames
        // In batches: once half of either side of the window is used (or none is left).
        guard usedBytes * 2 >= Int64(target.bytes) || usedFrames * 2 >= Int64(target.frames) || ex.windowFrames <= 0 else { return false }
        // A stream that used most of its window gets a bigger one, up to the cap: it is busy and its client keeps up.
        if (usedBytes * 4 >= Int64(target.bytes) * 3 || usedFrames * 4 >= Int64(target.frames) * 3)
            && ex.targetCost < limits.streamQueueHighBytes {
            ex.targetCost = min(limits.streamQueueHighBytes, ex.targetCost * 2)
        }
        let goal = Self.window(forCost: ex.targetCost)
        var db = max(0, Int64(goal.bytes) - ex.windowBytes), df = max(0, Int64(goal.frames) - ex.windowFrames)
        let want = Self.cost(bytes: db, frames: df)
        guard want > 0 else { return false }
        let grant = allowance(ex, want: want)
        guard grant > 0 else {
            if !ex.waitingCredit {
                ex.waitingCredit = true
                counters.creditHeld += 1
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
        ex.waitingCredit = false
        ports[ex.port].session.grant(stream: ex.brokerStream, bytes: UInt32(db), frames: UInt32(df))
        setWindow(ex, bytes: ex.windowBytes + db, frames: ex.windowFrames + df)
        armDeadline(ex, now: now)
        return grant < want
    }
}
