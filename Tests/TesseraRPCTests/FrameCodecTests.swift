// The frame accumulator the connection handlers use, fed one byte at a time, all at once,
// one frame at a time, and in random pieces.
import NIOCore
import Testing
import TesseraCore
@testable import TesseraRPC

@Suite struct FrameCodecTests {
    static func frame(_ i: Int) -> Frame {
        let body: [UInt8] = (0..<(i * 37)).map { (j: Int) -> UInt8 in UInt8(truncatingIfNeeded: j &* i) }
        let kind: FrameKind = i % 3 == 0 ? .response : .request
        return Frame(kind: kind, requestID: UInt64(i * 7), deadlineMillis: UInt32(i), body: body)
    }
    static let frames: [Frame] = (0..<20).map(frame)
    static let wire: [UInt8] = frames.flatMap { $0.encode() }

    func decode(_ chunks: [[UInt8]]) throws -> [Frame] {
        var frames = FrameAccumulator()
        var out: [Frame] = []
        for chunk in chunks {
            try frames.receive(ByteBuffer(bytes: chunk)) { header, body in
                out.append(Frame(header, body))
                return true
            }
        }
        #expect(frames.heldBytes == 0)
        return out
    }

    @Test func oneByteAtATime() throws {
        #expect(try decode(Self.wire.map { [$0] }) == Self.frames)
    }

    @Test func allAtOnce() throws {
        #expect(try decode([Self.wire]) == Self.frames)
    }

    @Test func oneFrameAtATime() throws {
        #expect(try decode(Self.frames.map { $0.encode() }) == Self.frames)
    }

    @Test func randomSplits() throws {
        var rng = SeededRandom.forRun("FrameCodecTests.randomSplits")
        for _ in 0..<50 {
            var chunks: [[UInt8]] = []
            var at = 0
            while at < Self.wire.count {
                let n = min(Int.random(in: 1...300, using: &rng), Self.wire.count - at)
                chunks.append(Array(Self.wire[at..<(at + n)]))
                at += n
            }
            #expect(try decode(chunks) == Self.frames)
        }
    }

    @Test func bufferEncodingWritesWhatTheDecoderReads() throws {
        var buffer = ByteBuffer()
        for f in Self.frames { buffer.writeFrame(f) }
        #expect(buffer.readBytes(length: buffer.readableBytes)! == Self.wire)
        // Also after the reader index has moved: the header checksum covers the right bytes.
        var shifted = ByteBuffer(bytes: [1, 2, 3])
        shifted.moveReaderIndex(forwardBy: 2)
        for f in Self.frames { shifted.writeFrame(f) }
        shifted.moveReaderIndex(forwardBy: 1)
        var decoded: [Frame] = []
        while let f = try FrameAccumulator.take(from: &shifted) { decoded.append(f) }
        #expect(decoded == Self.frames)
    }

    @Test func garbageIsAnError() throws {
        var frames = FrameAccumulator()
        #expect(throws: (any Error).self) {
            try frames.receive(ByteBuffer(bytes: [UInt8](repeating: 0x41, count: 64))) { _, _ in true }
        }
    }

    @Test func aPartFrameIsHeldUntilItsRestComes() throws {
        var frames = FrameAccumulator()
        let wire = Self.frames[5].encode() + Self.frames[6].encode()
        var out: [Frame] = []
        try frames.receive(ByteBuffer(bytes: wire[0..<(wire.count - 10)])) { h, b in out.append(Frame(h, b)); return true }
        #expect(out == [Self.frames[5]])
        #expect(frames.heldBytes == Self.frames[6].encode().count - 10)
        try frames.receive(ByteBuffer(bytes: wire[(wire.count - 10)...])) { h, b in out.append(Frame(h, b)); return true }
        #expect(out == [Self.frames[5], Self.frames[6]])
        #expect(frames.heldBytes == 0)
    }

    @Test func stoppingDropsTheRest() throws {
        var frames = FrameAccumulator()
        var seen = 0
        try frames.receive(ByteBuffer(bytes: Self.wire)) { _, _ in
            seen += 1
            return seen < 3
        }
        #expect(seen == 3)
    }
}
