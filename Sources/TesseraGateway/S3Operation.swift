// Which S3 operation a request is: from its method, whether it names a bucket and a key,
// and its subresources (the query parameters that select an operation, such as `?acl`,
// as opposed to those that only qualify one, such as `prefix`). A request whose
// combination is not one the gateway serves is NotImplemented (501), never served as the
// operation the path would be without its subresource. docs/SEMANTICS.md lists them.
import NIOHTTP1

enum S3Operation: Equatable {
    // The service.
    case listBuckets
    // Buckets.
    case createBucket, deleteBucket, headBucket
    case getBucketLocation, getBucketVersioning, getBucketAcl, putBucketAcl
    case listObjects, listObjectsV2, listObjectVersions, listMultipartUploads, deleteObjects
    // Objects.
    case getObject, headObject, putObject, deleteObject
    case getObjectAcl, putObjectAcl, getObjectAttributes
    case createMultipartUpload, uploadPart, completeMultipartUpload, abortMultipartUpload, listParts

    /// Every query parameter S3 uses to select an operation. Those the gateway serves appear
    /// in `resolve`; the others are answered NotImplemented.
    static let subresources: Set<String> = [
        "accelerate", "acl", "analytics", "attributes", "cors", "delete", "encryption", "intelligent-tiering", "inventory", "legal-hold",
        "lifecycle", "location", "logging", "metadataConfiguration", "metadataTable", "metrics", "notification", "object-lock",
        "ownershipControls", "policy", "policyStatus", "publicAccessBlock", "renameObject", "replication", "requestPayment", "restore",
        "retention", "select", "session", "tagging", "torrent", "uploadId", "uploads", "versioning", "versions", "website",
    ]

    enum Failure: Error, Equatable {
        /// A combination the gateway does not serve: NotImplemented.
        case notImplemented(String)
        /// A method S3 has no operation for on this resource: MethodNotAllowed.
        case methodNotAllowed
    }

    /// The operation of a request on the service (`bucket` nil), a bucket (`key` nil) or an
    /// object, given its query parameters.
    static func resolve(_ method: HTTPMethod, bucket: Bool, key: Bool, query: [(String, String)]) throws(Failure) -> S3Operation {
        let subs = Set(query.map(\.0).filter { subresources.contains($0) })
        let described = subs.sorted().map { "?" + $0 }.joined()
        func only(_ s: String...) -> Bool { subs == Set(s) }
        let unserved = Failure.notImplemented("\(method.rawValue) \(!bucket ? "on the service" : key ? "on an object" : "on a bucket")\(described.isEmpty ? "" : " with " + described)")
        if !bucket {
            guard method == .GET || method == .HEAD else { throw .methodNotAllowed }
            guard subs.isEmpty, method == .GET else { throw unserved }
            return .listBuckets
        }
        if !key {
            switch method {
            case .GET:
                if subs.isEmpty { return query.contains { $0.0 == "list-type" && $0.1 == "2" } ? .listObjectsV2 : .listObjects }
                if only("location") { return .getBucketLocation }
                if only("versioning") { return .getBucketVersioning }
                if only("versions") { return .listObjectVersions }
                if only("uploads") { return .listMultipartUploads }
                if only("acl") { return .getBucketAcl }
            case .HEAD where subs.isEmpty: return .headBucket
            case .PUT:
                if subs.isEmpty { return .createBucket }
                if only("acl") { return .putBucketAcl }
            case .DELETE where subs.isEmpty: return .deleteBucket
            case .POST where only("delete"): return .deleteObjects
            case .HEAD, .DELETE, .POST: break
            default: throw .methodNotAllowed
            }
            throw unserved
        }
        switch method {
        case .GET:
            if subs.isEmpty { return .getObject }
            if only("uploadId") { return .listParts }
            if only("acl") { return .getObjectAcl }
            if only("attributes") { return .getObjectAttributes }
        case .HEAD where subs.isEmpty: return .headObject
        case .PUT:
            if subs.isEmpty { return .putObject }
            if only("uploadId") { return .uploadPart }
            if only("acl") { return .putObjectAcl }
        case .DELETE:
            if subs.isEmpty { return .deleteObject }
            if only("uploadId") { return .abortMultipartUpload }
        case .POST:
            if only("uploads") { return .createMultipartUpload }
            if only("uploadId") { return .completeMultipartUpload }
        case .HEAD: break
        default: throw .methodNotAllowed
        }
        throw unserved
    }
}
