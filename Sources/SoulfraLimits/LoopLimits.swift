/// Limits of one loop, validated at start-up.
public struct LoopLimits: Sendable, Equatable, SettingsTable {
    /// Submission queue entries.
    public var ringEntries: UInt32 = 1024
    /// Provided receive buffers (a power of two) and the size of each.
    public var recvBufferCount: UInt32 = 256
    public var recvBufferBytes: UInt32 = 32 << 10
    /// Connections the loop holds at once.
    public var maxConnections: Int = 16_384
    /// Timer period.
    public var tickMilliseconds: UInt32 = 10
    /// A closing connection gets this long to flush before its socket is shut.
    public var closeFlushMilliseconds: UInt32 = 1_000

    public init() {}

    /// The `loop` section's numeric settings.
    public static let settings: [Setting<LoopLimits>] = [
        Setting("ring_entries", \.ringEntries, 8...32_768, note: "a power of two"),
        Setting("recv_buffer_count", \.recvBufferCount, 16...32_768, note: "a power of two"),
        Setting("recv_buffer_bytes", \.recvBufferBytes, 1_024...(1 << 20)),
        Setting("max_connections", \.maxConnections, 1...1_000_000),
        Setting("tick_milliseconds", \.tickMilliseconds, 1...1_000),
        Setting("close_flush_milliseconds", \.closeFlushMilliseconds, 1...60_000),
    ]

    /// Checks every range, and that the ring and the buffer ring are powers of two (the kernel needs them so).
    public func validate() throws(SettingError) {
        try checkRanges()
        for (key, n) in [("ring_entries", ringEntries), ("recv_buffer_count", recvBufferCount)] where n.nonzeroBitCount != 1 {
            throw SettingError(key: key, message: "must be a power of two, got \(n)")
        }
    }
}
