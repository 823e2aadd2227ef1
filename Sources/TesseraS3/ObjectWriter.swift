// Streams bytes into a new striped object in whole parity groups, a few groups in flight,
// so a PUT body never sits whole in memory and full groups are written without reads.
//
// No CREATE: a unit write makes the object on the server it reaches, and its units on the
// servers no write reached lie wholly past its end, so a reader that passes the object's
// size takes them as zeros (Objects.swift). A CREATE there would cost a 4 KiB PUT one
// request and one log flush more on the server its writes miss (9% of its rate, measured
// with `tessera bench s3` on this machine). A mount that leaves a gap in such a file (a
// write past a hole, a truncation that grows it) makes the object on every server
// (FileData.swift).
import TesseraClient
import TesseraCore

public final class ObjectWriter {
    public let fid: Fid
    public private(set) var size: UInt64 = 0
    private let cluster: Cluster
    private let groupSize: Int
    private var buffer: [UInt8]
    private var inFlight: [Task<Void, Error>] = []
    private var finished = false
    /// Group writes allowed in flight before `write` waits for the oldest.
    static let maxInFlight = 3

    init(cluster: Cluster, fid: Fid) {
        self.cluster = cluster
        self.fid = fid
        groupSize = cluster.layout.groupSize
        buffer = []
        buffer.reserveCapacity(groupSize)
    }

    /// Appends `bytes` to the object.
    public func write<C: Collection<UInt8>>(_ bytes: C) async throws {
        var rest = bytes[...]
        while !rest.isEmpty {
            let n = min(rest.count, groupSize - buffer.count)
            buffer.append(contentsOf: rest.prefix(n))
            rest = rest.dropFirst(n)
            if buffer.count == groupSize { try await flush() }
        }
    }

    private func flush() async throws {
        guard !buffer.isEmpty else { return }
        let chunk = buffer
        let at = size
        size += UInt64(chunk.count)
        buffer.removeAll(keepingCapacity: true)
        let cluster = self.cluster
        let fid = self.fid
        inFlight.append(Task { try await cluster.write(fid, at: at, chunk, unwritten: true) })
        if inFlight.count >= Self.maxInFlight {
            try await inFlight.removeFirst().value
        }
    }

    /// Writes what is buffered, waits for every write, and makes the object durable.
    /// Returns the object's size: reads of the object must pass it (see the top).
    public func finish() async throws -> UInt64 {
        precondition(!finished, "ObjectWriter finished twice")
        finished = true
        try await flush()
        for t in inFlight { try await t.value }
        inFlight.removeAll()
        try await cluster.sync()
        return size
    }

    /// Stops writing and frees what was written; false if the free failed. The object's
    /// pending-free record stays for the caller (or the sweeper) to drop.
    @discardableResult
    public func abandon() async -> Bool {
        finished = true
        for t in inFlight { _ = try? await t.value }
        inFlight.removeAll()
        return (try? await cluster.delete(fid)) != nil
    }
}
