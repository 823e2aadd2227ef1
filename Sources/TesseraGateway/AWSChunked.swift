// The aws-chunked body encoding (Content-Encoding: aws-chunked), in every form current
// clients send:
//
//   chunk   = hex-size [";chunk-signature=" 64 hex] CRLF data CRLF
//   last    = "0" [";chunk-signature=" 64 hex] CRLF
//   trailer = *(name ":" value CRLF) ["x-amz-trailer-signature:" 64 hex CRLF] CRLF
//
// Signed chunks (STREAMING-AWS4-HMAC-SHA256-PAYLOAD[-TRAILER]) chain each signature to the
// previous one, starting from the request's; unsigned ones (STREAMING-UNSIGNED-PAYLOAD-
// TRAILER) carry no signature. The decoder never buffers more than one header line.
import Crypto
import Foundation
import NIOCore

struct AWSChunkedDecoder {
    enum State { case size, data(Int), dataEnd, trailer, done }
    private(set) var state = State.size
    private var line: [UInt8] = []
    private var chunkHash = SHA256()
    private var chunkSignature: String?
    private var previousSignature: String
    private let signing: SigningContext?
    /// Trailer headers, names lower-cased.
    private(set) var trailers: [(String, String)] = []
    private var trailerLines: [String] = []
    private(set) var decodedLength = 0

    static let maxLine = 4096
    static let maxChunk = 64 << 20

    /// `signing` is set for signed chunks.
    init(signing: SigningContext?) {
        self.signing = signing
        previousSignature = signing?.seedSignature ?? ""
    }

    var isDone: Bool { if case .done = state { return true } else { return false } }

    /// Decodes what `input` holds; returns the data it carried, as slices of `input`.
    mutating func feed(_ input: ByteBuffer) throws(S3Error) -> [ByteBuffer] {
        var buf = input
        var out: [ByteBuffer] = []
        while buf.readableBytes > 0 {
            switch state {
            case .size:
                guard let l = try takeLine(&buf) else { continue }
                try startChunk(l)
            case .data(let left):
                let n = min(left, buf.readableBytes)
                let slice = buf.readSlice(length: n)!
                if signing != nil { slice.withUnsafeReadableBytes { chunkHash.update(bufferPointer: $0) } }
                out.append(slice)
                decodedLength += n
                state = left == n ? .dataEnd : .data(left - n)
            case .dataEnd:
                guard let l = try takeLine(&buf) else { continue }
                guard l.isEmpty else { throw S3Error.incompleteBody("aws-chunked data is not followed by CRLF") }
                try endChunk()
                state = .size
            case .trailer:
                guard let l = try takeLine(&buf) else { continue }
                if l.isEmpty {
                    try finishTrailer()
                    state = .done
                } else {
                    try addTrailer(l)
                }
            case .done:
                throw S3Error.incompleteBody("bytes after the end of an aws-chunked body")
            }
        }
        return out
    }

    private mutating func takeLine(_ buf: inout ByteBuffer) throws(S3Error) -> [UInt8]? {
        let view = buf.readableBytesView
        if let i = view.firstIndex(of: UInt8(ascii: "\n")) {
            let n = i - view.startIndex + 1
            line += buf.readBytes(length: n)!
            guard line.count >= 2, line[line.count - 2] == UInt8(ascii: "\r") else { throw S3Error.incompleteBody("aws-chunked line without CRLF") }
            defer { line = [] }
            return Array(line.dropLast(2))
        }
        line += buf.readBytes(length: buf.readableBytes)!
        guard line.count <= Self.maxLine else { throw S3Error.incompleteBody("aws-chunked header line longer than \(Self.maxLine) bytes") }
        return nil
    }

    private mutating func startChunk(_ l: [UInt8]) throws(S3Error) {
        let text = String(decoding: l, as: UTF8.self)
        let parts = text.split(separator: ";", maxSplits: 1)
        guard let first = parts.first, let size = Int(first.trimmingCharacters(in: .whitespaces), radix: 16), size >= 0, size <= Self.maxChunk else {
            throw S3Error.incompleteBody("bad aws-chunked size line '\(text.prefix(80))'")
        }
        chunkSignature = nil
        if parts.count == 2 {
            let ext = parts[1]
            if ext.hasPrefix("chunk-signature=") { chunkSignature = String(ext.dropFirst("chunk-signature=".count)) }
        }
        if signing != nil && chunkSignature == nil { throw S3Error.signatureMismatch("aws-chunked chunk without a signature") }
        chunkHash = SHA256()
        if size == 0 {
            try endChunk()
            state = .trailer
        } else {
            state = .data(size)
        }
    }

    private mutating func endChunk() throws(S3Error) {
        guard let signing else { return }
        let h = hex(chunkHash.finalize())
        let expected = signing.chunkSignature(previous: previousSignature, chunkHash: h)
        guard let got = chunkSignature, SigV4.constantTimeEqual(expected, got) else {
            throw S3Error.signatureMismatch("a chunk signature does not match")
        }
        previousSignature = expected
    }

    private mutating func addTrailer(_ l: [UInt8]) throws(S3Error) {
        let text = String(decoding: l, as: UTF8.self)
        guard let colon = text.firstIndex(of: ":"), trailers.count < 16 else { throw S3Error.incompleteBody("bad aws-chunked trailer line") }
        let name = text[..<colon].trimmingCharacters(in: .whitespaces).lowercased()
        let value = text[text.index(after: colon)...].trimmingCharacters(in: .whitespaces)
        if name == "x-amz-trailer-signature" {
            guard let signing else { return }
            let canonical = trailerLines.map { $0 + "\n" }.joined()
            let expected = signing.trailerSignature(previous: previousSignature, trailerHash: hex(SHA256.hash(data: Array(canonical.utf8))))
            guard SigV4.constantTimeEqual(expected, value) else { throw S3Error.signatureMismatch("the trailer signature does not match") }
            trailerSigned = true
        } else {
            trailers.append((name, value))
            trailerLines.append("\(name):\(value)")
        }
    }

    private var trailerSigned = false

    private func finishTrailer() throws(S3Error) {
        if signing != nil && !trailers.isEmpty && !trailerSigned { throw S3Error.signatureMismatch("signed trailer without x-amz-trailer-signature") }
    }
}
