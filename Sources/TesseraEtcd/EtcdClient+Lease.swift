// Leases: grant, one keep-alive, revoke.
import TesseraCore

extension EtcdClient {
    /// Grants a lease of `seconds`; etcd may raise a TTL below its minimum, and returns the
    /// TTL it granted.
    public func grantLease(ttl seconds: Int) async throws -> (id: Int64, ttl: Int) {
        guard seconds > 0 else { throw TesseraError(.invalidArgument, "a lease TTL must be positive, not \(seconds)") }
        return try await call("/v3/lease/grant", ["TTL": String(seconds), "ID": "0"]) { reply in
            let id = try reply.int64("ID")
            guard id != 0 else {
                throw TesseraError(.corrupt, "no lease ID in the reply\((try? reply.string("error")).flatMap { $0.map { ": \($0)" } } ?? "")")
            }
            return (id, Int(clamping: try reply.int64("TTL")))
        }
    }

    /// One keep-alive; the remaining TTL in seconds, 0 if the lease is gone (expired or revoked).
    public func keepAlive(_ lease: Int64) async throws -> Int {
        try await keepAlive(lease, timeout: requestTimeout)
    }

    /// One keep-alive that must be answered within `timeout`.
    func keepAlive(_ lease: Int64, timeout: Duration) async throws -> Int {
        // The reply is a stream of one message, {"result":{…}} (or {"error":{…}}).
        try await call("/v3/lease/keepalive", ["ID": String(lease)], timeout: timeout) { reply in
            if let error = try? reply.object("error") {
                throw TesseraError(.io, "keep-alive of lease \(lease) failed: \((try? error.string("message")) ?? nil ?? "no message")")
            }
            guard let result = try reply.object("result") else { throw TesseraError(.corrupt, "no result in the keep-alive reply") }
            return Int(clamping: max(0, try result.int64("TTL")))
        }
    }

    /// Revokes the lease; every key under it is deleted. A lease that is already gone is a
    /// `.notFound` error.
    public func revokeLease(_ lease: Int64) async throws {
        try await revokeLease(lease, timeout: requestTimeout)
    }

    func revokeLease(_ lease: Int64, timeout: Duration) async throws {
        try await call("/v3/lease/revoke", ["ID": String(lease)], timeout: timeout) { _ in }
    }
}
