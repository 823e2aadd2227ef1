// The cluster map, and who serves each index under it (docs/CLUSTER.md, "The cluster map";
// docs/REPLICATION.md). Clients route by it and servers check requests against it, so both
// compute chains with the same code.

/// The cluster map: every server and its state, under one version that every change bumps.
/// Kept in etcd as JSON (docs/CLUSTER.md, "Keys"); every process watches it.
public struct ClusterMap: Sendable, Equatable, Codable {
    public enum ServerState: String, Sendable, Codable {
        /// Serving.
        case online
        /// Its session has been gone for the grace period: requests fail at once.
        case failed
        /// Back (or replaced), and being brought up to date: a member of its index chains that
        /// receives every change, never their head, serving no reads (REPLICATION.md).
        case repairing
    }

    public struct Server: Sendable, Equatable, Codable {
        public var id: Int
        public var address: String
        public var state: ServerState
        /// Wall-clock time of the last state change (ns since 1970), for people reading it.
        public var since: UInt64
        /// The session (etcd lease) the server was admitted under while `online` or
        /// `repairing`; nil in maps written before it was recorded, and for a server
        /// admitted whatever its session.
        public var session: UInt64?
        /// The map version that made it `online`: of the two online replicas of an index,
        /// the one online longer is the head (REPLICATION.md). Nil counts as 0.
        public var onlineSince: UInt64?
        /// Given blank images by `tessera replace`: it holds nothing until a repair has
        /// copied its replicas, so it is never made online any other way. Nil: false.
        public var replaced: Bool?
        /// The process (`SessionInfo.process`) the session was admitted for: a new session
        /// of the same process (renewed after etcd was away) keeps its place, where a new
        /// process is repaired first. Nil: not recorded.
        public var process: UInt64?
        /// Made `online` without a repair, to end a wait in which every repairing server
        /// waited for another (REPLICATION.md, "Two or more back at once"): it may lack
        /// changes it acknowledged before its crash, so in a chain with another online
        /// member it is the tail and serves no reads, and it is walked again (made
        /// `repairing`) once every other server is online. Nil: false.
        public var unrepaired: Bool?
        /// The map version that last took it out of `online` (failed or repairing): of
        /// servers that all wait for each other, the one that left last missed least. Nil
        /// while online, and in maps written before it was recorded.
        public var leftIn: UInt64?

        public init(id: Int, address: String, state: ServerState, since: UInt64, session: UInt64? = nil, onlineSince: UInt64? = nil) {
            self.id = id
            self.address = address
            self.state = state
            self.since = since
            self.session = session
            self.onlineSince = onlineSince
        }
    }

    public var version: UInt64
    public var servers: [Server]

    public init(version: UInt64, servers: [Server]) {
        self.version = version
        self.servers = servers
    }

    public func server(_ id: Int) -> Server? { servers.first { $0.id == id } }
}

/// Where index `fid` lives: its first and second replica, as positions in the id-sorted
/// server list of P servers (`f` and `f+1 mod P`, `f` from the SplitMix64 finaliser over
/// the fid); one position when P is 1.
public func indexReplicas(of fid: Fid, servers p: Int) -> [Int] {
    guard p > 1 else { return [0] }
    var h = fid.hi &* 0x9E37_79B9_7F4A_7C15 ^ fid.lo
    h = (h ^ (h >> 30)) &* 0xBF58_476D_1CE4_E5B9
    h = (h ^ (h >> 27)) &* 0x94D0_49BB_1331_11EB
    h ^= h >> 31
    let first = Int(h % UInt64(p))
    return [first, (first + 1) % p]
}

/// An index's chain under one map version (REPLICATION.md, "Terms").
public struct IndexChain: Sendable, Equatable {
    /// The server that decides and applies changes first; nil if no replica is online.
    public var head: Int?
    /// The other admitted replica (online or repairing), which the head's changes reach.
    public var tail: Int?
    /// The server that answers reads: the tail if online, else the head.
    public var serving: Int?
    /// Replicas that are not members (failed, or not admitted): what they miss is noted.
    public var missing: [Int]

    /// Members other than `server`: where a change `server` heads must also be applied.
    public func others(than server: Int) -> [Int] { [head, tail].compactMap { $0 }.filter { $0 != server } }
}

extension ClusterMap {
    /// The chain of the index whose replicas are the servers `replicas` (ids, first replica
    /// first). A server the map does not list counts as online since version 0 (a map
    /// made before it joined, or none: see `everyoneOnline`). An `unrepaired` online server
    /// ranks after every other online one, and a tail that is unrepaired serves no reads.
    public func chain(replicas: [Int]) -> IndexChain {
        func state(_ id: Int) -> (ServerState, unrepaired: Bool, since: UInt64) {
            guard let s = server(id) else { return (.online, false, 0) }
            return (s.state, s.unrepaired == true, s.onlineSince ?? 0)
        }
        func rank(_ id: Int, _ position: Int) -> (Int, UInt64, Int) {
            let s = state(id)
            return (s.unrepaired ? 1 : 0, s.since, position)
        }
        let online = replicas.enumerated().filter { state($0.element).0 == .online }
            .sorted { rank($0.element, $0.offset) < rank($1.element, $1.offset) }.map(\.element)
        let repairing = replicas.filter { state($0).0 == .repairing }
        let head = online.first
        let tail = head == nil ? nil : (online.dropFirst().first ?? repairing.first)
        let serving = tail.flatMap { state($0).0 == .online && !state($0).unrepaired ? $0 : nil } ?? head
        let members = Set([head, tail].compactMap { $0 })
        return IndexChain(head: head, tail: tail, serving: serving, missing: replicas.filter { !members.contains($0) })
    }

    /// The map a cluster without a state service runs under: version 0, every server online.
    public static func everyoneOnline(_ ids: [Int]) -> ClusterMap {
        ClusterMap(version: 0, servers: ids.sorted().map { Server(id: $0, address: "", state: .online, since: 0) })
    }
}
