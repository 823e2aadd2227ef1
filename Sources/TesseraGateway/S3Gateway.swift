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

    /// The bucket and key a request names: from its path (path style, `/BUCKET/KEY`), or
    /// from its Host when that is `BUCKET.DOMAIN` for a configured domain (virtual-hosted
    /// style, `/KEY`).
    func target(_ r: HTTPRequest) throws -> (bucket: String?, key: String?) {
        guard r.path.hasPrefix("/") else { throw S3Error.invalidArgument("the request path must start with /") }
        let path = r.path.dropFirst()
        if let host = r.header("host")?.lowercased() {
            let name = host.hasPrefix("[") ? host : String(host.split(separator: ":", maxSplits: 1).first ?? "")
            for d in settings.domains where name.hasSuffix("." + d.lowercased()) && name.utf8.count > d.utf8.count + 1 {
                let bucket = String(decoding: name.utf8.dropLast(d.utf8.count + 1), as: UTF8.self)
                return (bucket, path.isEmpty ? nil : String(path))
            }
        }
        guard let slash = path.firstIndex(of: "/") else { return (path.isEmpty ? nil : String(path), nil) }
        let key = path[path.index(after: slash)...]
        return (String(path[..<slash]), key.isEmpty ? nil : String(key))
    }

    private func route(_ r: HTTPRequest, body: RequestBody, continueBody cont: @escaping () async throws -> Void) async throws -> HTTPResponse {
        let caller = try authenticate(r)
        let (bucket, key) = try target(r)
        let op: S3Operation
        do throws(S3Operation.Failure) {
            op = try S3Operation.resolve(r.method, bucket: bucket != nil, key: key != nil, query: r.query)
        } catch {
            switch error {
            case .notImplemented(let what): throw S3Error.notImplemented(what)
            case .methodNotAllowed: throw S3Error(.methodNotAllowed, "MethodNotAllowed", "The specified method is not allowed against this resource.")
            }
        }
        guard let bucket else { return try await listBuckets(r, caller) }
        guard let key else { return try await bucketRequest(op, r, caller, bucket, body, cont) }
        guard key.utf8.count <= 1024 else { throw S3Error(.badRequest, "KeyTooLongError", "Your key is too long") }
        guard !key.utf8.contains(0) else { throw S3Error.invalidArgument("object keys cannot contain NUL") }
        // Versioning is never enabled: every object has the one version S3 calls "null".
        if let v = r.query("versionId"), v != "null" { throw S3Error.invalidArgument("Invalid version id specified") }
        return try await objectRequest(op, r, caller, bucket, key, body, cont)
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
    func authorizedBucket(_ name: String, _ caller: Caller, write: Bool) async throws -> BucketRecord {
        let b = try await existingBucket(name, caller)
        if let k = caller.accessKey, k == b.owner { return b }
        if !write && publicRead(name, b) { return b }
        throw S3Error.accessDenied()
    }

    /// The bucket; for one that does not exist, NoSuchBucket to a signed caller and
    /// AccessDenied to anyone else.
    func existingBucket(_ name: String, _ caller: Caller) async throws -> BucketRecord {
        guard let b = try await store.bucket(name) else {
            if caller.accessKey == nil { throw S3Error.accessDenied() }
            throw S3Error.noSuchBucket(name)
        }
        return b
    }

    /// Whether anyone may list and read bucket `name`: by its ACL, or by the configuration.
    func publicRead(_ name: String, _ b: BucketRecord) -> Bool { b.publicRead || settings.publicRead.contains(name) }

    func requireCaller(_ caller: Caller) throws -> String {
        guard let k = caller.accessKey else { throw S3Error.accessDenied("Anonymous access is forbidden for this operation") }
        return k
    }

    private func bucketRequest(_ op: S3Operation, _ r: HTTPRequest, _ caller: Caller, _ name: String, _ body: RequestBody, _ cont: @escaping () async throws -> Void)
        async throws -> HTTPResponse
    {
        switch op {
        case .createBucket: return try await createBucket(r, caller, name, body, cont)
        case .deleteBucket: return try await deleteBucket(caller, name)
        case .headBucket:
            _ = try await authorizedBucket(name, caller, write: false)
            return HTTPResponse(.ok, headers: [("x-amz-bucket-region", settings.region)])
        case .getBucketLocation:
            _ = try await authorizedBucket(name, caller, write: false)
            var w = XMLWriter()
            w.open("LocationConstraint", xmlns: true)
            w.text(settings.region == "us-east-1" ? "" : settings.region)
            w.close("LocationConstraint")
            return .xml(.ok, w)
        case .getBucketVersioning:
            _ = try await authorizedBucket(name, caller, write: false)
            var w = XMLWriter()
            w.open("VersioningConfiguration", xmlns: true)
            w.close("VersioningConfiguration")
            return .xml(.ok, w)
        case .getBucketAcl: return try await getBucketAcl(caller, name)
        case .putBucketAcl: return try await putBucketAcl(r, caller, name, body, cont)
        case .listObjects, .listObjectsV2:
            return try await listObjects(r, name, try await authorizedBucket(name, caller, write: false), v2: op == .listObjectsV2)
        case .listObjectVersions: return try await listObjectVersions(r, name, try await authorizedBucket(name, caller, write: false))
        case .listMultipartUploads: return try await listUploads(r, name, try await authorizedBucket(name, caller, write: false))
        case .deleteObjects:
            _ = try requireCaller(caller)
            let b = try await authorizedBucket(name, caller, write: true)
            try await cont()
            return try await deleteObjects(r, name, b, body)
        default: throw S3Error.notImplemented("\(op) on a bucket")
        }
    }

    private func objectRequest(
        _ op: S3Operation, _ r: HTTPRequest, _ caller: Caller, _ bucketName: String, _ key: String, _ body: RequestBody, _ cont: @escaping () async throws -> Void
    ) async throws -> HTTPResponse {
        switch op {
        case .getObject, .headObject: return try await getObject(r, caller, bucketName, key)
        case .getObjectAttributes: return try await getObjectAttributes(r, caller, bucketName, key)
        case .getObjectAcl: return try await getObjectAcl(caller, bucketName, key)
        case .putObjectAcl: return try await putObjectAcl(r, caller, bucketName, key, body, cont)
        case .listParts:
            let b = try await authorizedBucket(bucketName, caller, write: true)
            return try await listParts(r, bucketName, b, key, r.query("uploadId") ?? "")
        case .uploadPart:
            _ = try requireCaller(caller)
            let b = try await authorizedBucket(bucketName, caller, write: true)
            guard let n = r.query("partNumber").flatMap(Int.init), (1...S3Store.maxPartNumber).contains(n) else {
                throw S3Error.invalidArgument("Part number must be an integer between 1 and 10000, inclusive")
            }
            guard let upload = try await store.upload(b, key, r.query("uploadId") ?? "") else { throw S3Error.noSuchUpload() }
            if r.header("x-amz-copy-source") != nil { return try await copy(r, caller, b, into: .part(upload, n), condition: .none) }
            try await cont()
            return try await uploadPart(r, caller, upload, n, body)
        case .putObject:
            _ = try requireCaller(caller)
            let b = try await authorizedBucket(bucketName, caller, write: true)
            let condition = try writeCondition(r)
            if r.header("x-amz-copy-source") != nil { return try await copy(r, caller, b, into: .object(bucketName, key), condition: condition) }
            let acl = try CannedACL(objectHeaders: r)
            try await cont()
            return try await putObject(r, caller, bucketName, b, key, body, condition: condition, acl: acl)
        case .deleteObject:
            _ = try requireCaller(caller)
            let b = try await authorizedBucket(bucketName, caller, write: true)
            try await store.deleteObject(bucketName, b, key)
            return HTTPResponse(.noContent, headers: Self.versionHeader(r))
        case .abortMultipartUpload:
            _ = try requireCaller(caller)
            let b = try await authorizedBucket(bucketName, caller, write: true)
            let id = r.query("uploadId") ?? ""
            guard let upload = try await store.upload(b, key, id) else { throw S3Error.noSuchUpload() }
            try await store.abortUpload(bucketName, b, key, id, upload)
            return HTTPResponse(.noContent)
        case .createMultipartUpload:
            _ = try requireCaller(caller)
            return try await createUpload(r, bucketName, try await authorizedBucket(bucketName, caller, write: true), key)
        case .completeMultipartUpload:
            _ = try requireCaller(caller)
            let b = try await authorizedBucket(bucketName, caller, write: true)
            let condition = try writeCondition(r)
            try await cont()
            return try await completeUpload(r, bucketName, b, key, r.query("uploadId") ?? "", body, condition: condition)
        default: throw S3Error.notImplemented("\(op) on an object")
        }
    }

    /// The page of parts a request asks for: after `marker` (0 to 10000), at most `max`
    /// (0 to 1000; default 1000). Out of range or not a number: InvalidArgument.
    static func partPage(marker: String?, max: String?, markerName: String, maxName: String) throws -> (marker: Int, max: Int) {
        guard let m = Int(marker ?? "0"), (0...S3Store.maxPartNumber).contains(m) else {
            throw S3Error.invalidArgument("\(markerName) must be an integer from 0 to \(S3Store.maxPartNumber)")
        }
        guard let n = Int(max ?? "1000"), n >= 0 else { throw S3Error.invalidArgument("\(maxName) must be a non-negative integer") }
        return (m, min(n, 1000))
    }

    /// A continuation token: the last name of the page before, base64.
    static func continuation(_ token: String) throws -> String {
        guard let d = Data(base64Encoded: token), let s = String(data: d, encoding: .utf8), !s.isEmpty else {
            throw S3Error.invalidArgument("The continuation token provided is incorrect")
        }
        return s
    }

    /// `x-amz-version-id: null` for a request that named the version.
    static func versionHeader(_ r: HTTPRequest) -> [(String, String)] { r.query("versionId") != nil ? [("x-amz-version-id", "null")] : [] }

    /// S3's conditional writes: `If-None-Match: *` (only if there is no object) and
    /// `If-Match: ETAG` (only if the object is that one).
    func writeCondition(_ r: HTTPRequest) throws -> S3Store.WriteCondition {
        let none = r.header("if-none-match")?.trimmingCharacters(in: .whitespaces)
        let match = r.header("if-match")?.trimmingCharacters(in: .whitespaces)
        switch (none, match) {
        case (nil, nil): return .none
        case ("*", nil): return .absent
        case (.some, nil): throw S3Error.notImplemented("If-None-Match on a write with a value other than *")
        case (nil, .some(let m)):
            guard !m.isEmpty, m != "*" else { throw S3Error.notImplemented("If-Match: * on a write") }
            return .etag(m.trimmingCharacters(in: CharacterSet(charactersIn: "\"")))
        case (.some, .some): throw S3Error.notImplemented("If-Match and If-None-Match together on a write")
        }
    }
}
