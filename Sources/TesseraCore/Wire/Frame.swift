// The RPC frame: a fixed header with magic, version, kind, request id, deadline and body
// length, protected by CRC32C, then the body (docs/WIRE.md, "Frame").
//
//   off  size  field
//   0    4     magic "TSRP"
//   4    1     protocol version (1)
//   5    1     kind (FrameKind)
//   6    2     flags, zero
//   8    8     request id: chosen by the client, echoed in the response
//   16   4     deadline: milliseconds the client waits for the answer (0: no deadline)
//   20   4     body length (at most Frame.maxBody)
//   24   4     CRC32C of bytes 0..<24
//   28   ...   body

/// What a frame carries.
public enum FrameKind: UInt8, Sendable {
    case request = 1
    case response = 2
    /// Client → server: client nonce (32 bytes). Opens the handshake.
    case hello = 3
    /// Server → client: server nonce (32 bytes).
    case challenge = 4
    /// Client → server: HMAC-SHA256(secret, "client" ++ client nonce ++ server nonce).
    case proof = 5
    /// Server → client: HMAC-SHA256(secret, "server" ++ server nonce ++ client nonce).
    case welcome = 6
    /// Either side, before closing: u16 status, then a message.
    case refused = 7
    /// Server → client: the response to a READ whose body is the bytes read, with no
    /// response encoding around them, so neither side copies them into or out of one.
    case data = 8
}

public struct Frame: Sendable, Equatable {
    public static let magic: UInt32 = 0x5052_5354  // "TSRP" little-endian
    public static let version: UInt8 = 1
    public static let headerSize = 28
    /// The largest body accepted: a 16 MiB unit plus room for its request fields.
    public static let maxBody = (16 << 20) + 4096

    public var kind: FrameKind
    public var requestID: UInt64
    public var deadlineMillis: UInt32
    public var body: [UInt8]

    public init(kind: FrameKind, requestID: UInt64 = 0, deadlineMillis: UInt32 = 0, body: [UInt8] = []) {
        self.kind = kind
        self.requestID = requestID
        self.deadlineMillis = deadlineMillis
        self.body = body
    }

    /// The header of this frame, ready to precede the body on the wire.
    public func encodeHeader() -> [UInt8] {
        var h = [UInt8](repeating: 0, count: Frame.headerSize)
        h.withUnsafeMutableBytes { Frame.writeHeader(kind: kind, requestID: requestID, deadlineMillis: deadlineMillis, bodyLength: body.count, to: $0.baseAddress!) }
        return h
    }

    /// Writes the 28 header bytes of a frame with a body of `bodyLength` bytes at `h`.
    public static func writeHeader(kind: FrameKind, requestID: UInt64, deadlineMillis: UInt32, bodyLength: Int, to h: UnsafeMutableRawPointer) {
        h.storeBytes(of: magic.littleEndian, toByteOffset: 0, as: UInt32.self)
        h.storeBytes(of: version, toByteOffset: 4, as: UInt8.self)
        h.storeBytes(of: kind.rawValue, toByteOffset: 5, as: UInt8.self)
        h.storeBytes(of: 0, toByteOffset: 6, as: UInt16.self)
        h.storeBytes(of: requestID.littleEndian, toByteOffset: 8, as: UInt64.self)
        h.storeBytes(of: deadlineMillis.littleEndian, toByteOffset: 16, as: UInt32.self)
        h.storeBytes(of: UInt32(bodyLength).littleEndian, toByteOffset: 20, as: UInt32.self)
        let crc = CRC32C.checksum(UnsafeRawBufferPointer(start: h, count: headerSize - 4))
        h.storeBytes(of: crc.littleEndian, toByteOffset: 24, as: UInt32.self)
    }

    public func encode() -> [UInt8] { encodeHeader() + body }

    /// A parsed header: everything but the body.
    public struct Header: Sendable, Equatable {
        public var kind: FrameKind
        public var requestID: UInt64
        public var deadlineMillis: UInt32
        public var bodyLength: Int

        public init(kind: FrameKind, requestID: UInt64, deadlineMillis: UInt32, bodyLength: Int) {
            self.kind = kind
            self.requestID = requestID
            self.deadlineMillis = deadlineMillis
            self.bodyLength = bodyLength
        }
    }

    /// Parses the 28 header bytes. A frame that fails here cannot be skipped reliably, so
    /// the connection must be closed; the error says why.
    public static func parseHeader(_ b: UnsafeRawBufferPointer) throws -> Header {
        precondition(b.count >= headerSize)
        func load<T: FixedWidthInteger>(_ at: Int, _: T.Type) -> T { T(littleEndian: b.loadUnaligned(fromByteOffset: at, as: T.self)) }
        guard load(0, UInt32.self) == magic else { throw TesseraError(.invalidArgument, "bad frame magic") }
        guard load(24, UInt32.self) == CRC32C.checksum(UnsafeRawBufferPointer(rebasing: b[0..<24])) else {
            throw TesseraError(.invalidArgument, "frame header checksum mismatch")
        }
        guard b[4] == version else {
            throw TesseraError(.unsupportedVersion, "protocol version \(b[4]) is not supported (this build speaks \(version))")
        }
        guard let kind = FrameKind(rawValue: b[5]) else { throw TesseraError(.invalidArgument, "unknown frame kind \(b[5])") }
        guard load(6, UInt16.self) == 0 else { throw TesseraError(.invalidArgument, "unknown frame flags") }
        let length = Int(load(20, UInt32.self))
        guard length <= maxBody else {
            throw TesseraError(.tooLarge, "frame body of \(length) bytes exceeds the \(maxBody)-byte limit")
        }
        return Header(kind: kind, requestID: load(8, UInt64.self), deadlineMillis: load(16, UInt32.self), bodyLength: length)
    }
}
