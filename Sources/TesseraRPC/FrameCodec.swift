// Frames to and from bytes on a NIO channel. Each connection handler takes the bytes its
// socket reads straight from the channel and cuts them into frames itself
// (`FrameAccumulator`): no decoder stage in the pipeline, no message per frame, and a
// frame's body is handed over as a slice of the received bytes. Handlers encode their own
// frames into one buffer per burst.
import NIOCore
import TesseraCore

/// Cuts the bytes a connection receives into whole frames. Bytes that do not yet make a
/// whole frame are held until the rest arrives. A header that fails to parse (bad magic,
/// checksum, version, kind, oversize) is an error: frame boundaries are lost, so the
/// connection must close.
struct FrameAccumulator {
    /// Received bytes not yet cut into frames: the start of a frame.
    private var held: ByteBuffer?

    /// Bytes held back waiting for the rest of their frame.
    var heldBytes: Int { held?.readableBytes ?? 0 }

    /// Takes `incoming` and calls `each` with every frame now whole, in order: its header and
    /// its body (a slice of the received bytes, valid beyond the call only if kept). `each`
    /// returns false to stop: the connection is closing and the rest is dropped. A header
    /// declaring a body longer than `maxBody()` (asked anew for each frame) is an error as
    /// soon as the header is here, before any of that body is held.
    mutating func receive(
        _ incoming: ByteBuffer, maxBody: () -> Int = { Frame.maxBody }, _ each: (Frame.Header, ByteBuffer) throws -> Bool
    ) throws {
        var buffer: ByteBuffer
        if var h = held {
            held = nil
            h.writeImmutableBuffer(incoming)
            buffer = h
        } else {
            buffer = incoming
        }
        while let (header, body) = try Self.takeSlice(from: &buffer, maxBody: maxBody()) {
            guard try each(header, body) else { return }
        }
        if buffer.readableBytes > 0 {
            // A buffer with frames taken from it keeps only its unread bytes (the next append
            // copies them once into storage of their own); one still whole grows in place.
            held = buffer.readerIndex == 0 ? buffer : buffer.slice()
        }
    }

    /// The header of the frame whose start is held, once all of the header is here (nil if
    /// it does not parse: the next `receive` throws).
    var heldHeader: Frame.Header? {
        guard let h = held else { return nil }
        return (try? Self.header(of: h)) ?? nil
    }

    /// Lets go of the held start of a frame whose header is here (`heldHeader`), returning
    /// the part of its body received so far: the caller takes the rest of the body itself.
    mutating func takeHeldBody() -> ByteBuffer {
        var h = held!
        held = nil
        h.moveReaderIndex(forwardBy: Frame.headerSize)
        return h
    }

    /// The header of the frame `buffer` starts with, or nothing if not all of it is there.
    static func header(of buffer: ByteBuffer) throws -> Frame.Header? {
        guard buffer.readableBytes >= Frame.headerSize else { return nil }
        return try buffer.withUnsafeReadableBytes { try Frame.parseHeader(UnsafeRawBufferPointer(rebasing: $0[0..<Frame.headerSize])) }
    }

    /// Takes one whole frame from `buffer`, or nothing if it is not all there yet.
    static func take(from buffer: inout ByteBuffer) throws -> Frame? {
        guard let (header, body) = try takeSlice(from: &buffer) else { return nil }
        return Frame(header, body)
    }

    /// Takes one whole frame's header and its body as a slice of `buffer` (no copy), or
    /// nothing if the frame is not all there yet; a body longer than `maxBody` is an error.
    static func takeSlice(from buffer: inout ByteBuffer, maxBody: Int = Frame.maxBody) throws -> (Frame.Header, ByteBuffer)? {
        guard let header = try header(of: buffer) else { return nil }
        guard header.bodyLength <= maxBody else {
            throw TesseraError(.tooLarge, "a \(header.kind) frame of \(header.bodyLength) bytes exceeds the \(maxBody)-byte limit here")
        }
        guard buffer.readableBytes >= Frame.headerSize + header.bodyLength else { return nil }
        buffer.moveReaderIndex(forwardBy: Frame.headerSize)
        return (header, buffer.readSlice(length: header.bodyLength)!)
    }
}

extension Frame {
    /// A frame of `header` with a copy of `body`.
    init(_ header: Frame.Header, _ body: ByteBuffer) {
        self.init(kind: header.kind, requestID: header.requestID, deadlineMillis: header.deadlineMillis, body: body.bytes)
    }
}

extension ByteBuffer {
    /// The readable bytes as an array (one copy).
    var bytes: [UInt8] {
        withUnsafeReadableBytes { Array($0) }
    }

    /// Appends one frame (header, then body) as docs/WIRE.md lays it out. Handlers append
    /// every frame of a burst to one buffer and write it once: one syscall for the burst.
    mutating func writeFrame(kind: FrameKind, requestID: UInt64, deadlineMillis: UInt32 = 0, body: [UInt8]) {
        body.withUnsafeBytes { writeFrame(kind: kind, requestID: requestID, deadlineMillis: deadlineMillis, body: $0) }
    }

    mutating func writeFrame(kind: FrameKind, requestID: UInt64, deadlineMillis: UInt32 = 0, body: UnsafeRawBufferPointer) {
        reserveCapacity(minimumWritableBytes: Frame.headerSize + body.count)
        writeWithUnsafeMutableBytes(minimumWritableBytes: Frame.headerSize) { h in
            Frame.writeHeader(kind: kind, requestID: requestID, deadlineMillis: deadlineMillis, bodyLength: body.count, to: h.baseAddress!)
            return Frame.headerSize
        }
        writeBytes(body)
    }

    /// A response frame; READ data goes in a `data` frame, the bytes alone as its body.
    mutating func writeResponse(_ response: Response, requestID: UInt64) {
        var scratch = WireWriter()
        writeResponse(response, requestID: requestID, scratch: &scratch)
    }

    /// The same, encoding the body in `scratch`, whose storage a handler keeps from one
    /// response to the next.
    mutating func writeResponse(_ response: Response, requestID: UInt64, scratch: inout WireWriter) {
        if case .data(let bytes) = response {
            writeFrame(kind: .data, requestID: requestID, body: bytes)
        } else {
            scratch.reset()
            response.encode(into: &scratch)
            writeFrame(kind: .response, requestID: requestID, body: scratch.bytes)
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
