// The cluster file: every process's address and images, the cluster secret, the layout.
//
// TOML (docs/CLUSTER.md):
//
//   secret = "at least 16 characters, shared by every process of the cluster"
//
//   [layout]
//   data_units = 2        # N
//   parity_units = 1      # K
//   unit_size = "1M"
//
//   [[server]]
//   id = 0
//   address = "127.0.0.1:7100"
//   metrics = "127.0.0.1:9100"    # optional: Prometheus endpoint
//   meta = "0/meta.img"           # relative paths are relative to the cluster file
//   meta_size = "1G"
//   data = "0/data.img"
//   data_size = "8G"
//
//   [state]                       # the cluster state service (etcd v3), docs/CLUSTER.md
//   endpoints = ["127.0.0.1:2379"]
//   name = "prod"                 # key prefix /tessera/NAME/ (default: from the secret)
//   ttl = "5s"                    # session lease
//   grace = "5s"                  # a server's session gone this long: failed in the map
//   sweep_interval = "10s"
//
//   [s3]                          # optional: the S3 gateway
//   region = "us-east-1"
//   public_read = ["www"]         # buckets anyone may read without signing
//   domain = "s3.example.com"     # virtual-hosted style too: Host BUCKET.s3.example.com
//   max_connections = 4096        # open connections at most; more are closed at accept
//   max_new_connections = 256     # of them, at most this many that sent no request yet
//   head_timeout = "10s"          # a new connection's first request head is complete by then
//   idle_timeout = "30s"          # a kept-alive connection's next request head, likewise
//   [[s3.credentials]]
//   access_key = "TESSERA..."
//   secret_key = "..."
import Foundation
import TOMLKit
import TesseraCore

/// A host and port.
public struct Endpoint: Sendable, Equatable, CustomStringConvertible {
    public var host: String
    public var port: Int

    public init(host: String, port: Int) {
        self.host = host
        self.port = port
    }

    /// Parses `HOST:PORT` (IPv6 hosts in brackets: `[::1]:7100`).
    public init?(_ text: String) {
        guard let colon = text.lastIndex(of: ":") else { return nil }
        var host = String(text[..<colon])
        if host.hasPrefix("[") && host.hasSuffix("]") { host = String(host.dropFirst().dropLast()) }
        guard !host.isEmpty, let port = Int(text[text.index(after: colon)...]), (1...65535).contains(port) else { return nil }
        self.init(host: host, port: port)
    }

    public var description: String { host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)" }
}

public struct ClusterConfig: Sendable, Equatable {
    public struct Server: Sendable, Equatable {
        public var id: Int
        public var address: Endpoint
        public var metrics: Endpoint?
        public var metaPath: String
        public var metaSize: UInt64
        public var dataPath: String
        public var dataSize: UInt64
    }

    public struct Layout: Sendable, Equatable {
        public var dataUnits: Int
        public var parityUnits: Int
        public var unitSize: Int

        public init(dataUnits: Int, parityUnits: Int, unitSize: Int) {
            self.dataUnits = dataUnits
            self.parityUnits = parityUnits
            self.unitSize = unitSize
        }
    }

    public struct S3: Sendable, Equatable {
        public var region: String = "us-east-1"
        /// Access key id → secret access key.
        public var credentials: [String: String] = [:]
        public var publicRead: Set<String> = []
        /// Host names under which a request's bucket is in the Host header (virtual-hosted
        /// style: `BUCKET.DOMAIN`) beside path style; empty: path style only.
        public var domains: [String] = []
        /// The gateway's bounds on connections (HTTPServer.swift, "Connection limits").
        public var limits = GatewayLimits()

        public init() {}
    }

    /// What the S3 gateway lets a connection hold before it has proven anything, and once
    /// it is idle.
    public struct GatewayLimits: Sendable, Equatable {
        /// Open connections at most; one past it is closed as it is accepted.
        public var maxConnections = 4096
        /// Connections that have not sent a complete request head yet, at most.
        public var maxNewConnections = 256
        /// A new connection's first request head must be complete this long after it opens.
        public var headTimeout: Duration = .seconds(10)
        /// A kept-alive connection's next request head must be complete this long after the
        /// last response ended.
        public var idleTimeout: Duration = .seconds(30)
        /// A request head (request line and headers) is at most this many bytes.
        public var maxHeadBytes = 64 << 10
        /// After a response that ends a connection (a refused request whose body is not
        /// read), or while a small unread body is drained, the client has this long.
        public var lingerTimeout: Duration = .seconds(5)

        public init() {}
    }

    /// The cluster state service (etcd): who is alive, the cluster map, one-per-cluster roles.
    public struct State: Sendable, Equatable {
        /// etcd client endpoints, `HOST:PORT` or `http://HOST:PORT`.
        public var endpoints: [String]
        /// Every key of this cluster starts with `/tessera/NAME/`.
        public var name: String
        /// Lease time to live of every process's session.
        public var ttl: Duration = .seconds(5)
        /// How long a server's session must be gone before the map says it failed.
        public var grace: Duration = .seconds(5)
        /// How often the cluster's sweeper looks for data no one owns.
        public var sweepInterval: Duration = .seconds(10)

        public init(endpoints: [String], name: String) {
            self.endpoints = endpoints
            self.name = name
        }

        /// The prefix of every key of this cluster in etcd.
        public var prefix: String { "/tessera/\(name)/" }
    }

    /// The file this configuration came from.
    public var path: String
    public var secret: String
    public var layout: Layout
    public var servers: [Server]
    public var s3 = S3()
    /// Nil when the file has no `[state]`: servers then run without a session, and the
    /// processes that decide data lifetimes (gateway, mount, object commands) refuse to start.
    public var state: State?

    /// The `[state]` section, or an error saying why a process that decides lifetimes needs it.
    public func requireState(for what: String) throws -> State {
        guard let state else {
            throw TesseraError(.invalidArgument, "\(path): no [state] section: \(what) needs the cluster state service (etcd) to know which processes are alive (docs/CLUSTER.md)")
        }
        return state
    }

    /// The server with id `id`, or an error naming the ids the file has.
    public func server(_ id: Int) throws -> Server {
        guard let s = servers.first(where: { $0.id == id }) else {
            throw TesseraError(.notFound, "\(path): no server with id \(id) (ids: \(servers.map { String($0.id) }.joined(separator: ", ")))")
        }
        return s
    }

    /// Reads and checks a cluster file.
    public static func load(path: String) throws -> ClusterConfig {
        let text: String
        do { text = try String(contentsOfFile: path, encoding: .utf8) } catch {
            throw TesseraError(.notFound, "\(path): cannot read the cluster file: \((error as NSError).localizedDescription)")
        }
        var dir = (path as NSString).deletingLastPathComponent
        if !dir.hasPrefix("/") { dir = FileManager.default.currentDirectoryPath + (dir.isEmpty ? "" : "/" + dir) }
        return try parse(text, path: path, directory: dir)
    }

    private struct RawServer: Codable {
        var id: Int
        var address: String
        var metrics: String?
        var meta: String
        var meta_size: String?
        var data: String
        var data_size: String?
    }
    private struct RawLayout: Codable {
        var data_units: Int?
        var parity_units: Int?
        var unit_size: String?
    }
    private struct RawCredential: Codable {
        var access_key: String
        var secret_key: String
    }
    private struct RawS3: Codable {
        var region: String?
        var public_read: [String]?
        var domain: RawDomains?
        var credentials: [RawCredential]?
        var max_connections: Int?
        var max_new_connections: Int?
        var head_timeout: RawDuration?
        var idle_timeout: RawDuration?
    }
    /// `domain = "NAME"` or `domain = ["NAME", ...]`.
    private struct RawDomains: Codable {
        var names: [String]
        init(from decoder: Decoder) throws {
            let c = try decoder.singleValueContainer()
            if let one = try? c.decode(String.self) { names = [one] } else { names = try c.decode([String].self) }
        }
        func encode(to encoder: Encoder) throws {
            var c = encoder.singleValueContainer()
            try c.encode(names)
        }
    }
    private struct RawState: Codable {
        var endpoints: [String]
        var name: String?
        var ttl: RawDuration?
        var grace: RawDuration?
        var sweep_interval: RawDuration?
    }
    /// A duration as a number of seconds or a string with a unit ("5s", "500ms", "2m").
    private enum RawDuration: Codable {
        case seconds(Double)
        case text(String)

        init(from decoder: Decoder) throws {
            let c = try decoder.singleValueContainer()
            if let i = try? c.decode(Int.self) {
                self = .seconds(Double(i))
            } else if let d = try? c.decode(Double.self) {
                self = .seconds(d)
            } else {
                self = .text(try c.decode(String.self))
            }
        }

        func encode(to encoder: Encoder) throws {
            var c = encoder.singleValueContainer()
            switch self {
            case .seconds(let d): try c.encode(d)
            case .text(let t): try c.encode(t)
            }
        }

        var value: Duration? {
            switch self {
            case .seconds(let d): return d > 0 && d < 86_400 ? .milliseconds(Int64(d * 1000)) : nil
            case .text(let t):
                let units: [(String, Double)] = [("ms", 0.001), ("s", 1), ("m", 60)]
                for (u, scale) in units where t.hasSuffix(u) {
                    guard let n = Double(t.dropLast(u.count)) else { return nil }
                    return RawDuration.seconds(n * scale).value
                }
                return Double(t).flatMap { RawDuration.seconds($0).value }
            }
        }
    }
    private struct Raw: Codable {
        var secret: String
        var layout: RawLayout?
        var server: [RawServer]
        var s3: RawS3?
        var state: RawState?
    }

    /// Parses cluster-file text; relative image paths resolve against `directory`.
    public static func parse(_ text: String, path: String, directory: String) throws -> ClusterConfig {
        func bad(_ why: String) -> TesseraError { TesseraError(.invalidArgument, "\(path): \(why)") }
        let raw: Raw
        do {
            raw = try TOMLDecoder().decode(Raw.self, from: try TOMLTable(string: text))
        } catch let e as TOMLParseError {
            throw bad("not valid TOML at line \(e.source.begin.line), column \(e.source.begin.column): \(e.description)")
        } catch {
            throw bad("\(describe(error))")
        }
        guard raw.secret.utf8.count >= 16 else { throw bad("secret must be at least 16 characters") }
        func size(_ s: String?, _ field: String, default d: UInt64) throws -> UInt64 {
            guard let s else { return d }
            guard let n = ByteSize.parse(s), n > 0 else { throw bad("\(field) = \"\(s)\" is not a size (examples: 64M, 1G)") }
            return n
        }
        func resolve(_ p: String) -> String { p.hasPrefix("/") ? p : directory + "/" + p }
        let unit = try size(raw.layout?.unit_size, "layout.unit_size", default: 1 << 20)
        let layout = Layout(dataUnits: raw.layout?.data_units ?? 2, parityUnits: raw.layout?.parity_units ?? 1, unitSize: Int(unit))
        guard layout.dataUnits >= 1, layout.parityUnits >= 0 else { throw bad("layout needs data_units >= 1 and parity_units >= 0") }
        guard unit >= 4096, unit <= 16 << 20, unit & (unit - 1) == 0 else {
            throw bad("layout.unit_size must be a power of two from 4K to 16M")
        }
        var servers: [Server] = []
        for (i, s) in raw.server.enumerated() {
            guard let address = Endpoint(s.address) else { throw bad("server \(i): address \"\(s.address)\" is not HOST:PORT") }
            var metrics: Endpoint?
            if let m = s.metrics {
                guard let e = Endpoint(m) else { throw bad("server \(i): metrics \"\(m)\" is not HOST:PORT") }
                metrics = e
            }
            servers.append(Server(
                id: s.id, address: address, metrics: metrics,
                metaPath: resolve(s.meta), metaSize: try size(s.meta_size, "server \(s.id) meta_size", default: 1 << 30),
                dataPath: resolve(s.data), dataSize: try size(s.data_size, "server \(s.id) data_size", default: 8 << 30)))
        }
        guard !servers.isEmpty else { throw bad("no [[server]] entries") }
        guard Set(servers.map(\.id)).count == servers.count else { throw bad("server ids repeat") }
        guard Set(servers.map(\.address.description)).count == servers.count else { throw bad("server addresses repeat") }
        guard layout.dataUnits + layout.parityUnits <= servers.count else {
            throw bad("layout \(layout.dataUnits)+\(layout.parityUnits) needs at least \(layout.dataUnits + layout.parityUnits) servers, the file lists \(servers.count)")
        }
        var s3 = S3()
        if let r = raw.s3 {
            s3.region = r.region ?? s3.region
            s3.publicRead = Set(r.public_read ?? [])
            s3.domains = r.domain?.names ?? []
            let hostCharacters = Set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.-")
            for d in s3.domains where d.isEmpty || d.hasPrefix(".") || d.hasSuffix(".") || !d.allSatisfy(hostCharacters.contains) {
                throw bad("s3.domain '\(d)' is not a host name (example: \"s3.example.com\")")
            }
            if let n = r.max_connections {
                guard n >= 1 else { throw bad("s3.max_connections must be at least 1") }
                s3.limits.maxConnections = n
            }
            if let n = r.max_new_connections {
                guard n >= 1 else { throw bad("s3.max_new_connections must be at least 1") }
                s3.limits.maxNewConnections = n
            }
            for (d, field, path) in [(r.head_timeout, "head_timeout", \GatewayLimits.headTimeout), (r.idle_timeout, "idle_timeout", \GatewayLimits.idleTimeout)] {
                guard let d else { continue }
                guard let v = d.value, v > .zero else { throw bad("s3.\(field) is not a positive duration (examples: 10, \"10s\", \"500ms\")") }
                s3.limits[keyPath: path] = v
            }
            for (i, c) in (r.credentials ?? []).enumerated() {
                guard !c.access_key.isEmpty, c.secret_key.utf8.count >= 8 else {
                    throw bad("s3.credentials \(i): access_key must not be empty and secret_key needs at least 8 characters")
                }
                guard s3.credentials.updateValue(c.secret_key, forKey: c.access_key) == nil else { throw bad("s3.credentials: access key \(c.access_key) repeats") }
            }
        }
        let state = try raw.state.map { try parseState($0, secret: raw.secret, bad: bad) }
        return ClusterConfig(path: path, secret: raw.secret, layout: layout, servers: servers, s3: s3, state: state)
    }

    private static func parseState(_ r: RawState, secret: String, bad: (String) -> TesseraError) throws -> State {
        guard !r.endpoints.isEmpty else { throw bad("state.endpoints is empty: name at least one etcd client endpoint") }
        for e in r.endpoints {
            var hostPort = e
            if hostPort.hasPrefix("http://") { hostPort.removeFirst(7) }
            guard Endpoint(hostPort) != nil else { throw bad("state.endpoints: \"\(e)\" is not HOST:PORT or http://HOST:PORT") }
        }
        let name = r.name ?? defaultName(secret: secret)
        guard !name.isEmpty, name.utf8.count <= 64, name.utf8.allSatisfy({ $0 > 32 && $0 < 127 && $0 != UInt8(ascii: "/") }) else {
            throw bad("state.name \"\(name)\" must be 1 to 64 printable characters without '/' or spaces")
        }
        var s = State(endpoints: r.endpoints, name: name)
        func duration(_ d: RawDuration?, _ field: String, _ into: inout Duration) throws {
            guard let d else { return }
            guard let v = d.value else { throw bad("state.\(field) is not a duration (examples: 5, \"5s\", \"500ms\")") }
            into = v
        }
        try duration(r.ttl, "ttl", &s.ttl)
        try duration(r.grace, "grace", &s.grace)
        try duration(r.sweep_interval, "sweep_interval", &s.sweepInterval)
        guard s.ttl >= .seconds(1) else { throw bad("state.ttl must be at least 1s (etcd leases count whole seconds)") }
        return s
    }

    /// Without a name, clusters that share an etcd are told apart by their secret: the
    /// name is 16 hex digits of FNV-1a over it (not the secret, and not reversible to it).
    static func defaultName(secret: String) -> String {
        var h: UInt64 = 0xcbf2_9ce4_8422_2325
        for b in secret.utf8 { h = (h ^ UInt64(b)) &* 0x0000_0100_0000_01B3 }
        return String(h, radix: 16).leftPadded(to: 16)
    }

    private static func describe(_ error: Error) -> String {
        switch error {
        case DecodingError.keyNotFound(let key, let ctx):
            return "missing \((ctx.codingPath.map(\.stringValue) + [key.stringValue]).joined(separator: "."))"
        case DecodingError.typeMismatch(_, let ctx), DecodingError.valueNotFound(_, let ctx), DecodingError.dataCorrupted(let ctx):
            return "\(ctx.codingPath.map(\.stringValue).joined(separator: ".")): \(ctx.debugDescription)"
        default:
            return "\(error)"
        }
    }
}

extension String {
    fileprivate func leftPadded(to n: Int) -> String { count >= n ? self : String(repeating: "0", count: n - count) + self }
}
