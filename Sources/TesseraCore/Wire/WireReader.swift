// Decoding of messages from untrusted bytes: every length is checked before it is used.

/// Reads what `WireWriter` wrote. Any read past the end, or a count that could not possibly
/// fit in the remaining bytes, throws a `.invalidArgument` error naming the field: bytes from
/// the network never trap. Field names are autoclosures: they are built only for the error.
///
/// A reader borrows its bytes: it lives inside `read(_:_:)` (or the caller's own
/// `withUnsafeBytes`), so bytes from the network are decoded where they arrived.
public struct WireReader {
    private let bytes: UnsafeRawBufferPointer
    public private(set) var offset: Int

    /// A reader of `bytes`, which must stay valid while it is used.
    public init(unsafeBytes bytes: UnsafeRawBufferPointer, offset: Int = 0) {
        self.bytes = bytes
        self.offset = offset
    }

    /// Runs `body` with a reader of `bytes`.
    public static func read<T>(_ bytes: [UInt8], _ body: (inout WireReader) throws -> T) rethrows -> T {
        try bytes.withUnsafeBytes { raw in
            var r = WireReader(unsafeBytes: raw)
            return try body(&r)
        }
    }

    public var remaining: Int { bytes.count - offset }

    private mutating func take(_ n: Int, _ what: @autoclosure () -> String) throws -> Int {
        guard n >= 0, n <= remaining else {
            throw TesseraError(.invalidArgument, "malformed message: \(what()) needs \(n) bytes, \(remaining) left")
        }
        defer { offset += n }
        return offset
    }

    public mutating func u8(_ what: @autoclosure () -> String = "u8") throws -> UInt8 { bytes[try take(1, what())] }
    public mutating func u16(_ what: @autoclosure () -> String = "u16") throws -> UInt16 { UInt16(littleEndian: bytes.loadUnaligned(fromByteOffset: try take(2, what()), as: UInt16.self)) }
    public mutating func u32(_ what: @autoclosure () -> String = "u32") throws -> UInt32 { UInt32(littleEndian: bytes.loadUnaligned(fromByteOffset: try take(4, what()), as: UInt32.self)) }
    public mutating func u64(_ what: @autoclosure () -> String = "u64") throws -> UInt64 { UInt64(littleEndian: bytes.loadUnaligned(fromByteOffset: try take(8, what()), as: UInt64.self)) }

    public mutating func bool(_ what: @autoclosure () -> String = "flag") throws -> Bool {
        switch try u8(what()) {
        case 0: return false
        case 1: return true
        case let v: throw TesseraError(.invalidArgument, "malformed message: \(what()) is \(v), not 0 or 1")
        }
    }

    public mutating func fid(_ what: @autoclosure () -> String = "fid") throws -> Fid { Fid(hi: try u64(what()), lo: try u64(what())) }

    public mutating func blob(_ what: @autoclosure () -> String = "bytes") throws -> [UInt8] {
        let n = Int(try u32(what() + " length"))
        let at = try take(n, what())
        return Array(UnsafeRawBufferPointer(rebasing: bytes[at..<(at + n)]))
    }

    public mutating func string(_ what: @autoclosure () -> String = "string") throws -> String {
        String(decoding: try blob(what()), as: UTF8.self)
    }

    public mutating func optionalBlob(_ what: @autoclosure () -> String = "bytes") throws -> [UInt8]? {
        try bool(what() + " presence") ? try blob(what()) : nil
    }

    /// An array whose elements take at least `minimumSize` bytes each, so a forged count
    /// cannot make the reader allocate more than the message could hold.
    public mutating func array<T>(_ what: @autoclosure () -> String, minimumSize: Int = 1, _ each: (inout WireReader) throws -> T) throws -> [T] {
        let n = Int(try u32(what() + " count"))
        guard n <= remaining / max(minimumSize, 1) else {
            throw TesseraError(.invalidArgument, "malformed message: \(n) \(what()) cannot fit in \(remaining) bytes")
        }
        var out: [T] = []
        out.reserveCapacity(n)
        for _ in 0..<n { out.append(try each(&self)) }
        return out
    }

    /// Fails unless every byte was consumed.
    public func finish(_ what: @autoclosure () -> String) throws {
        guard remaining == 0 else {
            throw TesseraError(.invalidArgument, "malformed message: \(remaining) bytes after the end of \(what())")
        }
    }
}
