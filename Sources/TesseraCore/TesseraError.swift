// The one error type of Tessera: a code that maps to an errno, a message, and a cause.
#if canImport(Glibc)
import Glibc
#endif

/// An error with a stable code, a human-readable message and an optional cause.
/// Converted to an errno, an RPC status or an S3 error only at the edges.
public struct TesseraError: Error, CustomStringConvertible, Sendable, Equatable {
    public enum Code: String, Sendable, Equatable {
        case notFound, exists, invalidArgument, noSpace, io, corrupt, tooLarge
        case unsupportedVersion, closed, checksum, timedOut, notEmpty, busy, internalError, permissionDenied
        /// A compare-and-put found another value than the one expected.
        case conflict
        /// A server's cluster map and the request's disagree on who serves it: read the map
        /// again and retry (docs/REPLICATION.md).
        case staleMap
    }

    public var code: Code
    public var message: String
    /// The OS error number behind an `.io` error, if there was one.
    public var osErrno: Int32?

    public init(_ code: Code, _ message: String, osErrno: Int32? = nil) {
        self.code = code
        self.message = message
        self.osErrno = osErrno
    }

    public var description: String { message }

    /// The errno a POSIX caller should see for this error.
    public var errno: Int32 {
        switch code {
        case .notFound: return ENOENT
        case .exists: return EEXIST
        case .invalidArgument: return EINVAL
        case .noSpace: return ENOSPC
        case .io, .corrupt, .checksum, .internalError: return osErrno ?? EIO
        case .tooLarge: return E2BIG
        case .unsupportedVersion: return EPROTO
        // A server that cannot be reached, or more servers down than the layout tolerates:
        // an I/O error, as a local disk that failed gives (docs/SEMANTICS.md, tenet 8).
        case .closed: return EIO
        case .timedOut: return ETIMEDOUT
        case .notEmpty: return ENOTEMPTY
        case .busy: return EBUSY
        case .permissionDenied: return EACCES
        case .conflict: return EAGAIN
        case .staleMap: return ESTALE
        }
    }
}
