// Frames to and from bytes on a NIO channel. The decoder moves the reader index only when a
// whole frame is there; handlers encode their own frames into one buffer per burst.
import NIOCore
import TesseraCore

/// Bytes → `Frame`. A header that fails to parse (bad magic, checksum, version, kind,
/// oversize) is an error: frame boundaries are lost, so the connection must close.
public struct FrameDecoder: ByteToMessageDecoder {
    public typealias InboundOut = Frame

    public init() {}

    public mutating func decode(context: ChannelHandlerContext, buffer: inout ByteBuffer) throws -> DecodingState {
        guard let frame = try FrameDecoder.take(from: &buffer) else { return .needMoreData }
        context.fireChannelRead(wrapInboundOut(frame))
        return .continue
    }

    public mutating func decodeLast(context: ChannelHandlerContext, buffer: inout ByteBuffer, seenEOF: Bool) throws -> DecodingState {
        try decode(context: context, buffer: &buffer)
    }

    /// Takes one whole frame from `buffer`, or nothing if it is not all there yet.
    public static func take(from buffer: inout ByteBuffer) throws -> Frame? {
        guard let (header, body) = try takeSlice(from: &buffer) else { return nil }
        return Frame(kind: header.kind, requestID: header.requestID, deadlineMillis: header.deadlineMillis, body: Array(body.readableBytesView))
    }

    /// Takes one whole frame's header and its body as a slice of `buffer` (no copy), or
    /// nothing if the frame is not all there yet.
    static func takeSlice(from buffer: inout ByteBuffer) throws -> (Frame.Header, ByteBuffer)? {
        guard buffer.readableBytes >= Frame.headerSize else { return nil }
        let header = try buffer.withUnsafeReadableBytes { try Frame.parseHeader(UnsafeRawBufferPointer(rebasing: $0[0..<Frame.headerSize])) }
        guard buffer.readableBytes >= Frame.headerSize + header.bodyLength else { return nil }
        buffer.moveReaderIndex(forwardBy: Frame.headerSize)
        return (header, buffer.readSlice(length: header.bodyLength)!)
    }
}

/// A client's view of the frames a server sends: READ data stays in the connection's buffer
/// (a slice, no copy) until the handler puts it where the caller wants it.
enum ClientInbound {
    case frame(Frame)
    case data(requestID: UInt64, ByteBuffer)
}

/// Bytes → `ClientInbound`, with the same header checks as `FrameDecoder`.
struct ClientFrameDecoder: ByteToMessageDecoder {
    typealias InboundOut = ClientInbound

    mutating func decode(context: ChannelHandlerContext, buffer: inout ByteBuffer) throws -> DecodingState {
        guard let (header, body) = try FrameDecoder.takeSlice(from: &buffer) else { return .needMoreData }
        if header.kind == .data {
            context.fireChannelRead(wrapInboundOut(.data(requestID: header.requestID, body)))
        } else {
            let frame = Frame(kind: header.kind, requestID: header.requestID, deadlineMillis: header.deadlineMillis, body: Array(body.readableBytesView))
            context.fireChannelRead(wrapInboundOut(.frame(frame)))
        }
        return .continue
    }

    mutating func decodeLast(context: ChannelHandlerContext, buffer: inout ByteBuffer, seenEOF: Bool) throws -> DecodingState {
        try decode(context: context, buffer: &buffer)
    }
}

extension ByteBuffer {
    /// Appends one frame (header, then body) as docs/WIRE.md lays it out. Handlers append
    /// every frame of a burst to one buffer and write it once: one syscall for the burst.
    mutating func writeFrame(kind: FrameKind, requestID: UInt64, deadlineMillis: UInt32 = 0, body: [UInt8]) {
        reserveCapacity(minimumWritableBytes: Frame.headerSize + body.count)
        withUnsafeTemporaryAllocation(byteCount: Frame.headerSize, alignment: 8) { h in
            Frame.writeHeader(kind: kind, requestID: requestID, deadlineMillis: deadlineMillis, bodyLength: body.count, to: h.baseAddress!)
            writeBytes(UnsafeRawBufferPointer(h))
        }
        body.withUnsafeBytes { _ = writeBytes($0) }
    }

    /// A response frame; READ data goes in a `data` frame, the bytes alone as its body.
    mutating func writeResponse(_ response: Response, requestID: UInt64) {
        if case .data(let bytes) = response {
            writeFrame(kind: .data, requestID: requestID, body: bytes)
        } else {
            var w = WireWriter()
            response.encode(into: &w)
            writeFrame(kind: .response, requestID: requestID, body: w.bytes)
        }
    }

    mutating func writeFrame(_ f: Frame) {
        writeFrame(kind: f.kind, requestID: f.requestID, deadlineMillis: f.deadlineMillis, body: f.body)
    }
}

extension ChannelHandlerContext {
    /// Writes and flushes one frame on its own: handshake and refusal frames.
    func writeFrameAndFlush(_ frame: Frame) -> EventLoopFuture<Void> {
        var out = channel.allocator.buffer(capacity: Frame.headerSize + frame.body.count)
        out.writeFrame(frame)
        return writeAndFlush(NIOAny(out))
    }
}
