// Where an object's bytes live: parity groups of N data + K parity units over P servers
// (docs/LAYOUT.md).
//
//   group g        covers object bytes [g·N·U, (g+1)·N·U), U the unit size
//   data unit d    (0 ≤ d < N) holds bytes [g·N·U + d·U, g·N·U + (d+1)·U)
//   parity unit p  is unit N+p of the group (0 ≤ p < K)
//   unit u of g    lives on server (g + u) mod P, in the cob whose fid is the object's
//                  fid, at cob offset g·U (N+K ≤ P, so a server holds at most one unit of
//                  a group, and rotating by g spreads parity over every server)
import TesseraCore

public struct ObjectLayout: Sendable, Equatable, CustomStringConvertible {
    public let dataUnits: Int
    public let parityUnits: Int
    public let unitSize: Int
    public let servers: Int

    /// The largest unit: one unit travels in one frame.
    public static let maxUnitSize = 16 << 20

    public init(dataUnits: Int, parityUnits: Int, unitSize: Int, servers: Int) throws {
        guard dataUnits >= 1 else { throw TesseraError(.invalidArgument, "a layout needs at least 1 data unit") }
        guard parityUnits >= 0, dataUnits + parityUnits <= servers else {
            throw TesseraError(.invalidArgument, "a layout of \(dataUnits)+\(parityUnits) units needs at least \(dataUnits + parityUnits) servers; the cluster has \(servers)")
        }
        guard dataUnits + parityUnits <= 255 else { throw TesseraError(.invalidArgument, "a parity group has at most 255 units") }
        guard unitSize >= 4096, unitSize <= ObjectLayout.maxUnitSize, unitSize % 4096 == 0 else {
            throw TesseraError(.invalidArgument, "unit size \(unitSize) must be a multiple of 4096 between 4 KiB and 16 MiB")
        }
        self.dataUnits = dataUnits
        self.parityUnits = parityUnits
        self.unitSize = unitSize
        self.servers = servers
    }

    public var width: Int { dataUnits + parityUnits }
    /// Object bytes one parity group holds.
    public var groupSize: Int { dataUnits * unitSize }

    public var description: String { "\(dataUnits)+\(parityUnits) over \(servers) servers, \(unitSize)-byte units" }

    /// Server of unit `unit` (0..<width) of group `group`.
    public func server(group: UInt64, unit: Int) -> Int {
        Int((group % UInt64(servers) + UInt64(unit)) % UInt64(servers))
    }

    /// Offset of group `group`'s unit inside its server's cob.
    public func cobOffset(group: UInt64) -> UInt64 { group * UInt64(unitSize) }

    /// Where object byte `offset` lives: its group, data unit and offset in that unit.
    public func locate(_ offset: UInt64) -> (group: UInt64, unit: Int, offsetInUnit: Int) {
        let g = offset / UInt64(groupSize)
        let inGroup = Int(offset % UInt64(groupSize))
        return (g, inGroup / unitSize, inGroup % unitSize)
    }

    /// Object offset of byte `offsetInUnit` of data unit `unit` of group `group`.
    public func objectOffset(group: UInt64, unit: Int, offsetInUnit: Int) -> UInt64 {
        group * UInt64(groupSize) + UInt64(unit * unitSize + offsetInUnit)
    }

    /// The groups that bytes [offset, offset+length) touch, each with the part of it that
    /// falls in the range (offsets within the group).
    public func groups(offset: UInt64, length: Int) -> [(group: UInt64, from: Int, to: Int)] {
        guard length > 0 else { return [] }
        var out: [(UInt64, Int, Int)] = []
        var at = offset
        let end = offset + UInt64(length)
        while at < end {
            let g = at / UInt64(groupSize)
            let start = g * UInt64(groupSize)
            let to = min(end, start + UInt64(groupSize))
            out.append((g, Int(at - start), Int(to - start)))
            at = to
        }
        return out
    }
}
