// Encoding of requests to, and decoding of replies from, etcd's v3 JSON gateway (the
// format is written down at the top of EtcdClient.swift).
import TesseraCore

enum EtcdWire {
    /// The end of the range of keys that start with `prefix` (etcd's rule: the prefix with
    /// its last byte below 0xff incremented and what follows dropped; "\0", all keys, if
    /// there is none). Returns the key to start from too: "\0" for the empty prefix.
    static func prefixRange(_ prefix: String) -> (key: [UInt8], end: [UInt8]) {
        var end = Array(prefix.utf8)
        guard !end.isEmpty else { return ([0], [0]) }
        while let last = end.last {
            if last < 0xff {
                end[end.count - 1] = last + 1
                return (Array(prefix.utf8), end)
            }
            end.removeLast()
        }
        return (Array(prefix.utf8), [0])
    }

    /// A RangeRequest, DeleteRangeRequest or watch create request body for one key or a prefix.
    static func range(_ key: String, prefix: Bool) -> [String: Any] {
        guard prefix else { return ["key": Array(key.utf8).base64] }
        let (start, end) = prefixRange(key)
        return ["key": start.base64, "range_end": end.base64]
    }

    static func put(_ key: String, _ value: [UInt8], lease: Int64) -> [String: Any] {
        var body: [String: Any] = ["key": Array(key.utf8).base64, "value": value.base64]
        if lease != 0 { body["lease"] = String(lease) }
        return body
    }

    /// A key-value as etcd sends it (mvccpb.KeyValue): absent fields are zero.
    static func keyValue(_ o: JSONObject) throws -> EtcdKeyValue {
        EtcdKeyValue(
            key: String(decoding: try o.bytes("key"), as: UTF8.self), value: try o.bytes("value"),
            createRevision: try o.int64("create_revision"), modRevision: try o.int64("mod_revision"),
            version: try o.int64("version"), lease: try o.int64("lease"))
    }

    /// The store revision a reply was made at (its "header").
    static func revision(_ reply: JSONObject) throws -> Int64 {
        try reply.object("header")?.int64("revision") ?? 0
    }

    static func compare(_ c: EtcdCompare) -> [String: Any] {
        switch c {
        case .createRevision(let key, let r):
            return ["result": "EQUAL", "target": "CREATE", "key": Array(key.utf8).base64, "create_revision": String(r)]
        case .modRevision(let key, let r):
            return ["result": "EQUAL", "target": "MOD", "key": Array(key.utf8).base64, "mod_revision": String(r)]
        case .value(let key, let v):
            return ["result": "EQUAL", "target": "VALUE", "key": Array(key.utf8).base64, "value": v.base64]
        case .leaseOf(let key, let lease):
            return ["result": "EQUAL", "target": "LEASE", "key": Array(key.utf8).base64, "lease": String(lease)]
        }
    }

    static func op(_ op: EtcdOp) -> [String: Any] {
        switch op {
        case .put(let key, let value, let lease): return ["request_put": put(key, value, lease: lease)]
        case .delete(let key): return ["request_delete_range": range(key, prefix: false)]
        case .get(let key): return ["request_range": range(key, prefix: false)]
        case .deletePrefix(let prefix): return ["request_delete_range": range(prefix, prefix: true)]
        }
    }

    static func txn(_ compares: [EtcdCompare], _ success: [EtcdOp], _ failure: [EtcdOp]) -> [String: Any] {
        ["compare": compares.map(compare), "success": success.map(op), "failure": failure.map(op)]
    }

    /// A TxnResponse: one response per operation of the branch taken, in order; the ranges
    /// among them are the gets.
    static func txnResult(_ reply: JSONObject, success: [EtcdOp], failure: [EtcdOp]) throws -> EtcdTxnResult {
        let succeeded = try reply.bool("succeeded")
        let ops = succeeded ? success : failure
        let responses = try reply.objects("responses")
        guard responses.count == ops.count else {
            throw TesseraError(.corrupt, "the transaction ran \(ops.count) operations but the reply has \(responses.count) results")
        }
        var gets: [[EtcdKeyValue]] = []
        for (op, response) in zip(ops, responses) {
            guard case .get = op else { continue }
            guard let range = try response.object("response_range") else {
                throw TesseraError(.corrupt, "a get of the transaction has no response_range in the reply")
            }
            gets.append(try range.objects("kvs").map(keyValue))
        }
        return EtcdTxnResult(succeeded: succeeded, revision: try revision(reply), gets: gets)
    }

    /// A gateway error reply ({"error": …, "code": gRPC code, "message": …}), if `reply` is one.
    static func gatewayError(_ reply: JSONObject) -> (message: String, code: Int64)? {
        guard reply.has("code"), let code = try? reply.int64("code") else { return nil }
        guard let message = (try? reply.string("message")) ?? (try? reply.string("error")) ?? nil else { return nil }
        return (message, code)
    }

    /// The Tessera error code for a gRPC status code etcd answered with.
    static func errorCode(grpc code: Int64) -> TesseraError.Code {
        switch code {
        case 3, 11: return .invalidArgument  // INVALID_ARGUMENT; OUT_OF_RANGE (compacted or future revision)
        case 4: return .timedOut  // DEADLINE_EXCEEDED
        case 5: return .notFound  // NOT_FOUND (a lease)
        case 6: return .exists  // ALREADY_EXISTS
        case 7, 16: return .permissionDenied  // PERMISSION_DENIED, UNAUTHENTICATED
        case 8: return .noSpace  // RESOURCE_EXHAUSTED (quota, too many requests)
        case 9: return .busy  // FAILED_PRECONDITION
        case 12: return .unsupportedVersion  // UNIMPLEMENTED
        default: return .io  // UNAVAILABLE (no leader), INTERNAL, UNKNOWN, …
        }
    }
}
