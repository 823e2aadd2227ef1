// Streams bytes into a new striped object in whole parity groups, a few groups in flight,
// so a PUT body never sits whole in memory and full groups are written without reads.
//
// The object must exist on every server before anyone reads it (`Cluster.create`), and no
// one reads it before `finish` returns (its entry is stored after). A unit write makes it
// on the server it reaches, so `finish` sends CREATE, with sync-wait, only to the servers
// no write reached, beside the SYNC of the others: a 4 KiB PUT sends one CREATE, not three,
// and waits no longer (a CREATE to every server before the first write cost small PUTs
// 10-14% of their rate on this machine).
import TesseraClient
import TesseraCore

public final class ObjectWriter {
    public let fid: Fid
    public private(set) var size: UInt64 = 0
    private let cluster: Cluster
    private let groupSize: Int
    private var buffer: [UInt8]
    private var inFlight: [Task<Set<Int>, Error>] = []
    /// Servers the finished writes reached (positions in the cluster's server list).
    private var written: Set<Int> = []
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
            written.formUnion(try await inFlight.removeFirst().value)
        }
    }

    /// Writes what is buffered, waits for every write, makes the object on the servers no
    /// write reached, and makes it durable. Returns the object's size.
    public func finish() async throws -> UInt64 {
        precondition(!finished, "ObjectWriter finished twice")
        finished = true
        try await flush()
        for t in inFlight { written.formUnion(try await t.value) }
        inFlight.removeAll()
        let (cluster, fid, written) = (self.cluster, self.fid, self.written)
        async let made: Void = cluster.create(fid, skipping: written, syncWait: true)
        let synced: Result<Void, Error>
        do { synced = .success(try await cluster.sync()) } catch { synced = .failure(error) }
        try await made
        try synced.get()
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
