// The 128-bit file identifier that names every index and object in Tessera.

/// A 128-bit identifier. Ordered as an unsigned 128-bit number (`hi` first), which is also
/// the byte order of its 16-byte big-endian encoding used as a B-tree key.
public struct Fid: Hashable, Comparable, Sendable, CustomStringConvertible {
    public var hi: UInt64
    public var lo: UInt64

    public init(hi: UInt64, lo: UInt64) {
        self.hi = hi
        self.lo = lo
    }

    /// Parses `HI:LO` in hexadecimal (`0x` prefixes optional), as `description` prints it.
    public init?(_ text: String) {
        let parts = text.split(separator: ":", omittingEmptySubsequences: false)
        guard parts.count == 2,
            let hi = Fid.parseHex(parts[0]), let lo = Fid.parseHex(parts[1])
        else { return nil }
        self.init(hi: hi, lo: lo)
    }

    private static func parseHex(_ part: Substring) -> UInt64? {
        let digits = part.hasPrefix("0x") ? part.dropFirst(2) : part
        guard !digits.isEmpty, digits.count <= 16 else { return nil }
        return UInt64(digits, radix: 16)
    }

    public var description: String {
        "0x" + String(hi, radix: 16) + ":0x" + String(lo, radix: 16)
    }

    public static func < (a: Fid, b: Fid) -> Bool {
        (a.hi, a.lo) < (b.hi, b.lo)
    }

    /// 16 bytes, big-endian, so byte order equals numeric order.
    public var bytes: [UInt8] { bigEndianBytes(hi) + bigEndianBytes(lo) }

    /// Decodes the 16-byte big-endian form; nil if `bytes` is not 16 bytes long.
    public init?<C: Collection>(bytes: C) where C.Element == UInt8 {
        guard bytes.count == 16 else { return nil }
        self.init(hi: UInt64(bigEndianBytes: bytes.prefix(8)), lo: UInt64(bigEndianBytes: bytes.dropFirst(8)))
    }
}
