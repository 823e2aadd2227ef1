// The digests of a body as it streams through: MD5 for the ETag (and Content-MD5),
// SHA-256 when the signature covers the payload, and the additional checksum an S3
// client asked for (x-amz-checksum-*), verified against what the client sent.
import CTesseraSupport
import Crypto
import Foundation

enum ChecksumAlgorithm: String, CaseIterable {
    case crc32, crc32c, crc64nvme, sha1, sha256

    /// The XML element that carries it (ChecksumCRC32, …).
    var element: String { "Checksum" + rawValue.uppercased() }

    /// The header (and trailer) that carries it.
    var header: String { "x-amz-checksum-\(rawValue)" }

    init?(header: String) {
        guard header.hasPrefix("x-amz-checksum-") else { return nil }
        self.init(rawValue: String(header.dropFirst("x-amz-checksum-".count)))
    }
}

/// How an object's checksum covers it: a checksum of its bytes (every single PUT, and a
/// multipart upload that asked for one), or a checksum of its parts' checksums, printed with
/// `-N` for N parts. Kept in the object's `x-amz-checksum-type` attribute (absent: full).
enum ChecksumType: String {
    case composite = "COMPOSITE"
    case fullObject = "FULL_OBJECT"

    static let attribute = "x-amz-checksum-type"

    /// The type of a stored object's checksum.
    static func of(_ attributes: [(name: String, value: String)]) -> String {
        attributes.first { $0.name == attribute }?.value ?? ChecksumType.fullObject.rawValue
    }

    /// The type an upload with `algorithm` gets when it names none, and whether it may
    /// have `self`: CRC64NVME is full-object only; SHA-1 and SHA-256 composite only.
    static func `default`(for algorithm: ChecksumAlgorithm) -> ChecksumType { algorithm == .crc64nvme ? .fullObject : .composite }
    func allowed(for algorithm: ChecksumAlgorithm) -> Bool {
        switch self {
        case .composite: return algorithm != .crc64nvme
        case .fullObject: return algorithm == .crc32 || algorithm == .crc32c || algorithm == .crc64nvme
        }
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

/// Combining CRCs: the CRC of A‖B from the CRCs of A and B and the length of B, for the
/// reflected CRCs S3 uses (CRC-32, CRC-32C, CRC-64/NVME; each with all-ones initial value
/// and final xor, which cancel in the combination). Polynomial arithmetic mod P with bit i
/// of a value standing for x^(width-1-i): crc(A‖B) = crc(A)·x^(8|B|) + crc(B).
struct CRCCombiner {
    let width: Int
    let polynomial: UInt64  // reflected
    /// x^(2^k) mod P, for k = 0 ..< 64.
    private var powers: [UInt64] = []

    init(_ algorithm: ChecksumAlgorithm) {
        switch algorithm {
        case .crc32: (width, polynomial) = (32, 0xEDB8_8320)
        case .crc32c: (width, polynomial) = (32, 0x82F6_3B78)
        default: (width, polynomial) = (64, 0x9A6C_9329_AC4B_C9B5)
        }
        var p = one >> 1  // x^1
        for _ in 0..<64 {
            powers.append(p)
            p = multiply(p, p)
        }
    }

    private var one: UInt64 { 1 << UInt64(width - 1) }

    /// a·b mod P.
    func multiply(_ a: UInt64, _ b: UInt64) -> UInt64 {
        guard a != 0 else { return 0 }
        var (m, p, b) = (one, UInt64(0), b)
        while true {
            if a & m != 0 {
                p ^= b
                if a & (m - 1) == 0 { return p }
            }
            m >>= 1
            b = b & 1 != 0 ? (b >> 1) ^ polynomial : b >> 1
        }
    }

    /// The CRC of A‖B.
    func combine(_ a: UInt64, _ b: UInt64, lengthOfB n: UInt64) -> UInt64 {
        var shift = one  // x^0
        var (n, k) = (n, 3)  // x^(8n) = product of x^(2^k) over the bits of n, k from 3
        while n != 0 {
            if n & 1 != 0 { shift = multiply(powers[k & 63], shift) }
            n >>= 1
            k += 1
        }
        return multiply(shift, a) ^ b
    }
}

extension XMLWriter {
    /// One element (ChecksumCRC32, …) per checksum among `attributes`.
    mutating func checksums(_ attributes: [(name: String, value: String)]) {
        for a in attributes { if let alg = ChecksumAlgorithm(header: a.name) { element(alg.element, a.value) } }
    }
}

extension ChecksumAlgorithm {
    /// A checksum as S3 prints it (base64 of big-endian bytes) to its bytes, and back.
    static func bytes(_ printed: String) -> [UInt8]? { Data(base64Encoded: printed).map(Array.init) }

    /// The checksum of a multipart object from its parts' checksums and sizes: of the
    /// whole object (CRCs combined), or of the parts' checksums, with `-N`.
    func multipart(_ parts: [(checksum: String, size: UInt64)], type: ChecksumType) -> String? {
        var raw: [[UInt8]] = []
        for p in parts {
            guard let b = Self.bytes(p.checksum) else { return nil }
            raw.append(b)
        }
        switch type {
        case .composite:
            var c = RunningChecksum(self)
            for b in raw { b.withUnsafeBytes { c.update($0) } }
            return c.finish() + "-\(parts.count)"
        case .fullObject:
            guard self == .crc32 || self == .crc32c || self == .crc64nvme else { return nil }
            let combiner = CRCCombiner(self)
            let size = self == .crc64nvme ? 8 : 4
            var crc: UInt64 = 0
            for (i, b) in raw.enumerated() {
                guard b.count == size else { return nil }
                let v = b.reduce(UInt64(0)) { $0 << 8 | UInt64($1) }
                crc = i == 0 ? v : combiner.combine(crc, v, lengthOfB: parts[i].size)
            }
            let out = size == 8 ? withUnsafeBytes(of: crc.bigEndian, Array.init) : withUnsafeBytes(of: UInt32(truncatingIfNeeded: crc).bigEndian, Array.init)
            return Data(out).base64EncodedString()
        }
    }
}
