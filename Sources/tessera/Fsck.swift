// `tessera fsck`: a check of the whole cluster; `tessera scrub`: the same reads, and a repair
// of what they find (REPLICATION.md, "Object data"; docs/CLUSTER.md, "Checking a cluster").
import ArgumentParser
import Foundation
import TesseraClient
import TesseraConfig
import TesseraCore
import TesseraLocal
import TesseraS3
import TesseraState

/// What one check of a cluster found.
struct ClusterCheck {
    var data = DataCheck()
    var indexes = 0
    var differing: [IndexDifference] = []
    var references = References()
    /// Every problem, one line each.
    var problems: [String] = []

    /// Checks `cluster` (every server must be online): data, index replicas, references.
    /// `rate` paces the data reads (bytes a second).
    static func run(_ cluster: Cluster, _ config: ClusterConfig, rate: UInt64? = nil) async throws -> ClusterCheck {
        try await requireOnline(cluster, config)
        var c = ClusterCheck()
        c.data = try await cluster.checkData(rate: rate)
        c.problems += c.data.problems.map(\.description)
        (c.indexes, c.differing) = try await cluster.compareIndexReplicas()
        c.problems += c.differing.map { "\($0)" }
        c.references = try await References.read(cluster)
        c.problems += c.references.problems
        // Read after the data walk: an object written meanwhile is named, not orphaned.
        c.problems += try await c.ownership(config)
        return c
    }

    /// Entries whose object no server holds; objects nothing names; pending frees their
    /// sweeper should have freed long ago.
    private func ownership(_ config: ClusterConfig) async throws -> [String] {
        var out: [String] = []
        for fid in references.holdingData.sorted() where !data.cobs.contains(fid) {
            out.append("object \(fid), named by \(references.owners[fid] ?? "?"), is held by no server: its data is lost")
        }
        let pending = Set(references.pending.map(\.fid))
        for fid in data.cobs.sorted() where references.owners[fid] == nil && !pending.contains(fid) {
            out.append("object \(fid) is held by the servers, but no entry, part or pending free names it")
        }
        guard let settings = config.state else { return out }
        let alive: Set<UInt64>
        do { alive = Set(try await StateReader.with(settings, requestTimeout: .seconds(5)) { try await $0.sessions() }.map(\.lease)) } catch {
            throw TesseraError(.closed, "etcd cannot be reached: \(error)")
        }
        // The sweeper frees what a gone session noted within TTL plus a sweep; allow twice
        // the sweep, and a margin, before calling it left behind.
        let overdue = settings.ttl + settings.grace + settings.sweepInterval * 2 + .seconds(30)
        let now = wallClockNanoseconds()
        for p in references.pending where !alive.contains(p.record.session) {
            let age = Duration.nanoseconds(Int64(clamping: now &- p.record.noted))
            if p.record.noted < now, age > overdue {
                out.append("pending free of object \(p.fid) (in \(p.at)) was noted \(age.components.seconds) s ago by a session that ended: the sweeper has not freed it")
            }
        }
        return out
    }

    /// Throws `closed` naming every server that does not answer or is not online.
    static func requireOnline(_ cluster: Cluster, _ config: ClusterConfig) async throws {
        var down: [String] = []
        for s in await cluster.statistics() where s.stats == nil {
            down.append("server \(s.id) at \(s.address) does not answer (\(s.error ?? "?"))")
        }
        if let settings = config.state {
            guard let m = await ClusterState.fetchMap(settings) else {
                throw TesseraError(.closed, "etcd at \(settings.endpoints.joined(separator: ", ")) cannot be reached, or holds no cluster map")
            }
            for s in m.servers where s.state != .online { down.append("server \(s.id) is \(s.state.rawValue) in the cluster map") }
        }
        guard down.isEmpty else { throw TesseraError(.closed, down.joined(separator: "; ")) }
    }

    var summary: String {
        "\(data.objects) objects, \(data.groups) parity groups, \(data.bytesRead >> 20) MiB read; \(indexes) indexes compared; \(references.records) records read"
    }
}

struct Fsck: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Check the whole cluster; exit 0 if clean, 1 if it found problems (listed), 2 if it cannot be reached.",
        discussion: """
            Reads every unit of every object (each block's CRC32C checked by its server) and \
            compares each parity group's parity with its data; compares both replicas of every \
            index; and holds the objects the servers keep to the records that name them: every \
            entry's, part's and inode's object held, no object held that nothing names, no \
            pending free left by a gone session past its sweep. Every server must be online.
            """)

    @OptionGroup var state: StateOption

    func run() async throws {
        let config = try state.config()
        let check: ClusterCheck
        do {
            check = try await withCluster(state) { try await ClusterCheck.run($0, config) }
        } catch let e as TesseraError where [.closed, .timedOut, .staleMap].contains(e.code) {
            printError("the cluster cannot be checked: \(e.message)")
            throw ExitCode(2)
        }
        for p in check.problems { print(p) }
        print("fsck: \(check.summary): \(check.problems.isEmpty ? "clean" : "\(check.problems.count) problems")")
        if !check.problems.isEmpty { throw ExitCode(1) }
    }
}

struct Scrub: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Read every unit and every index replica, and repair what is wrong; exit 1 if problems remain, 2 if the cluster cannot be reached.",
        discussion: """
            Finds what `tessera fsck` finds; then each server holding a unit that failed its \
            checksum, or a parity unit that does not match its data, or the second copy of an \
            index that differs, is walked again as `tessera repair --id` does (its units \
            rebuilt from the others, its replicas from the heads), one at a time, and what was \
            found is checked again. With --every it runs again and again, paced by --rate: a \
            slow background scrub.
            """)

    @OptionGroup var state: StateOption
    @Option(help: "Read at most this many bytes a second (64M, 1G; default: no limit).") var rate: String?
    @Option(help: "Scrub again this many seconds after each pass ends, until stopped.") var every: Int?

    func run() async throws {
        let config = try state.config()
        guard let settings = config.state else { throw ValidationError("the cluster file has no [state]: a scrub repairs through the cluster state service") }
        var pace: UInt64?
        if let rate {
            guard let r = ByteSize.parse(rate), r > 0 else { throw ValidationError("--rate \(rate) is not a size") }
            pace = r
        }
        while true {
            let left: Int
            do {
                left = try await withCluster(state) { try await pass($0, config, settings, rate: pace) }
            } catch let e as TesseraError where [.closed, .timedOut, .staleMap].contains(e.code) {
                printError("the cluster cannot be scrubbed: \(e.message)")
                guard every != nil else { throw ExitCode(2) }
                left = -1
            }
            guard let every else {
                if left > 0 { throw ExitCode(1) }
                return
            }
            try await Task.sleep(for: .seconds(every))
        }
    }

    /// One scrub; returns the problems left.
    private func pass(_ cluster: Cluster, _ config: ClusterConfig, _ settings: ClusterConfig.State, rate: UInt64?) async throws -> Int {
        let found = try await ClusterCheck.run(cluster, config, rate: rate)
        print("scrub: \(found.summary): \(found.problems.count) problems")
        guard !found.problems.isEmpty else { return 0 }
        for p in found.problems { print("  \(p)") }
        // Whose copy to rebuild: the server of each bad unit; for an index, the member that
        // is not the head (a walk copies the head's replica to it).
        var walk = Set(found.data.problems.flatMap(\.servers))
        for d in found.differing {
            let head = cluster.chain(of: d.index).chain.head
            walk.formUnion(d.servers.filter { $0 != head })
        }
        try await StateReader.with(settings, requestTimeout: .seconds(5)) { reader in
            for id in walk.sorted() {
                print("scrub: walking server \(id) again")
                _ = try await reader.repairAgain(id)
                let deadline = ContinuousClock.now + .seconds(3600)
                while try await !reader.repairView().isDone {
                    guard ContinuousClock.now < deadline else { throw TesseraError(.timedOut, "the repair of server \(id) did not finish within an hour") }
                    try await Task.sleep(for: .milliseconds(300))
                }
            }
        }
        // Checked again: what the walks could not mend (too many bad units in a group, an
        // entry whose data is lost) is left, and said.
        let after = try await ClusterCheck.run(cluster, config, rate: rate)
        for p in after.problems { print("scrub: left: \(p)") }
        print("scrub: \(found.problems.count - min(found.problems.count, after.problems.count)) problems mended, \(after.problems.count) left")
        return after.problems.count
    }
}
