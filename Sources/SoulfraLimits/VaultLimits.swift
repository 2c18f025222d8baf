/// The vault's limits and retention (config section `vault`).
public struct VaultLimits: Sendable, Equatable, SettingsTable {
    /// A world's log moves to a new segment file once its segment holds this much.
    public var segmentBytes: Int = 64 << 20
    /// Retention per world: whole segments whose newest event is older than this go (0: kept for ever)…
    public var retentionMaxAgeSeconds: Int = 0
    /// …and the oldest segments go while a world's log is larger than this (0: no bound).
    public var retentionMaxBytes: Int = 0
    /// Credit is withheld from a world's producers while its log holds more than this not yet written, and
    /// given back under half of it.
    public var highWaterBytes: Int = 8 << 20
    /// The largest event an append may carry.
    public var maxEventBytes: Int = 1 << 20

    public init() {}

    public static let settings: [Setting<VaultLimits>] = [
        Setting("segment_bytes", \.segmentBytes, 4_096...(1 << 30)),
        Setting("retention_max_age_seconds", \.retentionMaxAgeSeconds, 0...(100 * 365 * 86_400), note: "0: kept for ever"),
        Setting("retention_max_bytes", \.retentionMaxBytes, 0...(1 << 50), note: "0: no bound"),
        Setting("high_water_bytes", \.highWaterBytes, 65_536...(1 << 30)),
        Setting("max_event_bytes", \.maxEventBytes, 1_024...(16 << 20)),
    ]

    public func validate() throws(SettingError) {
        try checkRanges()
        if retentionMaxBytes != 0 && retentionMaxBytes < segmentBytes {
            throw SettingError(key: "retention_max_bytes", message: "must be 0 or at least segment_bytes (\(segmentBytes)): retention drops whole segments, got \(retentionMaxBytes)")
        }
    }
}
