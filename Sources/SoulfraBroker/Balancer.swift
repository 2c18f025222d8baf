import SoulfraLimits
/// How the broker picks among a world's instances (after session affinity).
extension Broker {
    /// Picks an instance of `world` for a new stream, honouring and recording session affinity. Instances
    /// ejected by outlier detection are skipped (a session pinned to one moves) unless no other can serve.
    func pickInstance(world: String, session: String, now: UInt64) -> Link? {
        guard let pool = pools[world], !pool.links.isEmpty else { return nil }
        if !session.isEmpty, let pinned = pool.affinity[session], let link = liveLink(pinned), !link.draining,
           link.ejectedUntil <= now {
            metrics.affinityHits += 1
            return link
        }
        let policy = balancerPolicies[world] ?? defaultBalancer
        guard let chosen = choose(from: pool, policy: policy, now: now) ?? choose(from: pool, policy: policy, now: 0) else {
            return nil
        }
        if !session.isEmpty { pin(session: session, to: chosen.id, in: pool) }
        return chosen
    }

    /// Picks a runtime worker or vault link: least outstanding, ties round-robin.
    func pickService(_ pool: WorldPool) -> Link? {
        choose(from: pool, policy: .leastOutstanding, now: 0)
    }

    /// The policy's choice among links that are not draining and not ejected at `now` (0: ignore ejection).
    private func choose(from pool: WorldPool, policy: BalancerPolicy, now: UInt64) -> Link? {
        let n = pool.links.count
        guard n > 0 else { return nil }
        switch policy {
        case .roundRobin:
            for step in 0..<n {
                let link = links[Int(pool.links[(pool.cursor + step) % n])]!
                if !link.draining && (now == 0 || link.ejectedUntil <= now) {
                    pool.cursor = (pool.cursor + step + 1) % n
                    return link
                }
            }
            return nil
        case .leastOutstanding:
            var best: Link?
            for step in 0..<n {
                let link = links[Int(pool.links[(pool.cursor + step) % n])]!
                if link.draining || (now != 0 && link.ejectedUntil > now) { continue }
                if best == nil || link.outstanding < best!.outstanding { best = link }
            }
            pool.cursor = (pool.cursor + 1) % n
            return best
        }
    }

    private func pin(session: String, to link: UInt32, in pool: WorldPool) {
        if pool.affinity.updateValue(link, forKey: session) == nil {
            pool.affinityOrder.append(session)
            // Forget the oldest pins past the bound; compact the order list now and then.
            while pool.affinity.count > limits.affinitySessionsPerWorld {
                let old = pool.affinityOrder[pool.affinityOrderHead]
                pool.affinityOrderHead += 1
                pool.affinity.removeValue(forKey: old)
            }
            if pool.affinityOrderHead > 1024 && pool.affinityOrderHead * 2 > pool.affinityOrder.count {
                pool.affinityOrder.removeFirst(pool.affinityOrderHead)
                pool.affinityOrderHead = 0
            }
        }
    }

    /// Moves sessions pinned to a departed instance: they are re-pinned on their next stream.
    func unpinAll(link: UInt32, in pool: WorldPool) {
        let before = pool.affinity.count
        pool.affinity = pool.affinity.filter { $0.value != link }
        metrics.affinityRepins += UInt64(before - pool.affinity.count)
        if pool.affinity.isEmpty {
            pool.affinityOrder.removeAll()
            pool.affinityOrderHead = 0
        }
    }
}
