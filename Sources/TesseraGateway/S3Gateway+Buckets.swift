// The bucket operations: list, create, delete, and the bucket's ACL.
import Foundation
import NIOCore
import NIOHTTP1
import TesseraClient
import TesseraCore
import TesseraS3

extension S3Gateway {
    /// ListBuckets: the caller's buckets by name, `prefix` among them, `max-buckets` at a
    /// time after an opaque `continuation-token` (the last name shown, base64).
    func listBuckets(_ r: HTTPRequest, _ caller: Caller) async throws -> HTTPResponse {
        let key = try requireCaller(caller)
        let prefix = r.query("prefix") ?? ""
        var limit = 10_000
        if let m = r.query("max-buckets") {
            guard let n = Int(m), (1...10_000).contains(n) else { throw S3Error.invalidArgument("max-buckets must be an integer from 1 to 10000") }
            limit = n
        }
        var after: String? = nil
        if let token = r.query("continuation-token") {
            after = try Self.continuation(token)
        }
        let mine = try await store.listBuckets().filter { b in
            b.record.owner == key && b.name.hasPrefix(prefix) && (after.map { $0.utf8.lexicographicallyPrecedes(b.name.utf8) } ?? true)
        }
        let shown = mine.prefix(limit)
        var w = XMLWriter()
        w.open("ListAllMyBucketsResult", xmlns: true)
        w.owner(key)
        w.element("Buckets") { w in
            for b in shown {
                w.element("Bucket") { w in
                    w.element("Name", b.name)
                    w.element("CreationDate", isoDate(date(ns: b.record.created)))
                    w.element("BucketRegion", settings.region)
                }
            }
        }
        if mine.count > shown.count, let last = shown.last { w.element("ContinuationToken", Data(last.name.utf8).base64EncodedString()) }
        if r.query("prefix") != nil { w.element("Prefix", prefix) }
        w.close("ListAllMyBucketsResult")
        return .xml(.ok, w)
    }

    func createBucket(_ r: HTTPRequest, _ caller: Caller, _ name: String, _ body: RequestBody, _ cont: () async throws -> Void) async throws -> HTTPResponse {
        let key = try requireCaller(caller)
        let acl = try CannedACL(bucketHeaders: r) ?? .private
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
            try await store.createBucket(name, owner: key, publicRead: acl == .publicRead || settings.publicRead.contains(name))
        } catch let e as TesseraError where e.code == .exists {
            guard try await store.bucket(name)?.owner == key else {
                throw S3Error(.conflict, "BucketAlreadyExists", "The requested bucket name is not available.")
            }
            // S3 answers 200 for a bucket you own in us-east-1, and changes nothing.
            guard settings.region == "us-east-1" else {
                throw S3Error(.conflict, "BucketAlreadyOwnedByYou", "Your previous request to create the named bucket succeeded and you already own it.")
            }
        }
        return HTTPResponse(.ok, headers: [("Location", "/\(name)")])
    }

    func deleteBucket(_ caller: Caller, _ name: String) async throws -> HTTPResponse {
        _ = try requireCaller(caller)
        let b = try await authorizedBucket(name, caller, write: true)
        do { try await store.deleteBucket(name, b) } catch let e as TesseraError where e.code == .notEmpty {
            throw S3Error(.conflict, "BucketNotEmpty", "The bucket you tried to delete is not empty")
        }
        return HTTPResponse(.noContent)
    }

    func getBucketAcl(_ caller: Caller, _ name: String) async throws -> HTTPResponse {
        let b = try await authorizedBucket(name, caller, write: true)
        return .xml(.ok, (publicRead(name, b) ? CannedACL.publicRead : .private).policy(owner: b.owner))
    }

    /// PutBucketAcl: a canned ACL in `x-amz-acl`, or an AccessControlPolicy body.
    func putBucketAcl(_ r: HTTPRequest, _ caller: Caller, _ name: String, _ body: RequestBody, _ cont: () async throws -> Void) async throws -> HTTPResponse {
        _ = try requireCaller(caller)
        let b = try await authorizedBucket(name, caller, write: true)
        let acl = try await requestedACL(r, owner: b.owner, body, cont)
        guard try await store.updateBucket(name, { $0.publicRead = acl == .publicRead }) != nil else { throw S3Error.noSuchBucket(name) }
        return HTTPResponse(.ok)
    }

    /// The ACL a PutBucketAcl or PutObjectAcl sets: by header, or by body.
    func requestedACL(_ r: HTTPRequest, owner: String, _ body: RequestBody, _ cont: () async throws -> Void) async throws -> CannedACL {
        let header = try CannedACL(objectHeaders: r)
        try await cont()
        let bytes = try await body.collect(limit: 64 << 10)
        if let header {
            guard bytes.isEmpty else { throw S3Error(.badRequest, "UnexpectedContent", "This request does not support content when x-amz-acl is given") }
            return header
        }
        guard !bytes.isEmpty else { throw S3Error(.badRequest, "MissingSecurityHeader", "Your request was missing a required header: x-amz-acl, or an AccessControlPolicy body") }
        return try CannedACL(policy: bytes, owner: owner)
    }
}
