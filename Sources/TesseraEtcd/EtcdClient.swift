// A client of etcd v3 (the cluster state service) over etcd's JSON gateway, on plain HTTP/1.1.
//
// Wire format relied on (etcd 3.4's grpc-gateway; checked against etcd 3.4.23):
//
//   GET  /version              -> {"etcdserver":"3.4.23","etcdcluster":"3.4.0"}
//   POST /v3/kv/range          {"key","range_end"?}                -> {"header","kvs":[KV],"count"}
//   POST /v3/kv/put            {"key","value","lease"?}            -> {"header"}
//   POST /v3/kv/deleterange    {"key","range_end"?}                -> {"header","deleted"}
//   POST /v3/kv/txn            {"compare":[C],"success":[Op],"failure":[Op]}
//                                  -> {"header","succeeded","responses":[{"response_range"|
//                                      "response_put"|"response_delete_range": {…}}]}
//   POST /v3/lease/grant       {"TTL","ID":0}                      -> {"header","ID","TTL"}
//   POST /v3/lease/keepalive   {"ID"}                -> stream: {"result":{"header","ID","TTL"}}
//   POST /v3/lease/revoke      {"ID"}                              -> {"header"}
//   POST /v3/watch             {"create_request":{"key","range_end"?,"start_revision"?}}
//                                  -> stream: {"result":{"header","created"?,"canceled"?,
//                                      "compact_revision"?,"events":[{"type"?,"kv"}]}} …
//
//   header = {"cluster_id","member_id","revision","raft_term"}: every etcd reply has one,
//            which tells etcd from another JSON server. "revision" is the store's revision.
//   KV     = {"key","create_revision","mod_revision","version","value","lease"}
//   C      = {"result":"EQUAL","target":"CREATE"|"MOD"|"VALUE"|"LEASE","key",
//             and the target's field: "create_revision"|"mod_revision"|"value"|"lease"}
//   Op     = {"request_put":{…}} | {"request_range":{…}} | {"request_delete_range":{…}}
//
// - Field names are the protobuf names (snake_case; ID and TTL as spelled in rpc.proto).
// - Keys and values (and range ends) are base64 of the bytes.
// - int64 fields come back as JSON strings ("revision":"5"); we send them as strings too.
// - Fields at their default (0, false, empty, PUT) are left out of replies: absent means zero.
// - A range end of "\0" means "every key from key on"; a prefix's end is the prefix with its
//   last byte below 0xff incremented (EtcdWire.prefixRange).
// - Errors: a non-200 status with {"error":msg,"code":gRPC code,"message":msg}, e.g.
//   404 {"code":5,…} for a lease not found, 400 {"code":11,…} for a compacted revision.
// - Streams (watch, keep-alive) are chunked responses carrying one JSON object per message,
//   each followed by "\n": {"result":{…}}, or {"error":{…}} when the stream fails. Chunk
//   boundaries are not message boundaries (JSONStreamSplitter). A keep-alive stream ends
//   after one result because our request body ends after one request; a watch stream
//   stays open. A watch from a compacted revision answers "created" and then
//   "canceled":true with "compact_revision" set.
import Logging
import NIOConcurrencyHelpers
import NIOHTTP1
import TesseraCore

/// A client of an etcd v3 cluster. Calls go to the endpoints in the order given; one that
/// fails is tried last for a while. Every call has a deadline (the request timeout), and
/// every error names the endpoint(s) it tried. Each call uses a connection of its own.
public final class EtcdClient: Sendable {
    let endpointSet: EtcdEndpoints
    let requestTimeout: Duration
    let connectTimeout: Duration
    let logger: Logger
    private let state = NIOLockedValueBox(State())
    private struct State {
        var closed = false
        var nextWatch: UInt64 = 0
        var watches: [UInt64: Task<Void, Never>] = [:]
    }

    /// Endpoints like "127.0.0.1:2379" or "http://127.0.0.1:2379"; https is refused (not
    /// supported). `connectTimeout` bounds each connection attempt, `requestTimeout` each
    /// call as a whole (all its attempts).
    public init(endpoints: [String], requestTimeout: Duration = .seconds(3), connectTimeout: Duration = .seconds(1), logger: Logger = Logger(label: "tessera.etcd")) throws {
        guard !endpoints.isEmpty else { throw TesseraError(.invalidArgument, "no etcd endpoint given") }
        guard requestTimeout > .zero, connectTimeout > .zero else { throw TesseraError(.invalidArgument, "etcd timeouts must be positive") }
        endpointSet = EtcdEndpoints(try endpoints.map(EtcdEndpoint.init(parsing:)))
        self.requestTimeout = requestTimeout
        self.connectTimeout = connectTimeout
        self.logger = logger
    }

    /// The endpoints, as "host:port".
    public var endpoints: [String] { endpointSet.all.map(\.description) }

    /// Fails later calls with `.closed` and ends every watch.
    public func close() async {
        let watches = state.withLockedValue { s in
            s.closed = true
            defer { s.watches = [:] }
            return Array(s.watches.values)
        }
        for task in watches { task.cancel() }
        for task in watches { await task.value }
    }

    func checkOpen() throws {
        if state.withLockedValue({ $0.closed }) { throw TesseraError(.closed, "the etcd client is closed") }
    }

    /// Keeps a watch's task until it ends, so `close` can end it; false if already closed.
    func register(watch task: Task<Void, Never>) -> UInt64? {
        state.withLockedValue { s in
            guard !s.closed else { return nil }
            s.nextWatch += 1
            s.watches[s.nextWatch] = task
            return s.nextWatch
        }
    }

    func unregister(watch id: UInt64) { state.withLockedValue { _ = $0.watches.removeValue(forKey: id) } }

    /// Watches running (for tests).
    var watchCount: Int { state.withLockedValue { $0.watches.count } }
}

// MARK: - Calls

extension EtcdClient {
    /// Sends `body` to `path` at the first endpoint that answers as etcd does, within
    /// `timeout` (the request timeout by default), and decodes the reply.
    func call<T>(
        _ path: String, _ body: [String: Any]?, method: HTTPMethod = .POST, timeout: Duration? = nil,
        decode: (JSONObject) throws -> T
    ) async throws -> T {
        try checkOpen()
        let bytes = body.map(JSONObject.encode)
        let timeout = timeout ?? requestTimeout
        let deadline = ContinuousClock.now + timeout
        var failures: [TesseraError] = []
        let order = endpointSet.ordered()
        for (n, i) in order.enumerated() {
            let endpoint = endpointSet.all[i]
            do {
                let (status, reply) = try await HTTPConnection.exchange(
                    endpoint, method, path, body: bytes, connectTimeout: connectTimeout, timeout: timeout, deadline: deadline)
                let result = try interpret(endpoint, path, status, reply, decode)
                endpointSet.succeeded(i)
                return result
            } catch let failure as EndpointFailure {
                endpointSet.failed(i)
                failures.append(failure.error)
                guard failure.retryable, ContinuousClock.now < deadline, n + 1 < order.count else { break }
                logger.warning("etcd call failed, trying the next endpoint", metadata: ["error": "\(failure.error)"])
            }
        }
        throw Self.combined(failures)
    }

    /// The reply of one endpoint as a result, an etcd error, or a failure saying it is not etcd.
    private func interpret<T>(_ endpoint: EtcdEndpoint, _ path: String, _ status: Int, _ body: [UInt8], _ decode: (JSONObject) throws -> T) throws -> T {
        let notEtcd = { (why: String) in
            EndpointFailure(error: TesseraError(.unsupportedVersion, "\(endpoint) is not an etcd v3 endpoint: \(why)"), retryable: true)
        }
        guard let reply = try? JSONObject(parsing: body) else {
            throw notEtcd("\(path) answered HTTP \(status) with \(JSONObject.preview(body))")
        }
        if let (message, code) = EtcdWire.gatewayError(reply) {
            throw TesseraError(EtcdWire.errorCode(grpc: code), "etcd at \(endpoint): \(path) failed: \(message) (code \(code))")
        }
        // Every etcd reply has a header; a streamed one (keep-alive) wraps it in a result.
        let streamed = path == "/v3/lease/keepalive" && (reply.has("result") || reply.has("error"))
        guard status == 200, path == "/version" || reply.has("header") || streamed else {
            throw notEtcd("\(path) answered HTTP \(status) with \(JSONObject.preview(body))")
        }
        do {
            return try decode(reply)
        } catch let e as NotEtcd {
            throw notEtcd(e.why)
        } catch {
            throw EndpointFailure(error: TesseraError(.corrupt, "etcd at \(endpoint): unexpected reply to \(path): \(error)"), retryable: false)
        }
    }

    /// One endpoint's error as it is; several joined, each naming its endpoint.
    static func combined(_ failures: [TesseraError]) -> TesseraError {
        guard let first = failures.first else { return TesseraError(.internalError, "no etcd endpoint to try") }
        guard failures.count > 1 else { return first }
        let code = failures.allSatisfy { $0.code == first.code } ? first.code : .io
        return TesseraError(code, "no etcd endpoint answered: " + failures.map(\.message).joined(separator: "; "))
    }
}

// MARK: - Keys

extension EtcdClient {
    /// etcd's version (as "3.4.23"). Throws a clear error naming the endpoint when nothing
    /// answers, or when what answers is not etcd v3 (a plain HTTP server, a wrong port).
    public func version() async throws -> String {
        try await call("/version", nil, method: .GET) { reply in
            guard let version = try reply.string("etcdserver") else {
                throw NotEtcd(why: "/version answered \(reply.has("etcdcluster") ? "no etcdserver version" : "JSON without an etcd version")")
            }
            guard let major = Int(version.prefix { $0 != "." }), major >= 3 else {
                throw NotEtcd(why: "it runs etcd \(version)")
            }
            return version
        }
    }

    /// The key, or nil if it is absent.
    public func get(_ key: String) async throws -> EtcdKeyValue? {
        try await call("/v3/kv/range", EtcdWire.range(key, prefix: false)) { reply in
            try reply.objects("kvs").first.map(EtcdWire.keyValue)
        }
    }

    /// Every key that starts with `prefix`, in key order, and the revision they were read at.
    public func range(prefix: String) async throws -> (kvs: [EtcdKeyValue], revision: Int64) {
        try await call("/v3/kv/range", EtcdWire.range(prefix, prefix: true)) { reply in
            (try reply.objects("kvs").map(EtcdWire.keyValue), try EtcdWire.revision(reply))
        }
    }

    /// Puts the key (under `lease` unless 0) and returns the revision of the change.
    @discardableResult
    public func put(_ key: String, _ value: [UInt8], lease: Int64 = 0) async throws -> Int64 {
        try await call("/v3/kv/put", EtcdWire.put(key, value, lease: lease), decode: EtcdWire.revision)
    }

    /// Deletes the key; returns how many keys went (0 or 1).
    @discardableResult
    public func delete(_ key: String) async throws -> Int64 {
        try await call("/v3/kv/deleterange", EtcdWire.range(key, prefix: false)) { try $0.int64("deleted") }
    }

    /// Deletes every key that starts with `prefix`; returns how many went.
    @discardableResult
    public func delete(prefix: String) async throws -> Int64 {
        try await call("/v3/kv/deleterange", EtcdWire.range(prefix, prefix: true)) { try $0.int64("deleted") }
    }

    /// Runs `success` if every compare holds, else `failure`, atomically.
    public func txn(if compares: [EtcdCompare], then success: [EtcdOp], else failure: [EtcdOp] = []) async throws -> EtcdTxnResult {
        try await call("/v3/kv/txn", EtcdWire.txn(compares, success, failure)) { reply in
            try EtcdWire.txnResult(reply, success: success, failure: failure)
        }
    }
}

/// A decoder's finding that what answered is not etcd (the next endpoint may be).
struct NotEtcd: Error {
    var why: String
}
