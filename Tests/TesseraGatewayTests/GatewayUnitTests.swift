// The gateway's parsers and checks against published vectors and hostile input:
// SigV4 (AWS's documented examples), aws-chunked decoding fed in every split, the CRCs'
// check values, the XML parser, dates and ranges.
import CTesseraSupport
import Foundation
import NIOCore
import NIOHTTP1
import Testing
import TesseraCore
@testable import TesseraGateway

@Suite struct ChecksumVectorTests {
    @Test func checkValues() {
        let s = Array("123456789".utf8)
        #expect(tessera_crc32(0, s, s.count) == 0xCBF4_3926)
        #expect(tessera_crc64nvme(0, s, s.count) == 0xAE8B_1486_0A79_9888)
        var c = RunningChecksum(.crc32)
        s.withUnsafeBytes { c.update($0) }
        #expect(c.finish() == Data([0xCB, 0xF4, 0x39, 0x26]).base64EncodedString())
    }

    @Test func crcsContinueAcrossPieces() {
        let bytes = (0..<1000).map { UInt8(truncatingIfNeeded: $0 &* 37) }
        let whole = tessera_crc32(0, bytes, bytes.count)
        let whole64 = tessera_crc64nvme(0, bytes, bytes.count)
        for cut in [0, 1, 7, 8, 9, 333, 1000] {
            let a = Array(bytes[..<cut])
            let b = Array(bytes[cut...])
            #expect(tessera_crc32(tessera_crc32(0, a, a.count), b, b.count) == whole)
            #expect(tessera_crc64nvme(tessera_crc64nvme(0, a, a.count), b, b.count) == whole64)
        }
    }
}

/// Multipart checksums: CRCs of parts combined into the CRC of the whole, for every
/// algorithm and cut, against the CRC computed over the whole.
@Suite struct CRCCombineTests {
    @Test(arguments: [ChecksumAlgorithm.crc32, .crc32c, .crc64nvme])
    func combinedEqualsWhole(_ algorithm: ChecksumAlgorithm) {
        let bytes = (0..<5000).map { UInt8(truncatingIfNeeded: ($0 &* 2_654_435_761) >> 13) }
        func crc(_ b: ArraySlice<UInt8>) -> String {
            var c = RunningChecksum(algorithm)
            Array(b).withUnsafeBytes { c.update($0) }
            return c.finish()
        }
        let whole = crc(bytes[...])
        for cuts in [[0], [1], [4999], [1, 2], [100, 2500, 4000], [0, 0, 5000]] {
            var parts: [(checksum: String, size: UInt64)] = []
            var from = 0
            for c in cuts + [bytes.count] {
                parts.append((crc(bytes[from..<c]), UInt64(c - from)))
                from = c
            }
            #expect(algorithm.multipart(parts, type: .fullObject) == whole, "cuts \(cuts)")
        }
    }

    @Test func compositeIsTheChecksumOfTheChecksums() {
        let a = RunningChecksum(.sha256)
        let parts = [(checksum: a.finish(), size: UInt64(0)), (checksum: a.finish(), size: UInt64(0))]
        var c = RunningChecksum(.sha256)
        let raw = Data(base64Encoded: a.finish())!
        (raw + raw).withUnsafeBytes { c.update($0) }
        #expect(ChecksumAlgorithm.sha256.multipart(parts, type: .composite) == c.finish() + "-2")
        #expect(ChecksumAlgorithm.sha256.multipart(parts, type: .fullObject) == nil)
        #expect(ChecksumAlgorithm.crc32.multipart([("not base64!", 1)], type: .fullObject) == nil)
    }
}

/// Which operation a request is: served ones resolve, every other subresource is 501.
@Suite struct OperationTests {
    func op(_ m: HTTPMethod, _ bucket: Bool, _ key: Bool, _ q: String) -> Result<S3Operation, S3Operation.Failure> {
        let query = q.split(separator: "&").map { p in
            let kv = p.split(separator: "=", maxSplits: 1)
            return (String(kv[0]), kv.count > 1 ? String(kv[1]) : "")
        }
        return Result { () throws(S3Operation.Failure) in try S3Operation.resolve(m, bucket: bucket, key: key, query: query) }
    }

    @Test func served() {
        #expect(op(.GET, false, false, "") == .success(.listBuckets))
        #expect(op(.GET, true, false, "prefix=a&max-keys=2") == .success(.listObjects))
        #expect(op(.GET, true, false, "list-type=2") == .success(.listObjectsV2))
        #expect(op(.GET, true, false, "versions&key-marker=a") == .success(.listObjectVersions))
        #expect(op(.GET, true, false, "uploads") == .success(.listMultipartUploads))
        #expect(op(.PUT, true, false, "acl") == .success(.putBucketAcl))
        #expect(op(.POST, true, false, "delete") == .success(.deleteObjects))
        #expect(op(.GET, true, true, "versionId=null") == .success(.getObject))
        #expect(op(.GET, true, true, "partNumber=2") == .success(.getObject))
        #expect(op(.GET, true, true, "attributes") == .success(.getObjectAttributes))
        #expect(op(.PUT, true, true, "partNumber=1&uploadId=x") == .success(.uploadPart))
        #expect(op(.POST, true, true, "uploads") == .success(.createMultipartUpload))
        #expect(op(.DELETE, true, true, "uploadId=x") == .success(.abortMultipartUpload))
    }

    @Test func unservedAreNotImplemented() {
        for (m, bucket, key, q) in [
            (HTTPMethod.GET, true, false, "policy"), (.GET, true, false, "acl&versioning"), (.PUT, true, false, "versioning"),
            (.DELETE, true, false, "tagging"), (.POST, true, false, ""), (.GET, true, true, "tagging"), (.PUT, true, true, "retention"),
            (.POST, true, true, "restore"), (.HEAD, true, true, "acl"), (.GET, false, false, "acl"),
        ] {
            guard case .failure(.notImplemented) = op(m, bucket, key, q) else {
                Issue.record("\(m) bucket=\(bucket) key=\(key) ?\(q) is \(op(m, bucket, key, q)), not NotImplemented")
                continue
            }
        }
        #expect(op(.PATCH, true, true, "") == .failure(.methodNotAllowed))
        #expect(op(.PUT, false, false, "") == .failure(.methodNotAllowed))
    }
}

@Suite struct SigV4Tests {
    static let secret = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
    static let keys = ["AKIAIOSFODNN7EXAMPLE": secret]
    static let when = parseAmzDate("20130524T000000Z")!

    /// AWS's "GET Object" example of header signing.
    static let getHeaders: [(String, String)] = [
        ("host", "examplebucket.s3.amazonaws.com"), ("range", "bytes=0-9"),
        ("x-amz-content-sha256", "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"), ("x-amz-date", "20130524T000000Z"),
        ("authorization",
         "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request,SignedHeaders=host;range;x-amz-content-sha256;x-amz-date,Signature=f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41"),
    ]

    @Test func documentedGetObjectExampleVerifies() throws {
        let ctx = try SigV4.verify(method: "GET", path: "/test.txt", query: [], headers: Self.getHeaders, credentials: Self.keys, now: Self.when)
        #expect(ctx.accessKey == "AKIAIOSFODNN7EXAMPLE")
    }

    @Test func anyChangeBreaksTheSignature() {
        var h = Self.getHeaders
        h[1].1 = "bytes=0-10"
        #expect(throws: SigV4Error.self) { try SigV4.verify(method: "GET", path: "/test.txt", query: [], headers: h, credentials: Self.keys, now: Self.when) }
        #expect(throws: SigV4Error.self) {
            try SigV4.verify(method: "GET", path: "/test.txt", query: [], headers: Self.getHeaders, credentials: ["AKIAIOSFODNN7EXAMPLE": "other"], now: Self.when)
        }
        #expect(throws: SigV4Error.self) { try SigV4.verify(method: "GET", path: "/test2.txt", query: [], headers: Self.getHeaders, credentials: Self.keys, now: Self.when) }
        // Fifteen minutes of skew at most.
        #expect(throws: SigV4Error.self) {
            try SigV4.verify(method: "GET", path: "/test.txt", query: [], headers: Self.getHeaders, credentials: Self.keys, now: Self.when.addingTimeInterval(901))
        }
    }

    @Test func whatSignSignsVerifies() throws {
        let host = [("host", "127.0.0.1:9000"), ("content-length", "5")]
        let added = SigV4.sign(method: "PUT", path: "/b/a key/ü", query: [("x", "1 2")], headers: host, accessKey: "AKIAIOSFODNN7EXAMPLE", secret: Self.secret, region: "us-east-1")
        let ctx = try SigV4.verify(method: "PUT", path: "/b/a key/ü", query: [("x", "1 2")], headers: host + added, credentials: Self.keys)
        #expect(ctx.accessKey == "AKIAIOSFODNN7EXAMPLE")
        #expect(throws: SigV4Error.self) { try SigV4.verify(method: "PUT", path: "/b/a key/u", query: [("x", "1 2")], headers: host + added, credentials: Self.keys) }
    }

    /// AWS's presigned-URL example (GET /test.txt, 86400 s).
    @Test func documentedPresignedExampleVerifies() throws {
        let query: [(String, String)] = [
            ("X-Amz-Algorithm", "AWS4-HMAC-SHA256"), ("X-Amz-Credential", "AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request"),
            ("X-Amz-Date", "20130524T000000Z"), ("X-Amz-Expires", "86400"), ("X-Amz-SignedHeaders", "host"),
            ("X-Amz-Signature", "aeeed9bbccd4d02ee5c0109b86d86835f995330da4c265957d157751f604d404"),
        ]
        let h = [("host", "examplebucket.s3.amazonaws.com")]
        _ = try SigV4.verify(method: "GET", path: "/test.txt", query: query, headers: h, credentials: Self.keys, now: Self.when.addingTimeInterval(10))
        #expect(throws: SigV4Error.self) {
            try SigV4.verify(method: "GET", path: "/test.txt", query: query, headers: h, credentials: Self.keys, now: Self.when.addingTimeInterval(86401))
        }
    }

    static let chunkedHeaders: [(String, String)] = [
        ("host", "s3.amazonaws.com"), ("x-amz-date", "20130524T000000Z"), ("x-amz-storage-class", "REDUCED_REDUNDANCY"),
        ("authorization",
         "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request,SignedHeaders=content-encoding;content-length;host;x-amz-content-sha256;x-amz-date;x-amz-decoded-content-length;x-amz-storage-class,Signature=4f232c4386841ef735655705268965c44a0e4690baa4adea153f7db9fa80a0a9"),
        ("x-amz-content-sha256", "STREAMING-AWS4-HMAC-SHA256-PAYLOAD"), ("content-encoding", "aws-chunked"), ("x-amz-decoded-content-length", "66560"),
        ("content-length", "66824"),
    ]

    static func chunkedBody(corrupt: Bool = false) -> [UInt8] {
        var body: [UInt8] = []
        body += Array("10000;chunk-signature=ad80c730a21e5b8d04586a2213dd63b9a0e99e0e2307b0ade35a65485a288648\r\n".utf8)
        body += [UInt8](repeating: UInt8(ascii: "a"), count: 65536)
        if corrupt { body[body.count - 1] = UInt8(ascii: "b") }
        body += Array("\r\n400;chunk-signature=0055627c9e194cb4542bae2aa5492e3c1575bbb81b612b7d234b86a503ef5497\r\n".utf8)
        body += [UInt8](repeating: UInt8(ascii: "a"), count: 1024)
        body += Array("\r\n0;chunk-signature=b6c6ea8a5354eaf15b3cb7646744f4275b71ea724fed81ceb9323e279d449df9\r\n\r\n".utf8)
        return body
    }

    /// AWS's signed aws-chunked example, fed whole, in one-byte pieces and in odd pieces.
    @Test(arguments: [1, 7, 4096, 1 << 20])
    func documentedChunkedExampleDecodes(piece: Int) throws {
        let ctx = try SigV4.verify(method: "PUT", path: "/examplebucket/chunkObject.txt", query: [], headers: Self.chunkedHeaders, credentials: Self.keys, now: Self.when)
        var d = AWSChunkedDecoder(signing: ctx)
        let body = Self.chunkedBody()
        var out: [UInt8] = []
        var at = 0
        while at < body.count {
            let n = min(piece, body.count - at)
            for var b in try d.feed(ByteBuffer(bytes: body[at..<(at + n)])) { out += b.readBytes(length: b.readableBytes)! }
            at += n
        }
        #expect(d.isDone)
        #expect(out == [UInt8](repeating: UInt8(ascii: "a"), count: 66560))
    }

    @Test func alteredChunkIsRefused() throws {
        let ctx = try SigV4.verify(method: "PUT", path: "/examplebucket/chunkObject.txt", query: [], headers: Self.chunkedHeaders, credentials: Self.keys, now: Self.when)
        var d = AWSChunkedDecoder(signing: ctx)
        #expect(throws: S3Error.self) { _ = try d.feed(ByteBuffer(bytes: Self.chunkedBody(corrupt: true))) }
    }

    @Test func unsignedChunksWithTrailer() throws {
        var d = AWSChunkedDecoder(signing: nil)
        let body = Array("5\r\nhello\r\n0\r\nx-amz-checksum-crc32:NhCmhg==\r\n\r\n".utf8)
        var out: [UInt8] = []
        for byte in body { for var b in try d.feed(ByteBuffer(bytes: [byte])) { out += b.readBytes(length: b.readableBytes)! } }
        #expect(out == Array("hello".utf8))
        #expect(d.isDone)
        #expect(d.trailers.first?.0 == "x-amz-checksum-crc32")
        #expect(d.trailers.first?.1 == "NhCmhg==")
    }

    @Test func malformedChunkingIsAnErrorNotACrash() {
        for text in ["zz\r\n", "5\r\nhello", "5\r\nhelloXX", "-1\r\n", "ffffffffffffffffff\r\n", String(repeating: "1", count: 5000)] {
            var d = AWSChunkedDecoder(signing: nil)
            var failed = false
            do { _ = try d.feed(ByteBuffer(string: text)) } catch { failed = true }
            #expect(failed || !d.isDone, "\(text.prefix(20))")
        }
    }
}

@Suite struct XMLTests {
    @Test func parsesCompleteMultipartUpload() throws {
        let doc = """
            <?xml version="1.0" encoding="UTF-8"?>
            <CompleteMultipartUpload xmlns="http://s3.amazonaws.com/doc/2006-03-01/">
              <Part><PartNumber>1</PartNumber><ETag>&quot;a54357aff0632cce46d942af68356b38&quot;</ETag></Part>
              <Part><PartNumber>2</PartNumber><ETag>"0c78aef83f66abc1fa1e8477f296d394"</ETag></Part>
            </CompleteMultipartUpload>
            """
        let root = try XMLParser.parse(Array(doc.utf8))
        #expect(root.name == "CompleteMultipartUpload")
        #expect(root.all("Part").count == 2)
        #expect(root.all("Part")[0].value("ETag") == "\"a54357aff0632cce46d942af68356b38\"")
        #expect(root.all("Part")[1].value("PartNumber") == "2")
    }

    @Test func refusesMalformedDocuments() {
        let bad = [
            "", "<a>", "<a></b>", "<a/><b/>", "text", "<!DOCTYPE a [<!ENTITY x \"y\">]><a>&x;</a>", "<a>&unknown;</a>",
            String(repeating: "<a>", count: 100) + String(repeating: "</a>", count: 100), "<a><!-- unterminated </a>",
        ]
        for doc in bad {
            #expect(throws: XMLParser.Failure.self, "\(doc.prefix(30))") { try XMLParser.parse(Array(doc.utf8)) }
        }
    }

    @Test func randomBytesNeverCrash() {
        var rng = SeededRandom.forRun("XML randomBytesNeverCrash")
        let alphabet = Array("<>/!?&;=\" abcPart".utf8)
        for _ in 0..<5000 {
            let n = Int.random(in: 0..<64, using: &rng)
            let bytes = (0..<n).map { _ in alphabet.randomElement(using: &rng)! }
            _ = try? XMLParser.parse(bytes)
        }
    }

    @Test func writerEscapes() {
        #expect(XMLWriter.escape("a<b>&\"c'") == "a&lt;b&gt;&amp;&quot;c&apos;")
    }
}

@Suite struct DateTests {
    @Test func roundTrips() {
        let d = Date(timeIntervalSince1970: 1_369_353_600)  // 2013-05-24T00:00:00Z
        #expect(httpDate(d) == "Fri, 24 May 2013 00:00:00 GMT")
        #expect(parseHTTPDate("Fri, 24 May 2013 00:00:00 GMT") == d)
        #expect(isoDate(d) == "2013-05-24T00:00:00.000Z")
        #expect(parseAmzDate("20130524T000000Z") == d)
        #expect(parseAmzDate("2013-05-24") == nil)
        #expect(parseHTTPDate("yesterday") == nil)
    }
}
