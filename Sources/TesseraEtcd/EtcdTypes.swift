// The values the etcd client hands out and takes: keys with their revisions, transaction
// compares and operations, and watch events.

/// One key as etcd stores it. Revisions are etcd's store-wide counters; `version` counts
/// the changes since the key was created; `lease` is 0 for a key under no lease.
public struct EtcdKeyValue: Sendable, Equatable {
    public var key: String
    public var value: [UInt8]
    public var createRevision: Int64
    public var modRevision: Int64
    public var version: Int64
    public var lease: Int64

    public init(key: String, value: [UInt8], createRevision: Int64 = 0, modRevision: Int64 = 0, version: Int64 = 0, lease: Int64 = 0) {
        self.key = key
        self.value = value
        self.createRevision = createRevision
        self.modRevision = modRevision
        self.version = version
        self.lease = lease
    }
}

/// A condition of a transaction, all of which must hold for its `then` branch to run.
/// A key that does not exist has create and mod revision 0, lease 0, and fails any
/// `.value` compare.
public enum EtcdCompare: Sendable {
    case createRevision(String, equals: Int64)
    case modRevision(String, equals: Int64)
    case value(String, equals: [UInt8])
    case leaseOf(String, equals: Int64)
}

/// One operation of a transaction branch.
public enum EtcdOp: Sendable {
    case put(String, [UInt8], lease: Int64 = 0)
    case delete(String)
    case get(String)
    case deletePrefix(String)
}

/// What a transaction did: which branch ran, the store revision after it, and the result
/// of each `.get` of that branch, in order (an empty list for a key that is absent).
public struct EtcdTxnResult: Sendable {
    public var succeeded: Bool
    public var revision: Int64
    public var gets: [[EtcdKeyValue]]

    public init(succeeded: Bool, revision: Int64, gets: [[EtcdKeyValue]]) {
        self.succeeded = succeeded
        self.revision = revision
        self.gets = gets
    }
}

/// One change seen by a watch. For a delete only `kv.key` and `kv.modRevision` (the
/// revision of the delete) are set.
public struct EtcdWatchEvent: Sendable {
    public enum Kind: Sendable { case put, delete }
    public var kind: Kind
    public var kv: EtcdKeyValue

    public init(kind: Kind, kv: EtcdKeyValue) {
        self.kind = kind
        self.kv = kv
    }
}
