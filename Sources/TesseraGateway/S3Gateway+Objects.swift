// The object operations: GET and HEAD (whole, ranges, parts), PUT (with conditions), copy,
// DELETE and DeleteObjects, GetObjectAttributes.
import Foundation
import NIOCore
import NIOHTTP1
import TesseraClient
import TesseraCore
import TesseraS3

extension S3Gateway {
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

    /// Object `key`, if `caller` may read it: the bucket's owner may, anyone may read a
    /// public-read object, and every object of a bucket the configuration names public
    /// (`[s3] public_read`). A bucket's public-read ACL lets anyone list it, as in S3, not
    /// read its private objects. To a caller who may not list the bucket, a missing key is
    /// AccessDenied, as in S3.
    func readableObject(_ caller: Caller, _ bucketName: String, _ key: String) async throws -> (BucketRecord, ObjectRecord) {
        let b = try await existingBucket(bucketName, caller)
        let mayReadAll = caller.accessKey == b.owner || settings.publicRead.contains(bucketName)
        guard let o = try await store.object(b, key) else { throw mayReadAll || publicRead(bucketName, b) ? S3Error.noSuchKey(key) : S3Error.accessDenied() }
        guard mayReadAll || CannedACL(object: o.attributes) == .publicRead else { throw S3Error.accessDenied() }
        return (b, o)
    }

    /// The byte range of part `n` of `o` (GET and HEAD with `partNumber`): a part of a
    /// multipart object by the number it was uploaded as, or the whole of any other object
    /// as its part 1.
    func partRange(_ o: ObjectRecord, _ n: String) async throws -> (start: UInt64, length: UInt64) {
        guard let n = Int(n), (1...S3Store.maxPartNumber).contains(n) else {
            throw S3Error.invalidArgument("Part number must be an integer between 1 and 10000, inclusive")
        }
        let unsatisfiable = S3Error(.rangeNotSatisfiable, "InvalidPartNumber", "The requested partnumber is not satisfiable")
        guard o.multipart else {
            guard n == 1 else { throw unsatisfiable }
            return (0, o.size)
        }
        var start: UInt64 = 0
        for p in try await store.allParts(o.fid) {
            if p.number == n { return (start, p.size) }
            start += p.size
        }
        throw unsatisfiable
    }

    /// The headers that give an object's stored checksum and its type.
    static func checksumHeaders(_ o: ObjectRecord) -> [(String, String)] {
        var out: [(String, String)] = []
        for a in o.attributes where ChecksumAlgorithm(header: a.name) != nil { out.append((a.name, a.value)) }
        if !out.isEmpty { out.append(("x-amz-checksum-type", ChecksumType.of(o.attributes))) }
        return out
    }

    func getObject(_ r: HTTPRequest, _ caller: Caller, _ bucketName: String, _ key: String) async throws -> HTTPResponse {
        let (_, o) = try await readableObject(caller, bucketName, key)
        let etag = "\"\(o.etag)\""
        let modified = date(ns: o.modified)
        let modifiedSecond = Date(timeIntervalSince1970: modified.timeIntervalSince1970.rounded(.down))
        var headers: [(String, String)] = [("ETag", etag), ("Last-Modified", httpDate(modified)), ("Accept-Ranges", "bytes")]
        headers += Self.versionHeader(r)
        for a in o.attributes where Self.storedHeaders.contains(a.name) || a.name.hasPrefix("x-amz-meta-") { headers.append((a.name, a.value)) }

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
        if let n = r.query("partNumber") {
            guard r.header("range") == nil else { throw S3Error(.badRequest, "InvalidRequest", "Cannot specify both Range header and partNumber query parameter") }
            (start, length) = try await partRange(o, n)
            status = .partialContent
            if length > 0 { headers.append(("Content-Range", "bytes \(start)-\(start + length - 1)/\(o.size)")) }
            if o.multipart { headers.append(("x-amz-mp-parts-count", String(o.parts))) }
        } else if let range = r.header("range"), let parsed = try parseRange(range, size: o.size) {
            start = parsed.start
            length = parsed.length
            status = .partialContent
            headers.append(("Content-Range", "bytes \(start)-\(start + length - 1)/\(o.size)"))
        } else if r.header("x-amz-checksum-mode")?.uppercased() == "ENABLED" {
            headers += Self.checksumHeaders(o)
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
                    // Reads go straight into reply buffers, `readAhead` in flight: the next chunks
                    // are fetched while this one is sent.
                    var pending: [Task<ByteBuffer, Error>] = []
                    var next = from + UInt64(first.readableBytes)
                    func refill() {
                        while pending.count < Self.readAhead && next < end {
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

    /// Parity groups a GET reads ahead of the one being sent.
    static let readAhead = 3

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
    /// Where a body goes: a new object, or memory (a small object kept in its record).
    enum BodyTarget {
        case object(ObjectWriter)
        /// At most this many bytes, else EntityTooLarge.
        case memory(limit: Int)
    }

    func receive(_ r: HTTPRequest, _ caller: Caller, _ body: RequestBody, into writer: ObjectWriter) async throws -> (md5: [UInt8], checksum: Attribute?) {
        let (md5, checksum, _) = try await receive(r, caller, body, into: .object(writer))
        return (md5, checksum)
    }

    /// Streams the request body into `target`, verifying every digest the client sent.
    /// Returns the MD5, the checksum attribute (if any), and the bytes kept in memory.
    func receive(_ r: HTTPRequest, _ caller: Caller, _ body: RequestBody, into target: BodyTarget) async throws
        -> (md5: [UInt8], checksum: Attribute?, bytes: [UInt8])
    {
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
        var maxSize: UInt64 = 5 << 40
        var kept: [UInt8] = []
        if case .memory(let limit) = target { maxSize = UInt64(limit) }
        do {
            while let buffer = try await body.next() {
                let pieces: [ByteBuffer]
                if decoder != nil { pieces = try decoder!.feed(buffer) } else { pieces = [buffer] }
                for piece in pieces {
                    piece.withUnsafeReadableBytes { digests.update($0) }
                    switch target {
                    case .object(let writer): try await writer.write(piece.readableBytesView)
                    case .memory: if UInt64(digests.count) <= maxSize { kept += piece.readableBytesView }
                    }
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
            if case .object(let writer) = target { _ = try await writer.finish() }
            return (md5, algorithm.flatMap { a in checksum.map { (a.header, $0) } }, kept)
        } catch {
            if case .object(let writer) = target { await store.abandon(writer) }
            throw error
        }
    }

    func putObject(
        _ r: HTTPRequest, _ caller: Caller, _ bucketName: String, _ b: BucketRecord, _ key: String, _ body: RequestBody, condition: S3Store.WriteCondition,
        acl: CannedACL?
    ) async throws -> HTTPResponse {
        var attrs = (acl ?? .private).applied(to: try attributes(of: r))
        let record: ObjectRecord
        // A small object is kept in its entry: one compare-and-put, no data object to write,
        // note pending or free (its length declared: Content-Length, or the decoded length
        // of an aws-chunked body).
        let declared = r.header("x-amz-decoded-content-length").flatMap(Int.init) ?? (r.header("transfer-encoding") == nil ? r.header("content-length").flatMap(Int.init) : nil)
        if let declared, declared <= S3Store.inlineLimit {
            let (md5, checksum, bytes) = try await receive(r, caller, body, into: .memory(limit: S3Store.inlineLimit))
            if let checksum { attrs.append(checksum) }
            let inline = ObjectRecord(
                fid: S3Indexes.newDataFid(), size: UInt64(bytes.count), modified: S3Store.now(), etag: hex(md5), attributes: attrs, inline: bytes)
            if try await store.fitsInRecord(inline) {
                record = inline
                do { try await store.commit(bucketName, b, key, record, condition: condition) } catch let e as S3Store.ConditionFailure { throw S3Error(e, key: key) }
            } else {
                // Too large with its attributes for a record of this cluster: an object after all.
                let writer = try await store.newObject(for: .object(bucket: bucketName, key: key))
                do {
                    try await writer.write(bytes)
                    _ = try await writer.finish()
                } catch {
                    await store.abandon(writer)
                    throw error
                }
                record = ObjectRecord(fid: writer.fid, size: inline.size, modified: inline.modified, etag: inline.etag, attributes: attrs)
                try await commit(bucketName, b, key, record, condition: condition, writer: writer)
            }
        } else {
            let writer = try await store.newObject(for: .object(bucket: bucketName, key: key))
            let (md5, checksum) = try await receive(r, caller, body, into: writer)
            if let checksum { attrs.append(checksum) }
            record = ObjectRecord(fid: writer.fid, size: writer.size, modified: S3Store.now(), etag: hex(md5), attributes: attrs)
            try await commit(bucketName, b, key, record, condition: condition, writer: writer)
        }
        let checksum = record.attributes.first { ChecksumAlgorithm(header: $0.name) != nil }
        var headers = [("ETag", "\"\(record.etag)\"")]
        if let checksum { headers += [(checksum.name, checksum.value), ("x-amz-checksum-type", ChecksumType.fullObject.rawValue)] }
        return HTTPResponse(.ok, headers: headers)
    }

    /// Makes `record`, which `writer` wrote, object `key` if `condition` holds; else frees
    /// it and answers as S3 does (412, 404, or 409 when a write sent again after a lost
    /// answer leaves it unknown whether it was made before another replaced it).
    func commit(_ bucketName: String, _ b: BucketRecord, _ key: String, _ record: ObjectRecord, condition: S3Store.WriteCondition, writer: ObjectWriter)
        async throws
    {
        do {
            try await store.commit(bucketName, b, key, record, condition: condition)
        } catch let e as S3Store.ConditionFailure {
            // Not made, or (409) made and then replaced by another writer, who freed it:
            // either way no entry refers to this object.
            await store.abandon(writer)
            throw S3Error(e, key: key)
        }
    }

    func uploadPart(_ r: HTTPRequest, _ caller: Caller, _ upload: UploadRecord, _ n: Int, _ body: RequestBody) async throws -> HTTPResponse {
        let writer = try await store.newPart(upload, n)
        let (md5, checksum) = try await receive(r, caller, body, into: writer)
        // An upload made with a checksum algorithm takes parts with that checksum only.
        if let (algorithm, _) = Self.checksum(of: upload), checksum?.name != algorithm.header {
            await store.abandon(writer)
            let got = checksum.flatMap { ChecksumAlgorithm(header: $0.name)?.rawValue } ?? "null"
            throw S3Error(.badRequest, "InvalidRequest", "Checksum Type mismatch occurred, expected checksum Type: \(algorithm.rawValue), actual checksum Type: \(got)")
        }
        let part = PartRecord(number: n, fid: writer.fid, size: writer.size, modified: S3Store.now(), md5: md5, attributes: checksum.map { [$0] } ?? [])
        try await store.commitPart(upload, part)
        var headers = [("ETag", "\"\(part.etag)\"")]
        if let checksum { headers.append((checksum.name, checksum.value)) }
        return HTTPResponse(.ok, headers: headers)
    }

    /// CopyObject and UploadPartCopy: the source's bytes (or a range of them) streamed into
    /// a new object.
    func copy(_ r: HTTPRequest, _ caller: Caller, _ b: BucketRecord, into dest: Destination, condition: S3Store.WriteCondition) async throws -> HTTPResponse {
        // BUCKET/KEY, percent-encoded, then `?versionId=V` maybe (a `?` in a key is encoded).
        let header = Substring(r.header("x-amz-copy-source")!)
        let q = header.firstIndex(of: "?")
        var source = HTTPServer.percentDecode(q.map { header[..<$0] } ?? header, plusIsSpace: false)
        if let q, header[header.index(after: q)...] != "versionId=null" { throw S3Error.invalidArgument("Invalid version id specified") }
        if source.hasPrefix("/") { source.removeFirst() }
        guard let slash = source.firstIndex(of: "/") else { throw S3Error.invalidArgument("Copy Source must mention the source bucket and key: sourcebucket/sourcekey") }
        let srcBucketName = String(source[..<slash])
        let srcKey = String(source[source.index(after: slash)...])
        let (_, src) = try await readableObject(caller, srcBucketName, srcKey)
        let acl = try CannedACL(objectHeaders: r) ?? .private
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
        // The copy gets a checksum of its own: a part, its upload's algorithm; an object,
        // the one `x-amz-checksum-algorithm` names, or else its source's.
        let algorithm: ChecksumAlgorithm?
        switch dest {
        case .part(let upload, _): algorithm = Self.checksum(of: upload)?.algorithm
        case .object:
            if let a = r.header("x-amz-checksum-algorithm") {
                guard let named = ChecksumAlgorithm(rawValue: a.lowercased()) else { throw S3Error.invalidArgument("Checksum algorithm \(a) is not supported") }
                algorithm = named
            } else {
                algorithm = src.attributes.lazy.compactMap { ChecksumAlgorithm(header: $0.name) }.first
            }
        }
        var md5 = BodyDigests(payloadHash: false, checksum: algorithm)
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
        let (digest, _, sum) = md5.finish()
        let checksum: [Attribute] = algorithm.flatMap { a in sum.map { [(a.header, $0)] } } ?? []
        let now = S3Store.now()
        var w = XMLWriter()
        switch dest {
        case .object(let bucketName, let key):
            let replace = r.header("x-amz-metadata-directive")?.uppercased() == "REPLACE"
            if !replace && srcBucketName == bucketName && srcKey == key {
                await store.abandon(writer)
                throw S3Error(.badRequest, "InvalidRequest", "This copy request is illegal because it is trying to copy an object to itself without changing the object's metadata.")
            }
            // The copy's checksum and ACL are its own, not the source's.
            var attrs = replace ? try attributes(of: r) : src.attributes
            attrs.removeAll { ChecksumAlgorithm(header: $0.name) != nil || $0.name == ChecksumType.attribute }
            let record = ObjectRecord(fid: writer.fid, size: writer.size, modified: now, etag: hex(digest), attributes: acl.applied(to: attrs) + checksum)
            try await commit(bucketName, b, key, record, condition: condition, writer: writer)
            w.open("CopyObjectResult", xmlns: true)
            w.element("LastModified", isoDate(date(ns: now)))
            w.element("ETag", "\"\(record.etag)\"")
            w.checksums(checksum)
            w.close("CopyObjectResult")
        case .part(let upload, let n):
            let part = PartRecord(number: n, fid: writer.fid, size: writer.size, modified: now, md5: digest, attributes: checksum)
            try await store.commitPart(upload, part)
            w.open("CopyPartResult", xmlns: true)
            w.element("LastModified", isoDate(date(ns: now)))
            w.element("ETag", "\"\(part.etag)\"")
            w.checksums(checksum)
            w.close("CopyPartResult")
        }
        return .xml(.ok, w)
    }

    func deleteObjects(_ r: HTTPRequest, _ bucketName: String, _ b: BucketRecord, _ body: RequestBody) async throws -> HTTPResponse {
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
            // The one version of every object is "null" (what ListObjectVersions lists).
            let version = o.value("VersionId")?.trimmingSpaces
            do {
                guard key.utf8.count <= 1024 else { throw S3Error(.badRequest, "KeyTooLongError", "Your key is too long") }
                if let version, version != "null" { throw S3Error.invalidArgument("Invalid version id specified") }
                try await store.deleteObject(bucketName, b, key)
                if !quiet {
                    w.element("Deleted") { w in
                        w.element("Key", key)
                        if let version { w.element("VersionId", version) }
                    }
                }
            } catch {
                let e = S3Error.from(error)
                w.element("Error") { w in
                    w.element("Key", key)
                    if let version { w.element("VersionId", version) }
                    w.element("Code", e.code)
                    w.element("Message", e.message)
                }
            }
        }
        w.close("DeleteResult")
        return .xml(.ok, w)
    }

    // MARK: Attributes and ACL

    /// GetObjectAttributes: the attributes `x-amz-object-attributes` names, of ETag,
    /// Checksum, ObjectParts (paged by `x-amz-max-parts` and `x-amz-part-number-marker`),
    /// StorageClass and ObjectSize.
    func getObjectAttributes(_ r: HTTPRequest, _ caller: Caller, _ bucketName: String, _ key: String) async throws -> HTTPResponse {
        let names = Set((r.header("x-amz-object-attributes") ?? "").split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty })
        let known: Set<String> = ["ETag", "Checksum", "ObjectParts", "StorageClass", "ObjectSize"]
        guard !names.isEmpty else { throw S3Error.invalidArgument("x-amz-object-attributes must name at least one of ETag, Checksum, ObjectParts, StorageClass, ObjectSize") }
        if let bad = names.subtracting(known).first { throw S3Error.invalidArgument("Invalid attribute name specified: \(bad)") }
        let (marker, maxParts) = try Self.partPage(
            marker: r.header("x-amz-part-number-marker"), max: r.header("x-amz-max-parts"), markerName: "x-amz-part-number-marker", maxName: "x-amz-max-parts")
        let (_, o) = try await readableObject(caller, bucketName, key)
        var w = XMLWriter()
        w.open("GetObjectAttributesResponse", xmlns: true)
        if names.contains("ETag") { w.element("ETag", o.etag) }
        if names.contains("Checksum"), o.attributes.contains(where: { ChecksumAlgorithm(header: $0.name) != nil }) {
            w.element("Checksum") { w in
                w.checksums(o.attributes)
                w.element("ChecksumType", ChecksumType.of(o.attributes))
            }
        }
        if names.contains("ObjectParts"), o.multipart {
            let parts = try await store.partRecords(o.fid, after: marker, limit: maxParts + 1)
            let shown = parts.prefix(maxParts)
            w.element("ObjectParts") { w in
                w.element("PartsCount", String(o.parts))
                w.element("PartNumberMarker", String(marker))
                if let last = shown.last { w.element("NextPartNumberMarker", String(last.number)) }
                w.element("MaxParts", String(maxParts))
                w.element("IsTruncated", parts.count > maxParts ? "true" : "false")
                for p in shown {
                    w.element("Part") { w in
                        w.element("PartNumber", String(p.number))
                        w.element("Size", String(p.size))
                        w.checksums(p.attributes)
                    }
                }
            }
        }
        if names.contains("StorageClass") { w.element("StorageClass", "STANDARD") }
        if names.contains("ObjectSize") { w.element("ObjectSize", String(o.size)) }
        w.close("GetObjectAttributesResponse")
        let headers = [("Last-Modified", httpDate(date(ns: o.modified)))] + Self.versionHeader(r)
        return .xml(.ok, w, headers: headers)
    }

    /// GetObjectAcl: the object's owner (the bucket's) with FULL_CONTROL, and READ for
    /// everyone when the object is public-read.
    func getObjectAcl(_ caller: Caller, _ bucketName: String, _ key: String) async throws -> HTTPResponse {
        let b = try await authorizedBucket(bucketName, caller, write: true)
        guard let o = try await store.object(b, key) else { throw S3Error.noSuchKey(key) }
        return .xml(.ok, CannedACL(object: o.attributes).policy(owner: b.owner))
    }

    /// PutObjectAcl: a canned ACL in `x-amz-acl`, or an AccessControlPolicy body; the
    /// object's record changes by a compare-and-put, its data stays.
    func putObjectAcl(_ r: HTTPRequest, _ caller: Caller, _ bucketName: String, _ key: String, _ body: RequestBody, _ cont: () async throws -> Void)
        async throws -> HTTPResponse
    {
        _ = try requireCaller(caller)
        let b = try await authorizedBucket(bucketName, caller, write: true)
        let acl = try await requestedACL(r, owner: b.owner, body, cont)
        guard try await store.updateObject(b, key, { $0.attributes = acl.applied(to: $0.attributes) }) != nil else { throw S3Error.noSuchKey(key) }
        return HTTPResponse(.ok)
    }
}
