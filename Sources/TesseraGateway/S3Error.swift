// S3's error replies: an HTTP status and an XML body naming the error code.
import NIOHTTP1
import TesseraCore
import TesseraS3

struct S3Error: Error {
    var status: HTTPResponseStatus
    var code: String
    var message: String

    init(_ status: HTTPResponseStatus, _ code: String, _ message: String) {
        self.status = status
        self.code = code
        self.message = message
    }

    static func noSuchBucket(_ b: String) -> S3Error { S3Error(.notFound, "NoSuchBucket", "The specified bucket does not exist: \(b)") }
    static func noSuchKey(_ k: String) -> S3Error { S3Error(.notFound, "NoSuchKey", "The specified key does not exist.") }
    static func noSuchUpload() -> S3Error {
        S3Error(.notFound, "NoSuchUpload", "The specified upload does not exist. The upload ID may be invalid, or the upload may have been aborted or completed.")
    }
    static func accessDenied(_ m: String = "Access Denied") -> S3Error { S3Error(.forbidden, "AccessDenied", m) }
    static func signatureMismatch(_ m: String) -> S3Error { S3Error(.forbidden, "SignatureDoesNotMatch", m) }
    static func invalidArgument(_ m: String) -> S3Error { S3Error(.badRequest, "InvalidArgument", m) }
    static func malformedXML(_ m: String = "The XML you provided was not well-formed or did not validate against our published schema.") -> S3Error {
        S3Error(.badRequest, "MalformedXML", m)
    }
    static func incompleteBody(_ m: String) -> S3Error { S3Error(.badRequest, "IncompleteBody", m) }
    static func badDigest(_ m: String) -> S3Error { S3Error(.badRequest, "BadDigest", m) }
    static func notImplemented(_ what: String) -> S3Error { S3Error(.notImplemented, "NotImplemented", "\(what) is not implemented") }
    static let invalidRange = S3Error(.rangeNotSatisfiable, "InvalidRange", "The requested range is not satisfiable")
    static let preconditionFailed = S3Error(.preconditionFailed, "PreconditionFailed", "At least one of the pre-conditions you specified did not hold")

    /// A conditional write that did not hold.
    init(_ failure: S3Store.ConditionFailure, key: String) {
        switch failure {
        case .preconditionFailed: self = .preconditionFailed
        case .noSuchKey: self = .noSuchKey(key)
        case .conflict:
            self.init(.conflict, "ConditionalRequestConflict", "A conflicting operation occurred. If using PutObject you can retry the request. If using multipart upload you should initiate another CompleteMultipartUpload request.")
        }
    }

    /// The S3 error for an error from the layers below.
    static func from(_ error: Error) -> S3Error {
        if let e = error as? S3Error { return e }
        if let e = error as? TesseraError {
            switch e.code {
            case .noSpace: return S3Error(.insufficientStorage, "InsufficientStorage", "Not enough space on the servers: \(e.message)")
            case .tooLarge: return S3Error(.badRequest, "EntityTooLarge", e.message)
            case .invalidArgument: return S3Error(.badRequest, "InvalidArgument", e.message)
            case .closed, .timedOut, .busy: return S3Error(.serviceUnavailable, "ServiceUnavailable", e.message)
            default: return S3Error(.internalServerError, "InternalError", e.message)
            }
        }
        return S3Error(.internalServerError, "InternalError", "\(error)")
    }
}
