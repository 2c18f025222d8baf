/// Time and shutdown: deadlines, timeouts, and a graceful end.
extension Gateway {
    /// How long a request waits for a broker link that is coming up (start-up, reconnect) before 503.
    static let linkWaitNanoseconds: UInt64 = 2_000_000_000

    /// Header, body and idle timeouts (scanned every 100 ms); requests that waited too long for a link.
    public func tick(now: UInt64) {
        self.now = now
        guard now &- lastScan >= 100_000_000 else { return }
        lastScan = now
        for link in links where !link.waiting.isEmpty {
            let expired = link.waiting.filter { now > $0.deadline || !link.connecting }
            link.waiting.removeAll { now > $0.deadline || !link.connecting }
            for w in expired where !w.ex.retired {
                fail(w.ex, unavailable(w.ex, "the broker loop for this world did not come up in time"))
            }
        }
        let idle = UInt64(limits.idleTimeoutMilliseconds) * 1_000_000
        let bodyLimit = UInt64(limits.bodyTimeoutMilliseconds) * 1_000_000
        let sendLimit = UInt64(limits.sendTimeoutMilliseconds) * 1_000_000
        for c in conns.values where !c.closed && !c.moving {
            // A client that takes none of its pending output for this long gives its budget back.
            if c.queuedBytes > 0 && now &- c.lastSendProgress > sendLimit {
                counters.sendTimeouts += 1
                abort(c, .sendTimeout)
                markDirty(c)
                continue
            }
            guard !c.closeAfterFlush else { continue }
            for ex in c.exchanges.values { checkTimers(ex, now: now, bodyLimit: bodyLimit) }
            if let ex = c.h1Current { checkTimers(ex, now: now, bodyLimit: bodyLimit) }
            if let d = c.headDeadline, now > d, c.h1Current == nil, c.exchanges.isEmpty {
                counters.headerTimeouts += 1
                if c.proto == .http1 && !c.h1.isIdle {
                    c.keepAlive(false)
                    c.respondError(0, GatewayError(.requestTimeout,
                                                  "the request head did not arrive in time"), requestID: nextRequestID())
                } else {
                    c.sendGoaway()
                }
                c.finish(.headerTimeout)
                markDirty(c)
            } else if c.h1Current == nil && c.exchanges.isEmpty && now &- c.lastActive > idle {
                counters.idleTimeouts += 1
                c.sendGoaway()
                c.finish(.idleTimeout)
                markDirty(c)
            } else if !c.trimmed && c.h1Current == nil && c.exchanges.isEmpty && now &- c.lastActive > 1_000_000_000 {
                c.trim()
            }
        }
    }

    /// Starts the request deadline (see `GatewayLimits.requestTimeoutMilliseconds`) when the instance has been
    /// asked and may answer, or when the stream waits for the loop's budget (it must not wait for ever). A
    /// stream held at no window because its own client is not reading is that client's stall, bounded by the
    /// send timeout: no deadline runs for it.
    func armDeadline(_ ex: Exchange, now: UInt64) {
        guard ex.awaitingAnswer, ex.deadline == 0, !ex.responseEnded,
              ex.windowFrames > 0 && ex.windowBytes > 0 || ex.starvedByLoop else { return }
        let t = limits.requestTimeoutNanos(world: ex.route.world)
        ex.deadline = t == 0 ? 0 : now &+ t
    }

    func checkTimers(_ ex: Exchange, now: UInt64, bodyLimit: UInt64) {
        if ex.deadline != 0 && now > ex.deadline {
            timedOut(ex)
        } else if stalledBody(ex, now: now, limit: bodyLimit) {
            bodyTimedOut(ex)
        }
    }

    /// The deadline passed. If the instance had a window to answer in, it did not: the broker hears `timeout`
    /// (the instance's outlier score) and the client 504 `instance_timeout`. If the gateway held the stream at
    /// no window (the loop's output budget spent), the gateway is the one that could not serve: 503
    /// `overloaded`, and the instance is not blamed. (An error event or a reset when the reply was streaming.)
    func timedOut(_ ex: Exchange) {
        ex.deadline = 0
        let ms = limits.requestTimeoutNanos(world: ex.route.world) / 1_000_000
        let retry = [("retry-after", "\(limits.retryAfterSeconds)")]
        if ex.windowFrames > 0 && ex.windowBytes > 0 {
            counters.requestTimeouts += 1
            detachBroker(ex, code: .timeout, reason: "no answer within the request deadline")
            fail(ex, GatewayError(.instanceTimeout,
                                  "the instance did not answer within \(ms) ms", headers: retry), retryable: true)
        } else {
            counters.overloadTimeouts += 1
            fail(ex, GatewayError(.overloaded,
                                  "the gateway had no room for the reply within \(ms) ms", headers: retry), retryable: true)
        }
    }

    func stalledBody(_ ex: Exchange, now: UInt64, limit: UInt64) -> Bool {
        !ex.requestEnded && !ex.responseEnded && (ex.kind == .message || ex.kind == .messageStream || ex.kind == .roomPublish)
            && now &- ex.lastBodyAt > limit
    }

    func bodyTimedOut(_ ex: Exchange) {
        counters.bodyTimeouts += 1
        // HTTP/1.1 cannot skip the rest of a body that may never come: the connection closes after the 408
        // (said first, so the close is counted as the timeout, not as the end of a non-keep-alive exchange).
        if ex.conn.proto != .http2 { ex.conn.finish(.bodyTimeout) }
        fail(ex, GatewayError(.requestTimeout,
                              "the request body stopped arriving for \(limits.bodyTimeoutMilliseconds) ms"))
    }

    /// Stops taking requests: HTTP/2 clients get GOAWAY, HTTP/1.1 connections close after their exchange.
    public func beginShutdown(now: UInt64) {
        shuttingDown = true
        for c in conns.values where !c.moving {
            c.goaway()
            markDirty(c)
        }
    }

    /// Closes every client connection once its queued output is written (the end of a shutdown).
    public func closeAll() {
        for c in conns.values where !c.closeAfterFlush && !c.moving {
            c.finish(.shutdown)
            markDirty(c)
        }
    }

    /// Whether nothing is in flight (for the drain at shutdown).
    public var idle: Bool { counters.openExchanges == 0 }
}
