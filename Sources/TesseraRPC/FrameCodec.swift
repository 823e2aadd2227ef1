// Frames to and from bytes on a NIO channel. The decoder moves the reader index only when a
// whole frame is there.
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
        guard buffer.readableBytes >= Frame.headerSize else { return nil }
        let header = try buffer.withUnsafeReadableBytes { try Frame.parseHeader(UnsafeRawBufferPointer(rebasing: $0[0..<Frame.headerSize])) }
        guard buffer.readableBytes >= Frame.headerSize + header.bodyLength else { return nil }
        buffer.moveReaderIndex(forwardBy: Frame.headerSize)
        let body = buffer.readBytes(length: header.bodyLength)!
        return Frame(kind: header.kind, requestID: header.requestID, deadlineMillis: header.deadlineMillis, body: body)
    }
}

/// `Frame` → bytes.
public struct FrameEncoder: MessageToByteEncoder {
    public typealias OutboundIn = Frame

    public init() {}

    public func encode(data: Frame, out: inout ByteBuffer) throws {
        out.reserveCapacity(minimumWritableBytes: Frame.headerSize + data.body.count)
        out.writeBytes(data.encodeHeader())
        out.writeBytes(data.body)
    }
}
