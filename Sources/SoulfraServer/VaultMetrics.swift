import SoulfraMetrics
import SoulfraVault
import SoulfraVaultStore

/// The in-process vault's figures on one loop (storage and service), summed over loops for `/metrics`.
struct VaultMetrics: Equatable, Sendable {
    var store = VaultStoreCounters()
    var service = VaultService.Counters()

    func merging(_ o: VaultMetrics) -> VaultMetrics {
        var m = self
        m.store.merge(o.store)
        let a = service, b = o.service
        m.service.streamsAccepted = a.streamsAccepted + b.streamsAccepted
        m.service.streamsRefused = a.streamsRefused + b.streamsRefused
        m.service.appendsTaken = a.appendsTaken + b.appendsTaken
        m.service.appendsAcknowledged = a.appendsAcknowledged + b.appendsAcknowledged
        m.service.appendsFailed = a.appendsFailed + b.appendsFailed
        m.service.reads = a.reads + b.reads
        m.service.eventsRead = a.eventsRead + b.eventsRead
        m.service.creditStalls = a.creditStalls + b.creditStalls
        return m
    }

    func prometheusText() -> String {
        var o = PrometheusText(prefix: "soulfra_vault")
        o.single("worlds", .gauge, "Worlds whose logs are open.", UInt64(store.worlds))
        o.single("segments", .gauge, "Segment files open.", UInt64(store.segments))
        o.single("stored_bytes", .gauge, "Bytes of records kept in segments.", store.bytes)
        o.single("indexed_records", .gauge, "Records in the in-memory index (by session and time).", UInt64(store.records))
        o.single("pending_bytes", .gauge, "Bytes of events taken and not yet in a write (credit is withheld above vault.high_water_bytes).", UInt64(store.pendingBytes))
        o.family("commit_seconds", .histogram, "Group commits: time from forming a batch to its fdatasync completing (the fsync latency appends wait for).")
        var cumulative: UInt64 = 0
        for (i, bound) in VaultStoreCounters.commitBoundsMicros.enumerated() {
            cumulative += store.commitBuckets[i]
            o.sample("commit_seconds_bucket", ["le": String(Double(bound) / 1e6)], cumulative)
        }
        cumulative += store.commitBuckets[VaultStoreCounters.commitBoundsMicros.count]
        o.sample("commit_seconds_bucket", ["le": "+Inf"], cumulative)
        o.sample("commit_seconds_sum", Double(store.commitNanosecondsTotal) / 1e9)
        o.sample("commit_seconds_count", cumulative)
        o.family("batch_appends", .summary, "Appends made durable per group commit (one write and one fdatasync).")
        o.sample("batch_appends_sum", store.appendsDurable)
        o.sample("batch_appends_count", store.batches)
        o.single("largest_batch_appends", .gauge, "The most appends one group commit has carried.", UInt64(store.largestBatch))
        let counters: [(String, String, UInt64)] = [
            ("appends_total", "Events taken from producers.", service.appendsTaken),
            ("appends_acknowledged_total", "Events acknowledged to their producer (durable: written and synced).", service.appendsAcknowledged),
            ("appends_failed_total", "Events answered FAIL (not stored: full disk, I/O error); producers retry.", service.appendsFailed),
            ("streams_total", "Vault streams accepted.", service.streamsAccepted),
            ("streams_refused_total", "Vault streams refused (not a vault request, or another loop's world).", service.streamsRefused),
            ("reads_total", "Read and replay pages served.", service.reads),
            ("events_read_total", "Events sent in read and replay pages.", service.eventsRead),
            ("credit_stalls_total", "Times a producer's credit was withheld because its world's log was over the high watermark.", service.creditStalls),
            ("segments_dropped_total", "Segments removed by retention.", store.segmentsDropped),
            ("recovered_cut_bytes_total", "Bytes of torn or corrupt tail cut off at open (a crash mid-write).", store.recoveredCutBytes),
            ("prepared_chunks_total", "Chunks of zeros written and synced ahead of the records (each later sync then commits data only).", store.preparedChunks),
            ("prepare_failures_total", "Chunks of zeros that could not be written ahead (a full disk); retried, no append fails for it.", store.prepareFailures),
        ]
        for (n, h, v) in counters { o.single(n, .counter, h, v) }
        return o.text
    }
}
