/// A growable FIFO of bytes in one contiguous allocation: frames are appended at the tail and consumed from
/// the head. Used for link send queues and for the decoder's partial-frame buffer.
///
/// Memory is allocated on first use and can be given back with `shrinkIfEmpty()`, so an idle link costs
/// nothing here. The caller bounds its size (watermarks); this type only grows when asked to.
public final class ByteQueue {
    // Stored properties are `@exclusivity(unchecked)`: an instance belongs to one thread, and this module ships
    // in the peer library product, where the unsafe flag that turns the checks off module-wide is not allowed.
    @exclusivity(unchecked) private var base: UnsafeMutableRawPointer?
    /// Bytes allocated.
    @exclusivity(unchecked) public private(set) var capacity: Int = 0
    @exclusivity(unchecked) private var head = 0
    @exclusivity(unchecked) private var tail = 0

    /// Growth: geometric (doubling) from 1 KiB by default; past 4 KiB, `tight` grows by a quarter (or to what
    /// is needed, if more), rounded up to 4 KiB — for queues whose high-water mark is held for a long time (a
    /// client that stopped reading), where doubling would keep up to twice what waits. Below 4 KiB both
    /// double: most queues never hold more than a handshake's or a reply's bytes, and 1 KiB is what an idle
    /// connection keeps.
    let tight: Bool

    public init(tight: Bool = false) { self.tight = tight }

    deinit { base?.deallocate() }

    /// Bytes queued and not yet consumed.
    @inline(__always) public var count: Int { tail - head }
    @inline(__always) public var isEmpty: Bool { tail == head }

    /// The queued bytes. Valid until the next mutating call.
    @inline(__always) public var readable: UnsafeRawBufferPointer {
        guard let base else { return UnsafeRawBufferPointer(start: nil, count: 0) }
        return UnsafeRawBufferPointer(start: base + head, count: tail - head)
    }

    /// Returns space for `n` more bytes at the tail; call `commit(n)` after writing them.
    @inline(__always) public func reserve(_ n: Int) -> UnsafeMutableRawPointer {
        if tail + n > capacity { makeRoom(n) }
        return base.unsafelyUnwrapped + tail
    }

    /// Marks `n` reserved bytes as written.
    @inline(__always) public func commit(_ n: Int) {
        precondition(tail + n <= capacity, "ByteQueue.commit past reserved space")
        tail += n
    }

    /// Appends a copy of `bytes`.
    @inline(__always) public func append(_ bytes: UnsafeRawBufferPointer) {
        guard bytes.count > 0 else { return }
        let dst = reserve(bytes.count)
        dst.copyMemory(from: bytes.baseAddress.unsafelyUnwrapped, byteCount: bytes.count)
        tail += bytes.count
    }

    /// Drops `n` bytes from the head.
    @inline(__always) public func consume(_ n: Int) {
        precondition(n <= count, "ByteQueue.consume beyond its count")
        head += n
        if head == tail { head = 0; tail = 0 }
    }

    /// Drops everything, keeping the allocation.
    public func removeAll() { head = 0; tail = 0 }

    /// Frees the allocation if nothing is queued (idle links keep no buffer).
    public func shrinkIfEmpty() {
        guard head == tail, let b = base else { return }
        b.deallocate()
        base = nil
        capacity = 0
        head = 0
        tail = 0
    }

    private func makeRoom(_ n: Int) {
        let live = tail - head
        // Compact when that alone makes room and the live part is small; else grow geometrically.
        if let base, live + n <= capacity, live <= capacity / 2 {
            if live > 0 { (base).copyMemory(from: base + head, byteCount: live) }
            head = 0
            tail = live
            return
        }
        var newCapacity = max(capacity, 1024)
        if tight && live + n > 4_096 {
            // A quarter more each time (not just what is needed): a queue filled by many small appends is
            // copied a bounded number of times per byte, not once per 4 KiB appended.
            newCapacity = (max(live + n, capacity + capacity / 4) + 4_095) & ~4_095
        } else {
            while newCapacity < live + n { newCapacity *= 2 }
        }
        let fresh = UnsafeMutableRawPointer.allocate(byteCount: newCapacity, alignment: 16)
        if let base, live > 0 { fresh.copyMemory(from: base + head, byteCount: live) }
        base?.deallocate()
        base = fresh
        capacity = newCapacity
        head = 0
        tail = live
    }
}

extension UnsafeMutableRawPointer {
    @inline(__always) public func storeBE(_ v: UInt16, at offset: Int) {
        storeBytes(of: v.bigEndian, toByteOffset: offset, as: UInt16.self)
    }
    @inline(__always) public func storeBE(_ v: UInt32, at offset: Int) {
        storeBytes(of: v.bigEndian, toByteOffset: offset, as: UInt32.self)
    }
    @inline(__always) public func storeBE(_ v: UInt64, at offset: Int) {
        storeBytes(of: v.bigEndian, toByteOffset: offset, as: UInt64.self)
    }
}

extension UnsafeRawBufferPointer {
    @inline(__always) public func loadBE(_: UInt16.Type, at offset: Int) -> UInt16 {
        UInt16(bigEndian: loadUnaligned(fromByteOffset: offset, as: UInt16.self))
    }
    @inline(__always) public func loadBE(_: UInt32.Type, at offset: Int) -> UInt32 {
        UInt32(bigEndian: loadUnaligned(fromByteOffset: offset, as: UInt32.self))
    }
    @inline(__always) public func loadBE(_: UInt64.Type, at offset: Int) -> UInt64 {
        UInt64(bigEndian: loadUnaligned(fromByteOffset: offset, as: UInt64.self))
    }
}
