// The cluster map in etcd: read, watched by every process, and changed only by the holder
// of the HA role, by a compare-and-swap on the key's revision so two writers cannot both
// win (docs/CLUSTER.md, "The cluster map").
import Foundation
import Logging
import TesseraClient
import TesseraConfig
import TesseraCore
import TesseraEtcd
import TesseraRPC

extension ClusterState {
    /// The map as stored, read once without a session (for one-shot commands); nil if etcd
    /// does not answer within a second or has none.
    public static func fetchMap(_ settings: ClusterConfig.State) async -> ClusterMap? {
        try? await StateReader.with(settings, requestTimeout: .seconds(1)) { try await $0.map()?.map }
    }

    /// Has `cluster` read the map from etcd whenever a server says its map is stale.
    public static func follow(_ cluster: Cluster, _ settings: ClusterConfig.State?) {
        guard let settings else { return }
        cluster.readMaps { await fetchMap(settings) }
    }

    /// Creates the first map from the cluster file if there is none.
    public func ensureMap(_ config: ClusterConfig) async throws {
        let initial = FailureDetector.initialMap(servers: config.servers.map { ($0.id, $0.address.description) }, wallNow: wallClockNanoseconds())
        let r = try await etcd.txn(if: [.createRevision(keys.map, equals: 0)], then: [.put(keys.map, encodeJSON(initial))])
        if r.succeeded { logger.notice("cluster map created: version 1, \(config.servers.count) servers online") }
    }

    /// Watches the map for as long as this process lives, calling `apply` with the current
    /// map and every newer one. While etcd cannot be reached the last map stays in force.
    public func watchMap(_ apply: @escaping @Sendable (ClusterMap) -> Void) {
        let task = Task {
            var delay = Duration.milliseconds(200)
            while !Task.isCancelled {
                do {
                    var revision: Int64 = 0
                    if let (m, rev) = try await reader.map() {
                        seen(m, apply)
                        revision = rev
                    }
                    delay = .milliseconds(200)
                    for try await events in etcd.watch(prefix: keys.map, fromRevision: revision + 1) {
                        for e in events where e.kind == .put && e.kv.key == keys.map {
                            if let m = decodeJSON(ClusterMap.self, e.kv.value) { seen(m, apply) }
                        }
                    }
                } catch is CancellationError {
                    return
                } catch {
                    if Task.isCancelled { return }
                    logger.warning("watching the cluster map: \(error); keeping version \(mapHolder.withLock { $0?.version ?? 0 })")
                }
                try? await Task.sleep(for: delay)
                delay = min(delay * 2, .seconds(5))
            }
        }
        keep(task)
    }

    private func seen(_ m: ClusterMap, _ apply: @Sendable (ClusterMap) -> Void) {
        guard mapHolder.withLock({ $0.take(m) }) else { return }
        let summary = m.servers.map { "\($0.id) \($0.state.rawValue)" }.joined(separator: ", ")
        logger.info("cluster map version \(m.version): \(summary)")
        apply(m)
    }

    /// Campaigns for the HA role; while held, marks servers failed when their session has
    /// been gone for the grace period and online when it is back.
    public func runHealthMonitor(_ config: ClusterConfig) {
        let detector = DetectorBox(FailureDetector(grace: settings.grace))
        let poll = min(.seconds(1), settings.grace / 2)
        whileHolding(StateKeys.haRole, every: poll) { [weak self] newlyHeld in
            guard let self else { return }
            // What an earlier tenure saw is stale: a new holder gives every server the grace.
            if newlyHeld { detector.state.withLock { $0 = FailureDetector(grace: self.settings.grace) } }
            do { try await self.checkServers(config, detector) } catch {
                self.logger.warning("HA: \(error)")
            }
        }
    }

    private func checkServers(_ config: ClusterConfig, _ detector: DetectorBox) async throws {
        guard let (m, revision) = try await reader.map() else {
            try await ensureMap(config)
            return
        }
        // A server killed and started again has two sessions until the old lease ends: the
        // newer one is the process that runs.
        var present: [Int: FailureDetector.Present] = [:]
        var started: [Int: UInt64] = [:]
        for (lease, info) in try await reader.sessions() where info.kind == .server {
            guard let id = info.server, info.started >= started[id, default: 0] else { continue }
            started[id] = info.started
            present[id] = FailureDetector.Present(session: lease, stoppedCleanly: info.stoppedCleanly ?? false, process: info.process)
        }
        let now = ContinuousClock.now
        let wall = wallClockNanoseconds()
        var current = m
        if let next = detector.state.withLock({ $0.step(map: m, present: present, now: now, wallNow: wall) }) {
            let r = try await etcd.txn(if: [.modRevision(keys.map, equals: revision)], then: [.put(keys.map, encodeJSON(next))])
            guard r.succeeded else { return }  // someone else changed it: read again next time
            for (a, b) in zip(m.servers, next.servers) where a.state != b.state {
                logger.notice("HA: server \(b.id) at \(b.address) is \(b.state.rawValue) (map version \(next.version))")
            }
            current = next
        }
        for s in current.servers where s.state == .repairing {
            if let session = s.session, present[s.id]?.session == session { startRepair(of: s.id, session: session, config, detector) }
        }
    }

    /// Repairs server `id` (admitted under `session`) in the background, once at a time:
    /// has every other server walk the indexes it heads with `id` in their chain, a step of
    /// `repairStep` indexes at a time, keeping the progress in etcd after each step (a new
    /// holder goes on from there), then makes `id` online. Waits while a server that shares
    /// chains with it is not online (the data it missed is there only). A repair cut short
    /// is taken up again on the next poll.
    private func startRepair(of id: Int, session: UInt64, _ config: ClusterConfig, _ detector: DetectorBox) {
        guard detector.repairing.withLock({ $0.insert(id).inserted }) else { return }
        Task {
            defer { _ = detector.repairing.withLock { $0.remove(id) } }
            guard let (m, _) = try? await reader.map(), m.servers.allSatisfy({ $0.id == id || $0.state == .online }) else { return }
            var p = RepairProgress(server: id, session: session, mapVersion: m.version, now: wallClockNanoseconds())
            if let kv = try? await etcd.get(keys.repair(id)), let kept = decodeJSON(RepairProgress.self, kv.value),
                kept.session == session, kept.mapVersion == m.version, kept.done == nil {
                p = kept
                logger.notice("repair of server \(id): going on from \(kept.indexes) indexes walked (\(kept.walked.count) servers done)")
            }
            for server in config.servers where server.id != id && !p.walked.contains(server.id) {
                do {
                    let client = try await RPCClient.connect(host: server.address.host, port: server.address.port, secret: config.secret, connectTimeout: .seconds(2), defaultDeadline: .seconds(3600))
                    do {
                        try await walk(server.id, repairing: id, through: client, &p)
                        await client.close()
                    } catch {
                        await client.close()
                        throw error
                    }
                } catch {
                    logger.warning("repair of server \(id): server \(server.id): \(error); trying again")
                    return
                }
            }
            if p.data?.done == nil {
                do { try await repairData(of: id, config, &p) } catch {
                    logger.warning("repair of server \(id): object data: \(error); trying again")
                    return
                }
            }
            // Walked under the map it was started under: if that changed meanwhile, heads may
            // have moved, and the next poll starts again.
            p.done = wallClockNanoseconds()
            guard let (now, revision) = try? await reader.map(), now.version == p.mapVersion,
                let next = FailureDetector.repaired(now, server: id, session: session, wallNow: p.done!),
                let r = try? await etcd.txn(if: [.modRevision(keys.map, equals: revision)], then: [.put(keys.map, encodeJSON(next)), .put(keys.repair(id), encodeJSON(p))]),
                r.succeeded
            else { return }
            logger.notice("repair: server \(id) is online (map version \(next.version)): \(p.indexes) indexes walked, \(p.records) records compared, \(p.copied) copied, \(Int(p.rate)) records/s")
        }
    }

    /// Has `walker` walk every index it heads with `id` in its chain, from where `p` says
    /// it stopped, keeping `p` in etcd after each step.
    private func walk(_ walker: Int, repairing id: Int, through client: RPCClient, _ p: inout RepairProgress) async throws {
        var after = p.walker == walker ? p.after.flatMap(Fid.init) : nil
        repeat {
            guard case .repaired(let step) = try await client.handle(.repair(target: id, mapVersion: p.mapVersion, after: after, limit: Self.repairStep)).unwrap() else {
                throw TesseraError(.io, "malformed reply to REPAIR")
            }
            p.indexes += step.indexes
            p.records += step.records
            p.copied += step.copied
            (p.walker, p.after, p.updated) = (walker, step.next?.description, wallClockNanoseconds())
            after = step.next
            if after == nil { (p.walked, p.walker, p.after) = (p.walked + [walker], nil, nil) }
            _ = try await etcd.put(keys.repair(id), encodeJSON(p))
        } while after != nil
    }

    /// Repairs the object data of server `id` once its indexes are walked (REPLICATION.md,
    /// "Object data"), from the first object (a repair cut short starts it again: it reads
    /// everything, and writes only what differs), keeping the totals in `p` and in etcd.
    private func repairData(of id: Int, _ config: ClusterConfig, _ p: inout RepairProgress) async throws {
        guard let (m, _) = try await reader.map(), m.version == p.mapVersion else {
            throw TesseraError(.staleMap, "the cluster map changed since the repair started")
        }
        let cluster = try Cluster(config: config, logger: logger)
        cluster.apply(m)
        defer { Task { await cluster.close() } }
        let started = wallClockNanoseconds()
        // The walk reads every other server's units of the groups this one shares: about
        // what the others hold.
        let stats = await cluster.statistics()
        let estimate: UInt64? = stats.allSatisfy({ $0.stats != nil })
            ? stats.filter { $0.id != id }.reduce(0) { $0 + ($1.stats!.dataBytes &- $1.stats!.dataFreeBytes) } : nil
        var data = RepairProgress.DataProgress(now: started)
        data.estimate = estimate
        let kept = Locked((p, data))
        let totals = try await cluster.repairData(of: id) { t in
            let now = kept.withLock { kept -> RepairProgress in
                kept.1.totals = t
                kept.1.updated = wallClockNanoseconds()
                kept.0.data = kept.1
                return kept.0
            }
            _ = try? await self.etcd.put(self.keys.repair(id), encodeJSON(now))
        }
        data.totals = totals
        data.updated = wallClockNanoseconds()
        data.done = data.updated
        p.data = data
        _ = try await etcd.put(keys.repair(id), encodeJSON(p))
        logger.notice("repair of server \(id): object data: \(totals.objects) objects, \(totals.groups) groups compared, \(totals.units) units rewritten, \(totals.cobs) objects made or deleted, \(totals.bytesRead) bytes read, \(totals.bytesWritten) written")
    }

    /// Indexes a REPAIR request walks before the progress is kept.
    static let repairStep = 64
}

/// The HA role's detector, shared by the role's turns, and the servers being repaired.
final class DetectorBox: Sendable {
    let state: Locked<FailureDetector>
    let repairing = Locked<Set<Int>>([])
    init(_ d: FailureDetector) { state = Locked(d) }
}
