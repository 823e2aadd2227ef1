// Listing a bucket's objects: ListObjects (v1 and v2) and ListObjectVersions.
import Foundation
import NIOCore
import NIOHTTP1
import TesseraClient
import TesseraCore
import TesseraS3

extension S3Gateway {
    /// What every listing takes: prefix, delimiter, max-keys, encoding-type.
    struct ListParameters {
        var prefix: String
        var delimiter: String?
        var maxKeys: Int
        var urlEncode: Bool

        init(_ r: HTTPRequest) throws {
            prefix = r.query("prefix") ?? ""
            delimiter = r.query("delimiter").flatMap { $0.isEmpty ? nil : $0 }
            maxKeys = 1000
            if let m = r.query("max-keys") {
                guard let n = Int(m), n >= 0 else { throw S3Error.invalidArgument("max-keys must be a non-negative integer") }
                maxKeys = min(n, 1000)
            }
            urlEncode = r.query("encoding-type") == "url"
            if let e = r.query("encoding-type"), e != "url" { throw S3Error.invalidArgument("Invalid Encoding Method specified in Request") }
        }

        /// A key, prefix or marker as the listing prints it.
        func enc(_ s: String) -> String { urlEncode ? SigV4.encode(s, keepSlash: true) : s }

        /// The elements every listing starts with.
        func write(_ w: inout XMLWriter, truncated: Bool) {
            w.element("MaxKeys", String(maxKeys))
            if let delimiter { w.element("Delimiter", enc(delimiter)) }
            if urlEncode { w.element("EncodingType", "url") }
            w.element("IsTruncated", truncated ? "true" : "false")
        }
    }

    func listObjects(_ r: HTTPRequest, _ name: String, _ b: BucketRecord, v2: Bool) async throws -> HTTPResponse {
        let p = try ListParameters(r)
        let (prefix, delimiter, maxKeys) = (p.prefix, p.delimiter, p.maxKeys)
        var after: String?
        if v2 {
            if let token = r.query("continuation-token") {
                after = try Self.continuation(token)
            } else {
                after = r.query("start-after")
            }
        } else {
            after = r.query("marker")
        }
        if after?.isEmpty == true { after = nil }
        let listing = try await store.list(b.objects, prefix: prefix, delimiter: delimiter, after: after, limit: maxKeys)
        let enc = p.enc
        var w = XMLWriter()
        w.open("ListBucketResult", xmlns: true)
        w.element("Name", name)
        w.element("Prefix", enc(prefix))
        p.write(&w, truncated: listing.truncated)
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
                    w.owner(b.owner)
                }
            }
        }
        for common in listing.commonPrefixes {
            w.element("CommonPrefixes") { w in w.element("Prefix", enc(common)) }
        }
        w.close("ListBucketResult")
        return .xml(.ok, w)
    }

    /// ListObjectVersions. Versioning is never enabled, so each object is its one version,
    /// "null", the latest; the markers are a key and "null".
    func listObjectVersions(_ r: HTTPRequest, _ name: String, _ b: BucketRecord) async throws -> HTTPResponse {
        let p = try ListParameters(r)
        let keyMarker = r.query("key-marker").flatMap { $0.isEmpty ? nil : $0 }
        let versionMarker = r.query("version-id-marker").flatMap { $0.isEmpty ? nil : $0 }
        if versionMarker != nil && keyMarker == nil { throw S3Error.invalidArgument("A version-id marker cannot be specified without a key marker.") }
        if let v = versionMarker, v != "null" { throw S3Error.invalidArgument("Invalid version id specified") }
        let listing = try await store.list(b.objects, prefix: p.prefix, delimiter: p.delimiter, after: keyMarker, limit: p.maxKeys)
        var w = XMLWriter()
        w.open("ListVersionsResult", xmlns: true)
        w.element("Name", name)
        w.element("Prefix", p.enc(p.prefix))
        w.element("KeyMarker", p.enc(keyMarker ?? ""))
        w.element("VersionIdMarker", versionMarker ?? "")
        if listing.truncated, let last = listing.last {
            w.element("NextKeyMarker", p.enc(last))
            if !listing.commonPrefixes.contains(last) { w.element("NextVersionIdMarker", "null") }
        }
        p.write(&w, truncated: listing.truncated)
        for e in listing.entries {
            let o = try ObjectRecord.decode(e.value)
            w.element("Version") { w in
                w.element("Key", p.enc(e.key))
                w.element("VersionId", "null")
                w.element("IsLatest", "true")
                w.element("LastModified", isoDate(date(ns: o.modified)))
                w.element("ETag", "\"\(o.etag)\"")
                w.element("Size", String(o.size))
                w.owner(b.owner)
                w.element("StorageClass", "STANDARD")
            }
        }
        for prefix in listing.commonPrefixes {
            w.element("CommonPrefixes") { w in w.element("Prefix", p.enc(prefix)) }
        }
        w.close("ListVersionsResult")
        return .xml(.ok, w)
    }
}
