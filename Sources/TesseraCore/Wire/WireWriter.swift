// Little-endian binary encoding of messages (docs/WIRE.md, "Encoding").

/// Appends values to a byte array: integers little-endian, byte strings and arrays with a
/// u32 length or count first.
public struct WireWriter: Sendable {
    public private(set) var bytes: [UInt8]

    public init(capacity: Int = 64) {
        bytes = []
        bytes.reserveCapacity(capacity)
    }

    /// Empties the writer, keeping its storage for the next message.
    public mutating func reset() { bytes.removeAll(keepingCapacity: true) }

    public mutating func u8(_ v: UInt8) { bytes.append(v) }
    public mutating func u16(_ v: UInt16) { bytes.appendLE(v) }
    public mutating func u32(_ v: UInt32) { bytes.appendLE(v) }
    public mutating func u64(_ v: UInt64) { bytes.appendLE(v) }
    public mutating func bool(_ v: Bool) { bytes.append(v ? 1 : 0) }

    public mutating func fid(_ f: Fid) {
        u64(f.hi)
        u64(f.lo)
    }

    /// A byte string: u32 length, then the bytes.
    public mutating func blob(_ b: [UInt8]) {
        u32(UInt32(b.count))
        bytes += b
    }

    public mutating func string(_ s: String) { blob(Array(s.utf8)) }

    /// Bytes with no length in front: a fixed-size field such as a digest.
    public mutating func raw(_ b: [UInt8]) { bytes += b }

    /// An optional byte string: u8 0 for none, 1 then the string.
    public mutating func optionalBlob(_ b: [UInt8]?) {
        if let b {
            u8(1)
            blob(b)
        } else {
            u8(0)
        }
    }

    /// An array: u32 count, then each element.
    public mutating func array<T>(_ items: [T], _ each: (inout WireWriter, T) -> Void) {
        u32(UInt32(items.count))
        for item in items { each(&self, item) }
    }
}
