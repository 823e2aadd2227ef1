// A check of every unit of every object (`tessera fsck`, `tessera scrub`): each unit read
// from its server (which checks every block's CRC32C), and each group's parity compared
// with what its data units encode to. Read-only: a scrub repairs what it finds by having
// the servers concerned walked again (REPLICATION.md, "Object data").
import TesseraCore

/// Something wrong with one group's units.
public struct DataProblem: Sendable, CustomStringConvertible {
    public var object: Fid
    public var group: UInt64
    /// The servers (ids) whose unit is wrong: rebuilding theirs from the others mends it.
    public var servers: [Int]
    public var message: String
    public var description: String { "object \(object) group \(group): \(message)" }
}

/// What a check of the object data found.
public struct DataCheck: Sendable {
    public var objects: UInt64 = 0
    public var groups: UInt64 = 0
    public var bytesRead: UInt64 = 0
    /// Every cob some server holds.
    public var cobs: Set<Fid> = []
    public var problems: [DataProblem] = []
    public init() {}
}

extension Cluster {
    /// Reads every unit of every object, at most `rate` bytes a second if given. Throws if
    /// a server cannot be reached or is not online (nothing can be said of its units).
    public func checkData(rate: UInt64? = nil, progress: @Sendable (DataCheck) async -> Void = { _ in }) async throws -> DataCheck {
        var check = DataCheck()
        let started = ContinuousClock.now
        try await forEveryCob({ try await self.checkObject($0) }) { page in
            for c in page {
                check.objects += c.objects
                check.groups += c.groups
                check.bytesRead += c.bytesRead
                check.cobs.formUnion(c.cobs)
                check.problems += c.problems
            }
            await progress(check)
            if let rate, rate > 0 {
                // Paced by pages: sleep off what this page read ahead of the rate.
                let due = started + .seconds(Double(check.bytesRead) / Double(rate))
                if due > .now { try await Task.sleep(until: due) }
            }
        }
        return check
    }

    private func checkObject(_ cob: Fid) async throws -> DataCheck {
        var c = DataCheck()
        c.objects = 1
        c.cobs = [cob]
        let (_, groups) = try await placement(of: cob)
        for (g, reach) in groups.sorted(by: { $0.key < $1.key }) {
            c.groups += 1
            let length = (reach + 4095) & ~4095
            c.bytesRead += UInt64(length * layout.width)
            if let p = try await checkGroup(cob, g, length: length) { c.problems.append(p) }
        }
        return c
    }

    /// The problem of group `g` of `cob`, if it has one; its units read `length` bytes in.
    private func checkGroup(_ cob: Fid, _ g: UInt64, length: Int) async throws -> DataProblem? {
        let offset = layout.cobOffset(group: g)
        let read = try await withThrowingTaskGroup(of: (Int, [UInt8]?, Bool).self) { group in
            for u in 0..<layout.width {
                let server = layout.server(group: g, unit: u)
                group.addTask {
                    switch await self.call(server, .read(cob: cob, offset: offset, length: UInt32(length))) {
                    case .data(let bytes) where bytes.count == length: return (u, bytes, false)
                    case .failure(.notFound, _): return (u, [UInt8](repeating: 0, count: length), true)
                    case .failure(.checksum, _): return (u, nil, false)
                    case .failure(let status, let message):
                        throw TesseraError(status.code ?? .io, "object \(cob) group \(g) unit \(u) on server \(self.links[server].id): \(message)")
                    default: throw TesseraError(.io, "object \(cob) group \(g): malformed reply from server \(self.links[server].id)")
                    }
                }
            }
            var units = [[UInt8]?](repeating: nil, count: layout.width)
            var absent: [Int] = []
            for try await (u, bytes, missing) in group {
                units[u] = bytes
                if missing { absent.append(u) }
            }
            return (units, absent.sorted())
        }
        let (units, absent) = read
        let id = { (u: Int) in self.links[self.layout.server(group: g, unit: u)].id }
        let bad = units.indices.filter { units[$0] == nil }
        if !bad.isEmpty {
            let names = bad.map { "unit \($0) on server \(id($0))" }.joined(separator: ", ")
            let mendable = bad.count <= layout.parityUnits
            return DataProblem(object: cob, group: g, servers: mendable ? bad.map(id) : [],
                               message: "\(names) failed its CRC32C check\(mendable ? "" : "; too many to rebuild")")
        }
        let n = layout.dataUnits
        let parity = code.encode(units[0..<n].map { $0! })
        let wrong = (0..<layout.parityUnits).filter { parity[$0] != units[n + $0]! }
        guard !wrong.isEmpty else { return nil }
        let which = "parity unit(s) \(wrong.map { String(n + $0) }.joined(separator: ", ")) do not match the data units"
        guard absent.isEmpty else {
            // A unit whose server lacks the cob may be the lost one, not the parity: said,
            // and not mended (rebuilding parity from its zeros would lose the data for good).
            let names = absent.map { "unit \($0) on server \(id($0))" }.joined(separator: ", ")
            return DataProblem(object: cob, group: g, servers: [], message: "\(which), and \(names) is missing: not mended")
        }
        return DataProblem(object: cob, group: g, servers: wrong.map { id(n + $0) }, message: which)
    }
}
