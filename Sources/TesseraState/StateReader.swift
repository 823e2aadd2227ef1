// Reads of the cluster's keys in etcd that need no session: the map, the sessions, the
// role holders. A process's ClusterState reads through one; `tessera status` and one-shot
// commands make their own.
import Logging
import TesseraClient
import TesseraConfig
import TesseraCore
import TesseraEtcd

public struct StateReader: Sendable {
    public let etcd: EtcdClient
    public let keys: StateKeys

    public init(etcd: EtcdClient, keys: StateKeys) {
        self.etcd = etcd
        self.keys = keys
    }

    /// The map as stored, with the revision that last changed it; nil if there is none yet.
    public func map() async throws -> (map: ClusterMap, revision: Int64)? {
        guard let kv = try await etcd.get(keys.map) else { return nil }
        guard let m = decodeJSON(ClusterMap.self, kv.value) else {
            throw TesseraError(.corrupt, "the cluster map at \(keys.map) in etcd does not decode")
        }
        return (m, kv.modRevision)
    }

    /// Every live session with what it says of itself, by lease id (a key that does not
    /// decode is left out).
    public func sessions() async throws -> [(lease: UInt64, info: SessionInfo)] {
        try await etcd.range(prefix: keys.sessions).kvs.compactMap { kv in
            decodeJSON(SessionInfo.self, kv.value).map { (UInt64(bitPattern: kv.lease), $0) }
        }
    }

    /// The progress of every repair kept, running or done.
    public func repairs() async throws -> [RepairProgress] {
        try await etcd.range(prefix: keys.repairs).kvs.compactMap { decodeJSON(RepairProgress.self, $0.value) }.sorted { $0.server < $1.server }
    }

    /// The holder of every role by name, with the session (lease) it holds it under.
    public func roles() async throws -> [String: (session: UInt64, holder: RoleHolder)] {
        var out: [String: (UInt64, RoleHolder)] = [:]
        for kv in try await etcd.range(prefix: keys.roles).kvs {
            guard let h = decodeJSON(RoleHolder.self, kv.value) else { continue }
            out[String(kv.key.dropFirst(keys.roles.count))] = (UInt64(bitPattern: kv.lease), h)
        }
        return out
    }
}

extension StateReader {
    /// Runs `body` with a reader on an etcd client of its own (no session), and closes the
    /// client however `body` ends: for one-shot commands.
    public static func with<R>(_ settings: ClusterConfig.State, requestTimeout: Duration = .seconds(2), _ body: (StateReader) async throws -> R)
        async throws -> R
    {
        let etcd = try EtcdClient(endpoints: settings.endpoints, requestTimeout: requestTimeout, logger: quietLogger)
        do {
            let r = try await body(StateReader(etcd: etcd, keys: StateKeys(settings)))
            await etcd.close()
            return r
        } catch {
            await etcd.close()
            throw error
        }
    }
}

/// For etcd clients whose errors the caller reports itself (every failed attempt would log).
public let quietLogger = Logger(label: "tessera.etcd", factory: { _ in SwiftLogNoOpLogHandler() })
