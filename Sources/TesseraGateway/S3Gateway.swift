// The S3 HTTP endpoint: routes each request to a bucket or object operation over the S3
// store, after checking its signature. docs/SEMANTICS.md lists what each operation does.
import Foundation
import Logging
import NIOCore
import NIOHTTP1
import TesseraClient
import TesseraConfig
import TesseraCore
import TesseraS3

public final class S3Gateway: HTTPHandler {
    let store: S3Store
    let settings: ClusterConfig.S3
    let logger: Logger

    public init(store: S3Store, settings: ClusterConfig.S3, logger: Logger = Logger(label: "tessera.gateway")) {
        self.store = store
        self.settings = settings
        self.logger = logger
    }

    /// Serves on `host:port` until cancelled; `bound` gets the port.
    public func run(host: String, port: Int, bound: (Int) -> Void = { _ in }) async throws {
        try await HTTPServer.run(host: host, port: port, handler: self, limits: settings.limits, logger: logger, bound: bound)
    }

    /// Who is asking: an access key with its signing context, or nobody.
    struct Caller {
        var signing: SigningContext?
        var accessKey: String? { signing?.accessKey }
    }

    func handle(_ request: HTTPRequest, body: RequestBody, continueBody: @escaping () async throws -> Void) async -> HTTPResponse {
        let requestID = String(UInt64.random(in: 0...UInt64.max), radix: 16, uppercase: true)
        var response: HTTPResponse
        do {
            response = try await route(request, body: body, continueBody: continueBody)
        } catch {
            let e = S3Error.from(error)
            if e.status.code >= 500 { logger.error("\(request.method) \(request.rawPath): \(e.code): \(e.message)") }
            var w = XMLWriter()
            w.open("Error")
            w.element("Code", e.code)
            w.element("Message", e.message)
            w.element("Resource", request.path)
            w.element("RequestId", requestID)
            w.close("Error")
            response = request.method == .HEAD ? HTTPResponse(e.status) : .xml(e.status, w)
        }
        response.headers.append(("x-amz-request-id", requestID))
        return response
    }

    // MARK: Routing

    private func route(_ r: HTTPRequest, body: RequestBody, continueBody: @escaping () async throws -> Void) async throws -> HTTPResponse {
        let caller = try authenticate(r)
        // Path style: /bucket/key.
        var path = Substring(r.path)
        guard path.hasPrefix("/") else { throw S3Error.invalidArgument("the request path must start with /") }
        path = path.dropFirst()
        let bucketName: String
        let key: String?
        if let slash = path.firstIndex(of: "/") {
            bucketName = String(path[..<slash])
            let k = String(path[path.index(after: slash)...])
            key = k.isEmpty ? nil : k
        } else {
            bucketName = String(path)
            key = nil
        }
        if bucketName.isEmpty {
            guard r.method == .GET else { throw S3Error(.methodNotAllowed, "MethodNotAllowed", "The specified method is not allowed against this resource.") }
            return try await listBuckets(caller)
        }
        if let key {
            guard key.utf8.count <= 1024 else { throw S3Error(.badRequest, "KeyTooLongError", "Your key is too long") }
            guard !key.utf8.contains(0) else { throw S3Error.invalidArgument("object keys cannot contain NUL") }
            return try await objectRequest(r, caller, bucketName, key, body, continueBody)
        }
        return try await bucketRequest(r, caller, bucketName, body, continueBody)
    }

    private func authenticate(_ r: HTTPRequest) throws -> Caller {
        let signed = r.header("authorization") != nil || r.has("X-Amz-Algorithm")
        guard signed else { return Caller(signing: nil) }
        do {
            return Caller(signing: try SigV4.verify(method: r.method.rawValue, path: r.path, query: r.query, headers: r.headers, credentials: settings.credentials))
        } catch let e as SigV4Error {
            switch e.kind {
            case .signatureMismatch: throw S3Error.signatureMismatch(e.message)
            case .invalidAccessKey: throw S3Error(.forbidden, "InvalidAccessKeyId", e.message)
            case .expired, .accessDenied: throw S3Error.accessDenied(e.message)
            case .skewed: throw S3Error(.forbidden, "RequestTimeTooSkewed", e.message)
            case .malformed: throw S3Error(.badRequest, "AuthorizationHeaderMalformed", e.message)
            }
        }
    }

    /// The bucket, if `caller` may use it: its owner may do anything, anyone may read a
    /// public-read bucket.
    private func authorizedBucket(_ name: String, _ caller: Caller, write: Bool) async throws -> BucketRecord {
        guard let b = try await store.bucket(name) else {
            if caller.accessKey == nil { throw S3Error.accessDenied() }
            throw S3Error.noSuchBucket(name)
        }
        if let k = caller.accessKey, k == b.owner { return b }
        if !write && (b.publicRead || settings.publicRead.contains(name)) { return b }
        throw S3Error.accessDenied()
    }

    private func requireCaller(_ caller: Caller) throws -> String {
        guard let k = caller.accessKey else { throw S3Error.accessDenied("Anonymous access is forbidden for this operation") }
        return k
    }

    private func bucketRequest(_ r: HTTPRequest, _ caller: Caller, _ name: String, _ body: RequestBody, _ cont: @escaping () async throws -> Void) async throws
        -> HTTPResponse
    {
        switch r.method {
        case .PUT:
            if r.has("acl") || r.has("versioning") || r.has("policy") || r.has("tagging") || r.has("cors") || r.has("lifecycle") {
                throw S3Error.notImplemented("this bucket subresource")
            }
            return try await createBucket(r, caller, name, body, cont)
        case .DELETE:
            _ = try requireCaller(caller)
            let b = try await authorizedBucket(name, caller, write: true)
            do { try await store.deleteBucket(name, b) } catch let e as TesseraError where e.code == .notEmpty {
                throw S3Error(.conflict, "BucketNotEmpty", "The bucket you tried to delete is not empty")
            }
            return HTTPResponse(.noContent)
        case .HEAD:
            _ = try await authorizedBucket(name, caller, write: false)
            return HTTPResponse(.ok, headers: [("x-amz-bucket-region", settings.region)])
        case .GET:
            let b = try await authorizedBucket(name, caller, write: false)
            if r.has("location") {
                var w = XMLWriter()
                w.open("LocationConstraint", xmlns: true)
                w.text(settings.region == "us-east-1" ? "" : settings.region)
                w.close("LocationConstraint")
                return .xml(.ok, w)
            }
            if r.has("versioning") {
                var w = XMLWriter()
                w.open("VersioningConfiguration", xmlns: true)
                w.close("VersioningConfiguration")
                return .xml(.ok, w)
            }
            if r.has("uploads") { return try await listUploads(r, name, b) }
            if r.query("list-type") == "2" { return try await listObjects(r, name, b, v2: true) }
            if r.has("acl") || r.has("policy") || r.has("tagging") || r.has("cors") || r.has("lifecycle") || r.has("website") {
                throw S3Error.notImplemented("this bucket subresource")
            }
            return try await listObjects(r, name, b, v2: false)
        case .POST:
            guard r.has("delete") else { throw S3Error.notImplemented("POST on a bucket without ?delete") }
            _ = try requireCaller(caller)
            let b = try await authorizedBucket(name, caller, write: true)
            try await cont()
            return try await deleteObjects(r, name, b, body)
        default:
            throw S3Error(.methodNotAllowed, "MethodNotAllowed", "The specified method is not allowed against this resource.")
        }
    }

    private func objectRequest(_ r: HTTPRequest, _ caller: Caller, _ bucketName: String, _ key: String, _ body: RequestBody, _ cont: @escaping () async throws -> Void)
        async throws -> HTTPResponse
    {
        switch r.method {
        case .GET, .HEAD:
            let b = try await authorizedBucket(bucketName, caller, write: false)
            if let id = r.query("uploadId"), r.method == .GET { return try await listParts(r, bucketName, b, key, id) }
            return try await getObject(r, b, key)
        case .PUT:
            _ = try requireCaller(caller)
            let b = try await authorizedBucket(bucketName, caller, write: true)
            if let id = r.query("uploadId") {
                guard let n = r.query("partNumber").flatMap(Int.init), (1...S3Store.maxPartNumber).contains(n) else {
                    throw S3Error.invalidArgument("Part number must be an integer between 1 and 10000, inclusive")
                }
                guard let upload = try await store.upload(b, key, id) else { throw S3Error.noSuchUpload() }
                if r.header("x-amz-copy-source") != nil { return try await copy(r, caller, b, into: .part(upload, n)) }
                try await cont()
                return try await uploadPart(r, caller, upload, n, body)
            }
            if r.header("x-amz-copy-source") != nil { return try await copy(r, caller, b, into: .object(bucketName, key)) }
            try await cont()
            return try await putObject(r, caller, bucketName, b, key, body)
        case .DELETE:
            _ = try requireCaller(caller)
            let b = try await authorizedBucket(bucketName, caller, write: true)
            if let id = r.query("uploadId") {
                guard let upload = try await store.upload(b, key, id) else { throw S3Error.noSuchUpload() }
                try await store.abortUpload(bucketName, b, key, id, upload)
                return HTTPResponse(.noContent)
            }
            try await store.deleteObject(bucketName, b, key)
            return HTTPResponse(.noContent)
        case .POST:
            _ = try requireCaller(caller)
            let b = try await authorizedBucket(bucketName, caller, write: true)
            if r.has("uploads") { return try await createUpload(r, bucketName, b, key) }
            if let id = r.query("uploadId") {
                try await cont()
                return try await completeUpload(r, bucketName, b, key, id, body)
            }
            throw S3Error.notImplemented("POST on an object without ?uploads or ?uploadId")
        default:
            throw S3Error(.methodNotAllowed, "MethodNotAllowed", "The specified method is not allowed against this resource.")
        }
    }

    // MARK: Buckets

    private func listBuckets(_ caller: Caller) async throws -> HTTPResponse {
        let key = try requireCaller(caller)
        let all = try await store.listBuckets().filter { $0.record.owner == key }
        var w = XMLWriter()
        w.open("ListAllMyBucketsResult", xmlns: true)
        w.element("Owner") { w in
            w.element("ID", key)
            w.element("DisplayName", key)
        }
        w.element("Buckets") { w in
            for b in all {
                w.element("Bucket") { w in
                    w.element("Name", b.name)
                    w.element("CreationDate", isoDate(date(ns: b.record.created)))
                }
            }
        }
        w.close("ListAllMyBucketsResult")
        return .xml(.ok, w)
    }

    private func createBucket(_ r: HTTPRequest, _ caller: Caller, _ name: String, _ body: RequestBody, _ cont: () async throws -> Void) async throws -> HTTPResponse {
        let key = try requireCaller(caller)
        try await cont()
        let bytes = try await body.collect(limit: 64 << 10)
        if !bytes.isEmpty {
            do {
                let root = try XMLParser.parse(bytes)
                guard root.name == "CreateBucketConfiguration" else { throw S3Error.malformedXML() }
            } catch is XMLParser.Failure {
                throw S3Error.malformedXML()
            }
        }
        guard S3Store.validBucketName(name) else { throw S3Error(.badRequest, "InvalidBucketName", "The specified bucket is not valid.") }
        do {
            try await store.createBucket(name, owner: key, publicRead: settings.publicRead.contains(name))
        } catch let e as TesseraError where e.code == .exists {
            if try await store.bucket(name)?.owner == key {
                throw S3Error(.conflict, "BucketAlreadyOwnedByYou", "Your previous request to create the named bucket succeeded and you already own it.")
            }
            throw S3Error(.conflict, "BucketAlreadyExists", "The requested bucket name is not available.")
        }
        return HTTPResponse(.ok, headers: [("Location", "/\(name)")])
    }

    // MARK: Listing

    private func listObjects(_ r: HTTPRequest, _ name: String, _ b: BucketRecord, v2: Bool) async throws -> HTTPResponse {
        let prefix = r.query("prefix") ?? ""
        let delimiter = r.query("delimiter").flatMap { $0.isEmpty ? nil : $0 }
        var maxKeys = 1000
        if let m = r.query("max-keys") {
            guard let n = Int(m), n >= 0 else { throw S3Error.invalidArgument("max-keys must be a non-negative integer") }
            maxKeys = min(n, 1000)
        }
        let urlEncode = r.query("encoding-type") == "url"
        if let e = r.query("encoding-type"), e != "url" { throw S3Error.invalidArgument("Invalid Encoding Method specified in Request") }
        var after: String?
        if v2 {
            if let token = r.query("continuation-token") {
                guard let d = Data(base64Encoded: token), let s = String(data: d, encoding: .utf8) else {
                    throw S3Error.invalidArgument("The continuation token provided is incorrect")
                }
                after = s
            } else {
                after = r.query("start-after")
            }
        } else {
            after = r.query("marker")
        }
        if after?.isEmpty == true { after = nil }
        let listing = try await store.list(b.objects, prefix: prefix, delimiter: delimiter, after: after, limit: maxKeys)
        func enc(_ s: String) -> String { urlEncode ? SigV4.encode(s, keepSlash: true) : s }
        var w = XMLWriter()
        w.open("ListBucketResult", xmlns: true)
        w.element("Name", name)
        w.element("Prefix", enc(prefix))
        if let delimiter { w.element("Delimiter", enc(delimiter)) }
        w.element("MaxKeys", String(maxKeys))
        if urlEncode { w.element("EncodingType", "url") }
        w.element("IsTruncated", listing.truncated ? "true" : "false")
        if v2 {
            w.element("KeyCount", String(listing.entries.count + listing.commonPrefixes.count))
            if let t = r.query("continuation-token") { w.element("ContinuationToken", t) }
            if let s = r.query("start-after") { w.element("StartAfter", enc(s)) }
            if listing.truncated, let last = listing.last { w.element("NextContinuationToken", Data(last.utf8).base64EncodedString()) }
        } else {
            w.element("Marker", enc(r.query("marker") ?? ""))
            if listing.truncated, let last = listing.last { w.element("NextMarker", enc(last)) }
        }
        for e in listing.entries {
            let o = try ObjectRecord.decode(e.value)
            w.element("Contents") { w in
                w.element("Key", enc(e.key))
                w.element("LastModified", isoDate(date(ns: o.modified)))
                w.element("ETag", "\"\(o.etag)\"")
                w.element("Size", String(o.size))
                w.element("StorageClass", "STANDARD")
                if !v2 || r.query("fetch-owner") == "true" {
                    w.element("Owner") { w in
                        w.element("ID", b.owner)
                        w.element("DisplayName", b.owner)
                    }
                }
            }
        }
        for p in listing.commonPrefixes {
            w.element("CommonPrefixes") { w in w.element("Prefix", enc(p)) }
        }
        w.close("ListBucketResult")
        return .xml(.ok, w)
    }

    // MARK: Objects

    /// Headers stored with an object and returned by GET and HEAD.
    static let storedHeaders: Set<String> = ["content-type", "cache-control", "content-disposition", "content-encoding", "content-language", "expires"]

    /// The attributes a PUT (or multipart create) gives its object: standard headers,
    /// user metadata, the checksum algorithm.
    func attributes(of r: HTTPRequest) throws -> [Attribute] {
        var out: [Attribute] = []
        var metaBytes = 0
        for (name, value) in r.headers {
            if name == "content-encoding" {
                let rest = value.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }.filter { $0 != "aws-chunked" && !$0.isEmpty }
                if !rest.isEmpty { out.append((name, rest.joined(separator: ","))) }
            } else if Self.storedHeaders.contains(name) {
                out.append((name, value))
            } else if name.hasPrefix("x-amz-meta-") {
                metaBytes += name.utf8.count + value.utf8.count - "x-amz-meta-".count
                out.append((name, value))
            }
        }
        guard metaBytes <= 2048 else { throw S3Error(.badRequest, "MetadataTooLarge", "Your metadata headers exceed the maximum allowed metadata size (2 KB)") }
        if !out.contains(where: { $0.name == "content-type" }) { out.append(("content-type", "binary/octet-stream")) }
        return out
    }

    private func getObject(_ r: HTTPRequest, _ b: BucketRecord, _ key: String) async throws -> HTTPResponse {
        guard let o = try await store.object(b, key) else { throw S3Error.noSuchKey(key) }
        let etag = "\"\(o.etag)\""
        let modified = date(ns: o.modified)
        let modifiedSecond = Date(timeIntervalSince1970: modified.timeIntervalSince1970.rounded(.down))
        var headers: [(String, String)] = [("ETag", etag), ("Last-Modified", httpDate(modified)), ("Accept-Ranges", "bytes")]
        for a in o.attributes where Self.storedHeaders.contains(a.name) || a.name.hasPrefix("x-amz-meta-") { headers.append((a.name, a.value)) }
        if o.multipart { headers.append(("x-amz-mp-parts-count", String(o.parts))) }

        // Conditions, in RFC 7232's order.
        func matches(_ list: String) -> Bool {
            list.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }.contains { $0 == "*" || $0 == etag || $0 == o.etag }
        }
        if let m = r.header("if-match") {
            guard matches(m) else { throw S3Error.preconditionFailed }
        } else if let s = r.header("if-unmodified-since"), let d = parseHTTPDate(s), modifiedSecond > d {
            throw S3Error.preconditionFailed
        }
        if let m = r.header("if-none-match") {
            if matches(m) { return HTTPResponse(.notModified, headers: [("ETag", etag), ("Last-Modified", httpDate(modified))]) }
        } else if let s = r.header("if-modified-since"), let d = parseHTTPDate(s), modifiedSecond <= d {
            return HTTPResponse(.notModified, headers: [("ETag", etag), ("Last-Modified", httpDate(modified))])
        }
        // Response header overrides (a signed request's response-* parameters).
        for (param, header) in [
            ("response-content-type", "content-type"), ("response-content-disposition", "content-disposition"),
            ("response-cache-control", "cache-control"), ("response-content-encoding", "content-encoding"),
            ("response-content-language", "content-language"), ("response-expires", "expires"),
        ] {
            if let v = r.query(param) {
                headers.removeAll { $0.0 == header }
                headers.append((header, v))
            }
        }

        var start: UInt64 = 0
        var length = o.size
        var status = HTTPResponseStatus.ok
        if let range = r.header("range"), let parsed = try parseRange(range, size: o.size) {
            start = parsed.start
            length = parsed.length
            status = .partialContent
            headers.append(("Content-Range", "bytes \(start)-\(start + length - 1)/\(o.size)"))
        } else if r.header("x-amz-checksum-mode")?.uppercased() == "ENABLED" {
            for a in o.attributes where ChecksumAlgorithm(header: a.name) != nil { headers.append((a.name, a.value)) }
        }
        headers.append(("Content-Length", String(length)))
        if r.method == .HEAD || length == 0 { return HTTPResponse(status, headers: headers) }
        let store = self.store
        let logger = self.logger
        let from = start
        let end = start + length
        let chunk = UInt64(store.cluster.layout.groupSize)
        // The first chunk is read before the status line goes out, so an object whose data
        // is gone answers 500 (logged with its fid), not a 200 cut short. A later chunk that
        // fails ends the body early: the connection is closed, and no zeros are sent.
        let first = try await store.reading(o) { try await Self.fetch($0, at: from, count: Int(min(chunk - from % chunk, end - from))) }
        let path = r.rawPath
        return HTTPResponse(status, headers: headers, body: .stream(length: length) { write in
            do {
                try await store.reading(o) { reader in
                    // Reads go straight into reply buffers, three in flight: the next chunks
                    // are fetched while this one is sent.
                    var pending: [Task<ByteBuffer, Error>] = []
                    var next = from + UInt64(first.readableBytes)
                    func refill() {
                        while pending.count < 3 && next < end {
                            let (a, n) = (next, Int(min(chunk - next % chunk, end - next)))
                            pending.append(Task { try await Self.fetch(reader, at: a, count: n) })
                            next += UInt64(n)
                        }
                    }
                    refill()
                    try await write(first)
                    while !pending.isEmpty {
                        let buffer = try await pending.removeFirst().value
                        refill()
                        try await write(buffer)
                    }
                }
            } catch {
                logger.error("GET \(path): reading object \(o.fid) failed after the headers were sent, closing the connection: \(error)")
                throw error
            }
        })
    }

    /// Bytes [at, at + count) of the object, read straight into a reply buffer.
    private static func fetch(_ reader: ObjectReader, at a: UInt64, count n: Int) async throws -> ByteBuffer {
        var buffer = ByteBufferAllocator().buffer(capacity: n)
        // SAFETY: `buffer` is owned here alone and not touched until the read returns, so
        // its storage stays put under the pointer.
        let target = buffer.withUnsafeMutableWritableBytes { UnsafeMutableRawBufferPointer(rebasing: $0[0..<n]) }
        try await reader.read(at: a, into: target)
        buffer.moveWriterIndex(forwardBy: n)
        return buffer
    }

    /// Parses one `bytes=` range; nil means "the whole object" (a form S3 ignores).
    func parseRange(_ header: String, size: UInt64) throws -> (start: UInt64, length: UInt64)? {
        let h = header.trimmingCharacters(in: .whitespaces)
        guard h.hasPrefix("bytes="), !h.contains(",") else { return nil }
        let spec = h.dropFirst(6)
        guard let dash = spec.firstIndex(of: "-") else { return nil }
        let a = spec[..<dash].trimmingCharacters(in: .whitespaces)
        let z = spec[spec.index(after: dash)...].trimmingCharacters(in: .whitespaces)
        if a.isEmpty {
            guard let n = UInt64(z) else { return nil }
            guard n > 0, size > 0 else { throw S3Error.invalidRange }
            let len = min(n, size)
            return (size - len, len)
        }
        guard let s = UInt64(a) else { return nil }
        guard s < size else { throw S3Error.invalidRange }
        var e = size - 1
        if !z.isEmpty {
            guard let v = UInt64(z), v >= s else { return nil }
            e = min(v, size - 1)
        }
        return (s, e - s + 1)
    }

    /// Where the bytes of an upload go.
    enum Destination {
        case object(String, String)
        case part(UploadRecord, Int)
    }

    /// Streams the request body into `writer`, verifying every digest the client sent.
    /// Returns the MD5 and the checksum attribute (if any).
    private func receive(_ r: HTTPRequest, _ caller: Caller, _ body: RequestBody, into writer: ObjectWriter) async throws -> (md5: [UInt8], checksum: Attribute?) {
        let contentHash = r.header("x-amz-content-sha256") ?? "UNSIGNED-PAYLOAD"
        let chunked = contentHash.hasPrefix("STREAMING-")
        var decoder: AWSChunkedDecoder? = nil
        if chunked {
            let signedChunks = contentHash.hasPrefix("STREAMING-AWS4-HMAC-SHA256-PAYLOAD")
            guard !signedChunks || caller.signing != nil else { throw S3Error.accessDenied("signed chunks need a signed request") }
            guard contentHash == "STREAMING-UNSIGNED-PAYLOAD-TRAILER" || signedChunks else {
                throw S3Error.notImplemented("x-amz-content-sha256: \(contentHash)")
            }
            decoder = AWSChunkedDecoder(signing: signedChunks ? caller.signing : nil)
        }
        let payloadHashed = !chunked && contentHash != "UNSIGNED-PAYLOAD" && caller.signing != nil
        // The additional checksum: named by a header carrying it, by the trailer, or by
        // x-amz-sdk-checksum-algorithm.
        var algorithm: ChecksumAlgorithm? = nil
        var expected: String? = nil
        for (n, v) in r.headers {
            if let a = ChecksumAlgorithm(header: n) {
                algorithm = a
                expected = v
            }
        }
        if algorithm == nil, let t = r.header("x-amz-trailer") { algorithm = ChecksumAlgorithm(header: t.lowercased().trimmingCharacters(in: .whitespaces)) }
        if algorithm == nil, let a = r.header("x-amz-sdk-checksum-algorithm") { algorithm = ChecksumAlgorithm(rawValue: a.lowercased()) }
        var digests = BodyDigests(payloadHash: payloadHashed, checksum: algorithm)
        let maxSize: UInt64 = 5 << 40
        do {
            while let buffer = try await body.next() {
                let pieces: [ByteBuffer]
                if decoder != nil { pieces = try decoder!.feed(buffer) } else { pieces = [buffer] }
                for piece in pieces {
                    piece.withUnsafeReadableBytes { digests.update($0) }
                    try await writer.write(piece.readableBytesView)
                }
                guard UInt64(digests.count) <= maxSize else { throw S3Error(.badRequest, "EntityTooLarge", "Your proposed upload exceeds the maximum allowed object size.") }
            }
            if let d = decoder {
                guard d.isDone else { throw S3Error.incompleteBody("the aws-chunked body ended early") }
                if let declared = r.header("x-amz-decoded-content-length").flatMap(Int.init), declared != d.decodedLength {
                    throw S3Error.incompleteBody("x-amz-decoded-content-length is \(declared), the body held \(d.decodedLength) bytes")
                }
                for (n, v) in d.trailers {
                    if let a = ChecksumAlgorithm(header: n), a == algorithm { expected = v }
                }
            }
            let (md5, sha, checksum) = digests.finish()
            if let sha, sha != contentHash.lowercased() {
                throw S3Error(.badRequest, "XAmzContentSHA256Mismatch", "The provided 'x-amz-content-sha256' header does not match what was computed.")
            }
            if let m = r.header("content-md5") {
                guard let d = Data(base64Encoded: m), d.count == 16 else { throw S3Error(.badRequest, "InvalidDigest", "The Content-MD5 you specified was invalid.") }
                guard Array(d) == md5 else { throw S3Error.badDigest("The Content-MD5 you specified did not match what we received.") }
            }
            if let expected, let checksum, expected != checksum {
                throw S3Error.badDigest("The \(algorithm!.rawValue.uppercased()) you specified did not match the calculated checksum.")
            }
            _ = try await writer.finish()
            return (md5, algorithm.flatMap { a in checksum.map { (a.header, $0) } })
        } catch {
            await store.abandon(writer)
            throw error
        }
    }

    private func putObject(_ r: HTTPRequest, _ caller: Caller, _ bucketName: String, _ b: BucketRecord, _ key: String, _ body: RequestBody) async throws -> HTTPResponse {
        var attrs = try attributes(of: r)
        let writer = try await store.newObject(for: .object(bucket: bucketName, key: key))
        let (md5, checksum) = try await receive(r, caller, body, into: writer)
        if let checksum { attrs.append(checksum) }
        let record = ObjectRecord(fid: writer.fid, size: writer.size, modified: S3Store.now(), etag: hex(md5), attributes: attrs)
        try await store.commit(bucketName, b, key, record)
        var headers = [("ETag", "\"\(record.etag)\"")]
        if let checksum { headers.append((checksum.name, checksum.value)) }
        return HTTPResponse(.ok, headers: headers)
    }

    private func uploadPart(_ r: HTTPRequest, _ caller: Caller, _ upload: UploadRecord, _ n: Int, _ body: RequestBody) async throws -> HTTPResponse {
        let writer = try await store.newPart(upload, n)
        let (md5, checksum) = try await receive(r, caller, body, into: writer)
        let part = PartRecord(number: n, fid: writer.fid, size: writer.size, modified: S3Store.now(), md5: md5, attributes: checksum.map { [$0] } ?? [])
        try await store.commitPart(upload, part)
        var headers = [("ETag", "\"\(part.etag)\"")]
        if let checksum { headers.append((checksum.name, checksum.value)) }
        return HTTPResponse(.ok, headers: headers)
    }

    /// CopyObject and UploadPartCopy: the source's bytes (or a range of them) streamed into
    /// a new object.
    private func copy(_ r: HTTPRequest, _ caller: Caller, _ b: BucketRecord, into dest: Destination) async throws -> HTTPResponse {
        var source = HTTPServer.percentDecode(Substring(r.header("x-amz-copy-source")!), plusIsSpace: false)
        if let q = source.firstIndex(of: "?") { source = String(source[..<q]) }
        if source.hasPrefix("/") { source.removeFirst() }
        guard let slash = source.firstIndex(of: "/") else { throw S3Error.invalidArgument("Copy Source must mention the source bucket and key: sourcebucket/sourcekey") }
        let srcBucketName = String(source[..<slash])
        let srcKey = String(source[source.index(after: slash)...])
        let sb = try await authorizedBucket(srcBucketName, caller, write: false)
        guard let src = try await store.object(sb, srcKey) else { throw S3Error.noSuchKey(srcKey) }
        let etag = "\"\(src.etag)\""
        if let m = r.header("x-amz-copy-source-if-match"), !m.split(separator: ",").contains(where: { $0.trimmingCharacters(in: .whitespaces) == etag }) {
            throw S3Error.preconditionFailed
        }
        if let m = r.header("x-amz-copy-source-if-none-match"), m.split(separator: ",").contains(where: { $0.trimmingCharacters(in: .whitespaces) == etag }) {
            throw S3Error.preconditionFailed
        }
        var start: UInt64 = 0
        var length = src.size
        if let range = r.header("x-amz-copy-source-range") {
            guard case .part = dest, let p = try parseRange(range, size: src.size) else { throw S3Error.invalidArgument("The x-amz-copy-source-range value must be of the form bytes=first-last") }
            (start, length) = p
        }
        let writer: ObjectWriter
        switch dest {
        case .object(let bucketName, let key): writer = try await store.newObject(for: .object(bucket: bucketName, key: key))
        case .part(let upload, let n): writer = try await store.newPart(upload, n)
        }
        var md5 = BodyDigests(payloadHash: false, checksum: nil)
        do {
            try await store.reading(src) { reader in
                var at = start
                let end = start + length
                while at < end {
                    let bytes = try await reader.read(at: at, length: Int(min(UInt64(reader.chunkSize), end - at)))
                    guard !bytes.isEmpty else { throw S3Error(.internalServerError, "InternalError", "source object shorter than its record") }
                    bytes.withUnsafeBytes { md5.update($0) }
                    try await writer.write(bytes)
                    at += UInt64(bytes.count)
                }
            }
            _ = try await writer.finish()
        } catch {
            await store.abandon(writer)
            throw error
        }
        let digest = md5.finish().md5
        let now = S3Store.now()
        var w = XMLWriter()
        switch dest {
        case .object(let bucketName, let key):
            let replace = r.header("x-amz-metadata-directive")?.uppercased() == "REPLACE"
            if !replace && srcBucketName == bucketName && srcKey == key {
                await store.abandon(writer)
                throw S3Error(.badRequest, "InvalidRequest", "This copy request is illegal because it is trying to copy an object to itself without changing the object's metadata.")
            }
            var attrs = replace ? try attributes(of: r) : src.attributes.filter { ChecksumAlgorithm(header: $0.name) == nil }
            attrs.removeAll { ChecksumAlgorithm(header: $0.name) != nil }
            let record = ObjectRecord(fid: writer.fid, size: writer.size, modified: now, etag: hex(digest), attributes: attrs)
            try await store.commit(bucketName, b, key, record)
            w.open("CopyObjectResult", xmlns: true)
            w.element("LastModified", isoDate(date(ns: now)))
            w.element("ETag", "\"\(record.etag)\"")
            w.close("CopyObjectResult")
        case .part(let upload, let n):
            let part = PartRecord(number: n, fid: writer.fid, size: writer.size, modified: now, md5: digest, attributes: [])
            try await store.commitPart(upload, part)
            w.open("CopyPartResult", xmlns: true)
            w.element("LastModified", isoDate(date(ns: now)))
            w.element("ETag", "\"\(part.etag)\"")
            w.close("CopyPartResult")
        }
        return .xml(.ok, w)
    }

    private func deleteObjects(_ r: HTTPRequest, _ bucketName: String, _ b: BucketRecord, _ body: RequestBody) async throws -> HTTPResponse {
        let bytes = try await body.collect(limit: 2 << 20)
        if let m = r.header("content-md5"), let d = Data(base64Encoded: m), Array(d) != md5Digest(bytes) {
            throw S3Error.badDigest("The Content-MD5 you specified did not match what we received.")
        }
        let root: XMLNode
        do { root = try XMLParser.parse(bytes) } catch { throw S3Error.malformedXML() }
        guard root.name == "Delete" else { throw S3Error.malformedXML() }
        let quiet = root.value("Quiet")?.trimmingSpaces.lowercased() == "true"
        let objects = root.all("Object")
        guard !objects.isEmpty else { throw S3Error.malformedXML() }
        guard objects.count <= 1000 else { throw S3Error.malformedXML("The request must contain no more than 1000 keys") }
        var w = XMLWriter()
        w.open("DeleteResult", xmlns: true)
        for o in objects {
            guard let key = o.value("Key"), !key.isEmpty else { throw S3Error.malformedXML() }
            do {
                guard key.utf8.count <= 1024 else { throw S3Error(.badRequest, "KeyTooLongError", "Your key is too long") }
                try await store.deleteObject(bucketName, b, key)
                if !quiet { w.element("Deleted") { w in w.element("Key", key) } }
            } catch {
                let e = S3Error.from(error)
                w.element("Error") { w in
                    w.element("Key", key)
                    w.element("Code", e.code)
                    w.element("Message", e.message)
                }
            }
        }
        w.close("DeleteResult")
        return .xml(.ok, w)
    }

    // MARK: Multipart uploads

    private func createUpload(_ r: HTTPRequest, _ bucketName: String, _ b: BucketRecord, _ key: String) async throws -> HTTPResponse {
        var attrs = try attributes(of: r)
        if let a = r.header("x-amz-checksum-algorithm") {
            guard ChecksumAlgorithm(rawValue: a.lowercased()) != nil else { throw S3Error.invalidArgument("Checksum algorithm \(a) is not supported") }
            attrs.append(("x-amz-checksum-algorithm", a.uppercased()))
        }
        let id = try await store.createUpload(bucketName, b, key, attributes: attrs)
        var w = XMLWriter()
        w.open("InitiateMultipartUploadResult", xmlns: true)
        w.element("Bucket", bucketName)
        w.element("Key", key)
        w.element("UploadId", id)
        w.close("InitiateMultipartUploadResult")
        var headers: [(String, String)] = []
        if let a = attrs.first(where: { $0.name == "x-amz-checksum-algorithm" }) { headers.append(("x-amz-checksum-algorithm", a.value)) }
        return .xml(.ok, w, headers: headers)
    }

    private func completeUpload(_ r: HTTPRequest, _ bucketName: String, _ b: BucketRecord, _ key: String, _ id: String, _ body: RequestBody) async throws -> HTTPResponse {
        guard let upload = try await store.upload(b, key, id) else { throw S3Error.noSuchUpload() }
        let bytes = try await body.collect(limit: 4 << 20)
        let root: XMLNode
        do { root = try XMLParser.parse(bytes) } catch { throw S3Error.malformedXML() }
        guard root.name == "CompleteMultipartUpload" else { throw S3Error.malformedXML() }
        var wanted: [(number: Int, etag: String)] = []
        for p in root.all("Part") {
            guard let n = p.value("PartNumber").flatMap({ Int($0.trimmingSpaces) }), let e = p.value("ETag") else { throw S3Error.malformedXML() }
            wanted.append((n, e.trimmingSpaces))
        }
        guard !wanted.isEmpty else { throw S3Error.malformedXML("You must specify at least one part") }
        let record: ObjectRecord
        do {
            record = try await store.completeUpload(bucketName, b, key, id, upload, parts: wanted)
        } catch let e as S3Store.CompletionError {
            switch e {
            case .invalidPart(let n):
                throw S3Error(.badRequest, "InvalidPart", "One or more of the specified parts could not be found (part \(n)), or its entity tag did not match.")
            case .invalidPartOrder: throw S3Error(.badRequest, "InvalidPartOrder", "The list of parts was not in ascending order.")
            case .entityTooSmall(let n): throw S3Error(.badRequest, "EntityTooSmall", "Part \(n) is smaller than the minimum allowed size of 5 MiB.")
            }
        }
        var w = XMLWriter()
        w.open("CompleteMultipartUploadResult", xmlns: true)
        w.element("Location", "/\(bucketName)/\(SigV4.encode(key, keepSlash: true))")
        w.element("Bucket", bucketName)
        w.element("Key", key)
        w.element("ETag", "\"\(record.etag)\"")
        w.close("CompleteMultipartUploadResult")
        return .xml(.ok, w)
    }

    private func listParts(_ r: HTTPRequest, _ bucketName: String, _ b: BucketRecord, _ key: String, _ id: String) async throws -> HTTPResponse {
        guard let upload = try await store.upload(b, key, id) else { throw S3Error.noSuchUpload() }
        let marker = r.query("part-number-marker").flatMap(Int.init) ?? 0
        let maxParts = min(r.query("max-parts").flatMap(Int.init) ?? 1000, 1000)
        let parts = try await store.partRecords(upload.fid, after: marker, limit: maxParts + 1)
        let shown = parts.prefix(maxParts)
        var w = XMLWriter()
        w.open("ListPartsResult", xmlns: true)
        w.element("Bucket", bucketName)
        w.element("Key", key)
        w.element("UploadId", id)
        w.element("PartNumberMarker", String(marker))
        if let last = shown.last { w.element("NextPartNumberMarker", String(last.number)) }
        w.element("MaxParts", String(maxParts))
        w.element("IsTruncated", parts.count > maxParts ? "true" : "false")
        w.element("StorageClass", "STANDARD")
        for p in shown {
            w.element("Part") { w in
                w.element("PartNumber", String(p.number))
                w.element("LastModified", isoDate(date(ns: p.modified)))
                w.element("ETag", "\"\(p.etag)\"")
                w.element("Size", String(p.size))
                for a in p.attributes {
                    if let alg = ChecksumAlgorithm(header: a.name) { w.element("Checksum" + alg.rawValue.uppercased(), a.value) }
                }
            }
        }
        w.close("ListPartsResult")
        return .xml(.ok, w)
    }

    private func listUploads(_ r: HTTPRequest, _ bucketName: String, _ b: BucketRecord) async throws -> HTTPResponse {
        let maxUploads = min(r.query("max-uploads").flatMap(Int.init) ?? 1000, 1000)
        let prefix = r.query("prefix") ?? ""
        let keyMarker = r.query("key-marker").flatMap { $0.isEmpty ? nil : $0 }
        let idMarker = r.query("upload-id-marker").flatMap { $0.isEmpty ? nil : $0 }
        let (uploads, truncated) = try await store.listUploads(b, prefix: prefix, keyMarker: keyMarker, idMarker: idMarker, limit: maxUploads)
        var w = XMLWriter()
        w.open("ListMultipartUploadsResult", xmlns: true)
        w.element("Bucket", bucketName)
        w.element("KeyMarker", keyMarker ?? "")
        w.element("UploadIdMarker", idMarker ?? "")
        if truncated, let last = uploads.last {
            w.element("NextKeyMarker", last.key)
            w.element("NextUploadIdMarker", last.id)
        }
        w.element("Prefix", prefix)
        w.element("MaxUploads", String(maxUploads))
        w.element("IsTruncated", truncated ? "true" : "false")
        for u in uploads {
            w.element("Upload") { w in
                w.element("Key", u.key)
                w.element("UploadId", u.id)
                w.element("Initiated", isoDate(date(ns: u.record.created)))
                w.element("StorageClass", "STANDARD")
            }
        }
        w.close("ListMultipartUploadsResult")
        return .xml(.ok, w)
    }
}
