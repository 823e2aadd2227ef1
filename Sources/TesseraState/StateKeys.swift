// The keys Tessera keeps in etcd and the JSON records under them (docs/CLUSTER.md, "Keys in
// etcd"). Every key starts with the cluster's prefix, `/tessera/NAME/`:
//
//   PREFIX sessions/<lease id, 16 hex digits>   SessionInfo, under that lease: gone with it
//   PREFIX map                                  ClusterMap (TesseraClient): version, servers, states
//   PREFIX roles/<role>                         RoleHolder, under the holder's lease: an election
//
// Values are JSON (UTF-8) so that `etcdctl get --prefix /tessera/` reads as text. Fields
// added later are optional; a record that does not decode is skipped, never trusted.
import Foundation
import TesseraClient
import TesseraConfig
import TesseraCore

/// The version every process reports in its session.
public let tesseraVersion = "0.19.0"

/// What kind of process holds a session.
public enum ProcessKind: String, Sendable, Codable {
    case server, gateway, mount
    /// A command that runs once (a benchmark's in-process store, a debug tool).
    case tool
}

/// The value of a session key: who the process is and what it serves.
public struct SessionInfo: Sendable, Codable, Equatable {
    public var kind: ProcessKind
    public var host: String
    public var pid: Int32
    public var version: String
    /// Wall-clock start time, ns since 1970 (for people: no decision reads it).
    public var started: UInt64
    /// What it serves, in words: "127.0.0.1:7100", "http://127.0.0.1:9000", "tessera on /mnt".
    public var serves: String
    /// The server's id, for servers.
    public var server: Int?
    /// For a server: its last run ended cleanly, every change it had sent down a stream
    /// applied by its peer and everything logged. A server back after a clean stop keeps
    /// its place in the map; any other is repaired first (REPLICATION.md, "Repair").
    public var stoppedCleanly: Bool?
    /// A number drawn as the process starts, the same in every session it takes (a session
    /// renewed after etcd was away is the same process): nil from builds before it.
    public var process: UInt64?

    public init(kind: ProcessKind, serves: String, server: Int? = nil, stoppedCleanly: Bool? = nil) {
        self.kind = kind
        var name = [CChar](repeating: 0, count: 256)
        gethostname(&name, name.count - 1)
        host = String(decoding: name.prefix(while: { $0 != 0 }).map { UInt8(bitPattern: $0) }, as: UTF8.self)
        pid = getpid()
        version = tesseraVersion
        started = wallClockNanoseconds()
        self.serves = serves
        self.server = server
        self.stoppedCleanly = stoppedCleanly
        process = UInt64.random(in: 1...UInt64.max)
    }
}

/// The value of a role key: which process holds it (its session is the key's lease).
public struct RoleHolder: Sendable, Codable, Equatable {
    public var kind: ProcessKind
    public var host: String
    public var pid: Int32

    public init(info: SessionInfo) {
        kind = info.kind
        host = info.host
        pid = info.pid
    }
}

/// The progress of one server's repair, at `repairs/<id>` (decimal id): written by the HA
/// holder after every step, read by the next holder to go on where it stopped, and by
/// `tessera status` and `tessera repair`. Kept when done, until the server's next repair.
public struct RepairProgress: Sendable, Codable, Equatable {
    /// The server repaired, and the session it was made `repairing` under: a repair of
    /// another session (it restarted meanwhile) starts over.
    public var server: Int
    public var session: UInt64
    /// The map version the repair started under: a repair cut short goes on only under the
    /// same map (any change of a member's state can move heads, so it starts over).
    public var mapVersion: UInt64
    /// Servers whose walks are finished, the one walking now, and where it is: the last
    /// index it walked (`Fid` text).
    public var walked: [Int] = []
    public var walker: Int?
    public var after: String?
    /// Totals: indexes walked, records compared, records copied.
    public var indexes = 0
    public var records: UInt64 = 0
    public var copied: UInt64 = 0
    /// Wall-clock nanoseconds: when it started, when a step last ended, and when it was
    /// done (nil while it runs).
    public var started: UInt64
    public var updated: UInt64
    public var done: UInt64?
    /// The object data's repair, once the indexes are walked (nil until it starts).
    public var data: DataProgress?

    /// Where a repair of object data stands (REPLICATION.md, "Object data").
    public struct DataProgress: Sendable, Codable, Equatable {
        /// Objects looked at, parity groups compared, units rewritten on the server, cobs
        /// made or deleted there, bytes read from the others and written to it.
        public var totals = DataRepairTotals()
        /// About how many bytes the walk will read in all: the data the other servers hold
        /// (nil if they did not say), for the ETA.
        public var estimate: UInt64?
        /// Wall-clock nanoseconds: started, last updated, done (nil while it runs).
        public var started: UInt64
        public var updated: UInt64
        public var done: UInt64?

        public init(now: UInt64) {
            started = now
            updated = now
        }

        /// Bytes read per second so far.
        public var rate: Double {
            let seconds = Double((done ?? updated) &- started) / 1e9
            return seconds > 0 ? Double(totals.bytesRead) / seconds : 0
        }

        /// Seconds left at the rate so far, while running and once there is a rate.
        public var eta: Int? {
            guard done == nil, let estimate, rate > 0 else { return nil }
            return Int(Double(estimate > totals.bytesRead ? estimate - totals.bytesRead : 0) / rate)
        }
    }

    public init(server: Int, session: UInt64, mapVersion: UInt64, now: UInt64) {
        self.server = server
        self.session = session
        self.mapVersion = mapVersion
        started = now
        updated = now
    }

    /// Records compared per second so far.
    public var rate: Double {
        let seconds = Double((done ?? updated) &- started) / 1e9
        return seconds > 0 ? Double(records) / seconds : 0
    }
}

/// Key names of one cluster.
public struct StateKeys: Sendable {
    public let prefix: String

    public init(_ state: ClusterConfig.State) { prefix = state.prefix }

    public var sessions: String { prefix + "sessions/" }
    public func session(_ lease: Int64) -> String { sessions + hex16(UInt64(bitPattern: lease)) }
    public var map: String { prefix + "map" }
    public var roles: String { prefix + "roles/" }
    public func role(_ name: String) -> String { roles + name }
    public var repairs: String { prefix + "repairs/" }
    public func repair(_ server: Int) -> String { repairs + String(server) }

    /// The roles held in a cluster: one process at a time each.
    public static let haRole = "ha"
    public static let sweeperRole = "sweeper"
}

func hex16(_ v: UInt64) -> String {
    let s = String(v, radix: 16)
    return String(repeating: "0", count: max(0, 16 - s.count)) + s
}

let stateEncoder: JSONEncoder = {
    let e = JSONEncoder()
    e.outputFormatting = [.sortedKeys]
    return e
}()

func encodeJSON<T: Encodable>(_ value: T) -> [UInt8] {
    // Encoding these plain records cannot fail.
    (try? Array(stateEncoder.encode(value))) ?? []
}

func decodeJSON<T: Decodable>(_ type: T.Type, _ bytes: [UInt8]) -> T? {
    try? JSONDecoder().decode(type, from: Data(bytes))
}
