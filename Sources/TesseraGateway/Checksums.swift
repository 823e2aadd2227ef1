// The digests of a body as it streams through: MD5 for the ETag (and Content-MD5),
// SHA-256 when the signature covers the payload, and the additional checksum an S3
// client asked for (x-amz-checksum-*), verified against what the client sent.
import CTesseraSupport
import Crypto
import Foundation

enum ChecksumAlgorithm: String, CaseIterable {
    case crc32, crc32c, crc64nvme, sha1, sha256

    /// The header (and trailer) that carries it.
    var header: String { "x-amz-checksum-\(rawValue)" }

    init?(header: String) {
        guard header.hasPrefix("x-amz-checksum-") else { return nil }
        self.init(rawValue: String(header.dropFirst("x-amz-checksum-".count)))
    }
}

struct RunningChecksum {
    let algorithm: ChecksumAlgorithm
    private var crc32: UInt32 = 0
    private var crc64: UInt64 = 0
    private var sha1 = Insecure.SHA1()
    private var sha256 = SHA256()

    init(_ algorithm: ChecksumAlgorithm) { self.algorithm = algorithm }

    mutating func update(_ p: UnsafeRawBufferPointer) {
        guard let base = p.baseAddress, p.count > 0 else { return }
        switch algorithm {
        case .crc32: crc32 = tessera_crc32(crc32, base, p.count)
        case .crc32c: crc32 = tessera_crc32c(crc32, base, p.count)
        case .crc64nvme: crc64 = tessera_crc64nvme(crc64, base, p.count)
        case .sha1: sha1.update(bufferPointer: p)
        case .sha256: sha256.update(bufferPointer: p)
        }
    }

    /// The checksum as S3 prints it: base64 of the big-endian CRC or of the digest.
    func finish() -> String {
        switch algorithm {
        case .crc32, .crc32c: return Data(withUnsafeBytes(of: crc32.bigEndian, Array.init)).base64EncodedString()
        case .crc64nvme: return Data(withUnsafeBytes(of: crc64.bigEndian, Array.init)).base64EncodedString()
        case .sha1: return Data(sha1.finalize()).base64EncodedString()
        case .sha256: return Data(sha256.finalize()).base64EncodedString()
        }
    }
}

struct BodyDigests {
    private var md5 = Insecure.MD5()
    private var payload: SHA256?
    var checksum: RunningChecksum?
    private(set) var count = 0

    init(payloadHash: Bool, checksum: ChecksumAlgorithm?) {
        payload = payloadHash ? SHA256() : nil
        self.checksum = checksum.map(RunningChecksum.init)
    }

    mutating func update(_ p: UnsafeRawBufferPointer) {
        md5.update(bufferPointer: p)
        payload?.update(bufferPointer: p)
        checksum?.update(p)
        count += p.count
    }

    /// Finishes; returns the MD5, the payload SHA-256 in hex (if kept) and the checksum.
    func finish() -> (md5: [UInt8], payloadSHA256: String?, checksum: String?) {
        (Array(md5.finalize()), payload.map { hex($0.finalize()) }, checksum?.finish())
    }
}
