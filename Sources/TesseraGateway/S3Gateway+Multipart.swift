// Multipart uploads: create, upload parts (UploadPart and UploadPartCopy live with the
// object writes), complete, abort, list parts and uploads.
import Foundation
import NIOCore
import NIOHTTP1
import TesseraClient
import TesseraCore
import TesseraS3

extension S3Gateway {
    /// The checksum an upload was created with: algorithm and type (nil: none).
    static func checksum(of upload: UploadRecord) -> (algorithm: ChecksumAlgorithm, type: ChecksumType)? {
        guard let a = upload.attributes.first(where: { $0.name == "x-amz-checksum-algorithm" }).flatMap({ ChecksumAlgorithm(rawValue: $0.value.lowercased()) }) else {
            return nil
        }
        let type = upload.attributes.first { $0.name == ChecksumType.attribute }.flatMap { ChecksumType(rawValue: $0.value) } ?? .default(for: a)
        return (a, type)
    }

    func createUpload(_ r: HTTPRequest, _ bucketName: String, _ b: BucketRecord, _ key: String) async throws -> HTTPResponse {
        var attrs = (try CannedACL(objectHeaders: r) ?? .private).applied(to: try attributes(of: r))
        var headers: [(String, String)] = []
        let type = r.header("x-amz-checksum-type").map { $0.uppercased() }
        if let a = r.header("x-amz-checksum-algorithm") {
            guard let algorithm = ChecksumAlgorithm(rawValue: a.lowercased()) else { throw S3Error.invalidArgument("Checksum algorithm \(a) is not supported") }
            let t = try type.map { t in
                guard let t = ChecksumType(rawValue: t) else { throw S3Error.invalidArgument("Value for x-amz-checksum-type header is invalid.") }
                return t
            } ?? .default(for: algorithm)
            guard t.allowed(for: algorithm) else {
                throw S3Error(.badRequest, "InvalidRequest", "The \(algorithm.rawValue.uppercased()) checksum algorithm is not supported with the \(t.rawValue) checksum type.")
            }
            attrs += [("x-amz-checksum-algorithm", algorithm.rawValue.uppercased()), (ChecksumType.attribute, t.rawValue)]
            headers += [("x-amz-checksum-algorithm", algorithm.rawValue.uppercased()), ("x-amz-checksum-type", t.rawValue)]
        } else if type != nil {
            throw S3Error(.badRequest, "InvalidRequest", "The x-amz-checksum-type header can only be used with the x-amz-checksum-algorithm header.")
        }
        let id = try await store.createUpload(bucketName, b, key, attributes: attrs)
        var w = XMLWriter()
        w.open("InitiateMultipartUploadResult", xmlns: true)
        w.element("Bucket", bucketName)
        w.element("Key", key)
        w.element("UploadId", id)
        w.close("InitiateMultipartUploadResult")
        return .xml(.ok, w, headers: headers)
    }

    func completeUpload(
        _ r: HTTPRequest, _ bucketName: String, _ b: BucketRecord, _ key: String, _ id: String, _ body: RequestBody, condition: S3Store.WriteCondition
    ) async throws -> HTTPResponse {
        guard let upload = try await store.upload(b, key, id) else { throw S3Error.noSuchUpload() }
        let bytes = try await body.collect(limit: 4 << 20)
        let root: XMLNode
        do { root = try XMLParser.parse(bytes) } catch { throw S3Error.malformedXML() }
        guard root.name == "CompleteMultipartUpload" else { throw S3Error.malformedXML() }
        var wanted: [(number: Int, etag: String)] = []
        var sentChecksums: [Int: [(ChecksumAlgorithm, String)]] = [:]
        for p in root.all("Part") {
            guard let n = p.value("PartNumber").flatMap({ Int($0.trimmingSpaces) }), let e = p.value("ETag") else { throw S3Error.malformedXML() }
            wanted.append((n, e.trimmingSpaces))
            sentChecksums[n] = ChecksumAlgorithm.allCases.compactMap { a in p.value(a.element).map { (a, $0.trimmingSpaces) } }
        }
        guard !wanted.isEmpty else { throw S3Error.malformedXML("You must specify at least one part") }
        let checksum = Self.checksum(of: upload)
        if let t = r.header("x-amz-checksum-type"), t.uppercased() != (checksum?.type.rawValue ?? "") {
            throw S3Error(.badRequest, "InvalidRequest", "The upload was created using the \(checksum?.type.rawValue ?? "null") checksum mode. The complete request must use the same checksum mode.")
        }
        // Each part's checksum, as listed, must be the one it was uploaded with; the upload's
        // checksum is made from them (and must be what the request says, if it says).
        let objectChecksum: ([PartRecord]) throws -> [Attribute] = { parts in
            for p in parts {
                for (a, v) in sentChecksums[p.number] ?? [] where p.attributes.first(where: { $0.name == a.header })?.value != v {
                    throw S3Error(.badRequest, "InvalidPart", "One or more of the specified parts could not be found (part \(p.number)), or its checksum did not match.")
                }
            }
            guard let (algorithm, type) = checksum else { return [] }
            var sums: [(checksum: String, size: UInt64)] = []
            for p in parts {
                guard let v = p.attributes.first(where: { $0.name == algorithm.header })?.value else {
                    throw S3Error(.badRequest, "InvalidRequest", "Part \(p.number) has no \(algorithm.rawValue.uppercased()) checksum, which this upload needs.")
                }
                sums.append((v, p.size))
            }
            guard let value = algorithm.multipart(sums, type: type) else { throw S3Error(.internalServerError, "InternalError", "a part's stored checksum does not decode") }
            if let sent = r.header(algorithm.header), sent != value {
                throw S3Error.badDigest("The \(algorithm.rawValue.uppercased()) you specified did not match the calculated checksum.")
            }
            // An upload made before types were kept has none in its attributes.
            let typed = upload.attributes.contains { $0.name == ChecksumType.attribute }
            return [(algorithm.header, value)] + (typed ? [] : [(ChecksumType.attribute, type.rawValue)])
        }
        let record: ObjectRecord
        do {
            record = try await store.completeUpload(bucketName, b, key, id, upload, parts: wanted, condition: condition, attributes: objectChecksum)
        } catch let e as S3Store.CompletionError {
            switch e {
            case .invalidPart(let n):
                throw S3Error(.badRequest, "InvalidPart", "One or more of the specified parts could not be found (part \(n)), or its entity tag did not match.")
            case .invalidPartOrder: throw S3Error(.badRequest, "InvalidPartOrder", "The list of parts was not in ascending order.")
            case .entityTooSmall(let n): throw S3Error(.badRequest, "EntityTooSmall", "Part \(n) is smaller than the minimum allowed size of 5 MiB.")
            }
        } catch let e as S3Store.ConditionFailure {
            throw S3Error(e, key: key)
        }
        var w = XMLWriter()
        w.open("CompleteMultipartUploadResult", xmlns: true)
        w.element("Location", "/\(bucketName)/\(SigV4.encode(key, keepSlash: true))")
        w.element("Bucket", bucketName)
        w.element("Key", key)
        w.element("ETag", "\"\(record.etag)\"")
        if let (algorithm, type) = checksum, let v = record.attribute(algorithm.header) {
            w.element(algorithm.element, v)
            w.element("ChecksumType", type.rawValue)
        }
        w.close("CompleteMultipartUploadResult")
        return .xml(.ok, w)
    }

    func listParts(_ r: HTTPRequest, _ bucketName: String, _ b: BucketRecord, _ key: String, _ id: String) async throws -> HTTPResponse {
        guard let upload = try await store.upload(b, key, id) else { throw S3Error.noSuchUpload() }
        let (marker, maxParts) = try Self.partPage(
            marker: r.query("part-number-marker"), max: r.query("max-parts"), markerName: "part-number-marker", maxName: "max-parts")
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
        if let (algorithm, type) = Self.checksum(of: upload) {
            w.element("ChecksumAlgorithm", algorithm.rawValue.uppercased())
            w.element("ChecksumType", type.rawValue)
        }
        for p in shown {
            w.element("Part") { w in
                w.element("PartNumber", String(p.number))
                w.element("LastModified", isoDate(date(ns: p.modified)))
                w.element("ETag", "\"\(p.etag)\"")
                w.element("Size", String(p.size))
                w.checksums(p.attributes)
            }
        }
        w.close("ListPartsResult")
        return .xml(.ok, w)
    }

    func listUploads(_ r: HTTPRequest, _ bucketName: String, _ b: BucketRecord) async throws -> HTTPResponse {
        guard let maxUploads = Int(r.query("max-uploads") ?? "1000").map({ min($0, 1000) }), maxUploads >= 0 else {
            throw S3Error.invalidArgument("max-uploads must be a non-negative integer")
        }
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
