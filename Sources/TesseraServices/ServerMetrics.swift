// Prometheus metrics of one server: requests and latencies per operation, failures per
// status, commit groups, log usage, node-cache hits and misses, bytes read and written,
// and what its repair walks did.
import Prometheus
import TesseraCore
import TesseraEngine

/// Wraps a server's handler, counting and timing every request; `scrape()` renders the
/// Prometheus text format with the engine's and IO service's counters refreshed.
public final class ServerMetrics: RequestHandler {
    public let registry = PrometheusCollectorRegistry()
    private let inner: any RequestHandler
    private let node: ServerNode
    /// Indexed by opcode: a dictionary lookup per request would cost more than the counting.
    private let requests: [Counter?]
    private let latencies: [DurationHistogram?]
    private let groups: Gauge
    private let logBytes: Gauge
    private let logUsed: Gauge
    private let cacheHits: Gauge
    private let cacheMisses: Gauge
    private let cacheResident: Gauge
    private let ioWritten: Gauge
    private let ioRead: Gauge
    private let checksumFailures: Gauge
    private let unitsVerified: Gauge
    private let bytesVerified: Gauge
    private let blocksHealed: Gauge
    private let repairIndexes: Gauge
    private let repairRecords: Gauge
    private let repairCopied: Gauge

    /// Counts what `handler` answers; the engine and IO figures come from `node` (the one
    /// `handler` serves, itself or behind the replication).
    public convenience init(_ node: ServerNode) { self.init(node, answeredBy: node) }

    public init(_ node: ServerNode, answeredBy handler: any RequestHandler) {
        inner = handler
        self.node = node
        let r = registry
        let buckets: [Duration] = [.microseconds(50), .microseconds(200), .milliseconds(1), .milliseconds(5), .milliseconds(20), .milliseconds(100), .seconds(1)]
        let slots = Int(Request.Opcode.allCases.map(\.rawValue).max()!) + 1
        var requests = [Counter?](repeating: nil, count: slots)
        var latencies = [DurationHistogram?](repeating: nil, count: slots)
        for op in Request.Opcode.allCases {
            requests[Int(op.rawValue)] = r.makeCounter(descriptor: metric("tessera_requests_total", "Requests served, by operation."), labels: [("op", "\(op)")])
            latencies[Int(op.rawValue)] = r.makeDurationHistogram(descriptor: metric("tessera_request_seconds", "Time to answer a request, by operation."), labels: [("op", "\(op)")], buckets: buckets)
        }
        self.requests = requests
        self.latencies = latencies
        groups = r.makeGauge(descriptor: metric("tessera_tx_groups_logged", "Commit groups written to the log since start."))
        logBytes = r.makeGauge(descriptor: metric("tessera_log_bytes_written", "Bytes of log records written since start."))
        logUsed = r.makeGauge(descriptor: metric("tessera_log_used_bytes", "Log space in use (reserved, open, logged and not yet released)."))
        cacheHits = r.makeGauge(descriptor: metric("tessera_node_cache_hits", "Node-cache hits since start."))
        cacheMisses = r.makeGauge(descriptor: metric("tessera_node_cache_misses", "Node-cache misses since start (pages read from meta.img)."))
        cacheResident = r.makeGauge(descriptor: metric("tessera_node_cache_bytes", "Bytes held by the node cache."))
        ioWritten = r.makeGauge(descriptor: metric("tessera_io_bytes_written", "Bytes written by IOS requests since start."))
        ioRead = r.makeGauge(descriptor: metric("tessera_io_bytes_read", "Bytes read by IOS requests since start."))
        unitsVerified = r.makeGauge(descriptor: metric("tessera_repair_units_verified", "Units of this server a data repair walk checked (read here, CRCs compared with their rebuilt content), since start."))
        bytesVerified = r.makeGauge(descriptor: metric("tessera_repair_bytes_verified", "Bytes of this server's units those checks read, since start."))
        checksumFailures = r.makeGauge(descriptor: metric("tessera_io_checksum_failures", "Data blocks a read found failing their CRC32C, since start."))
        blocksHealed = r.makeGauge(descriptor: metric("tessera_io_blocks_healed", "Of those blocks, the ones a write has replaced since (rebuilt from parity by a read, a scrub or a repair)."))
        repairIndexes = r.makeGauge(descriptor: metric("tessera_repair_indexes_walked", "Indexes this server walked for repairs of their other replica, since start."))
        repairRecords = r.makeGauge(descriptor: metric("tessera_repair_records_compared", "Records this server's repair walks compared, since start."))
        repairCopied = r.makeGauge(descriptor: metric("tessera_repair_records_copied", "Records this server's repair walks copied to the other replica, since start."))
    }

    public func handleImmediately(_ request: Request) -> Response? {
        let start = ContinuousClock.now
        guard let response = inner.handleImmediately(request) else { return nil }
        record(request, response, ContinuousClock.now - start)
        return response
    }

    /// Each request of a run answered together counts the run's time as its own.
    public func handleImmediately(_ requests: ArraySlice<Request>) -> [Response] {
        let start = ContinuousClock.now
        let responses = inner.handleImmediately(requests)
        let elapsed = ContinuousClock.now - start
        for (request, response) in zip(requests, responses) { record(request, response, elapsed) }
        return responses
    }

    public func read(_ request: Request, into destination: UnsafeMutableRawBufferPointer) async -> Response? {
        let start = ContinuousClock.now
        let failure = await inner.read(request, into: destination)
        record(request, failure ?? .done, ContinuousClock.now - start)
        return failure
    }

    public func handle(_ request: Request) async -> Response {
        let start = ContinuousClock.now
        let response = await inner.handle(request)
        record(request, response, ContinuousClock.now - start)
        return response
    }

    /// A routed request counts as the operation it carries.
    private func record(_ request: Request, _ response: Response, _ elapsed: Duration) {
        var op = request.opcode
        if case .routed(_, let inner) = request { op = inner.opcode }
        requests[Int(op.rawValue)]?.increment()
        latencies[Int(op.rawValue)]?.record(elapsed)
        if case .failure(let status, _) = response {
            registry.makeCounter(descriptor: metric("tessera_request_failures_total", "Requests that failed, by operation and status."), labels: [("op", "\(op)"), ("status", "\(status)")]).increment()
        }
    }

    /// The Prometheus text exposition of every metric, with gauges read now.
    public func scrape() -> [UInt8] {
        let s = node.catalogues.engine.statistics
        groups.set(Double(s.groupsLogged))
        logBytes.set(Double(s.bytesLogged))
        logUsed.set(Double(s.logUsedBytes))
        cacheHits.set(Double(s.cacheHits))
        cacheMisses.set(Double(s.cacheMisses))
        cacheResident.set(Double(s.cacheResidentBytes))
        if let io = node.io {
            ioWritten.set(Double(io.bytesWritten))
            ioRead.set(Double(io.bytesRead))
            checksumFailures.set(Double(io.checksumFailures))
            unitsVerified.set(Double(io.unitsVerified))
            bytesVerified.set(Double(io.bytesVerified))
            blocksHealed.set(Double(io.blocksHealed))
        }
        if let replicated = inner as? ReplicatedNode {
            let t = replicated.repairTotals
            repairIndexes.set(Double(t.indexes))
            repairRecords.set(Double(t.records))
            repairCopied.set(Double(t.copied))
        }
        return registry.emitToBuffer()
    }
}

/// A metric named exactly `name` (the names are already fully qualified, `tessera_…`).
private func metric(_ name: String, _ help: String) -> MetricNameDescriptor {
    MetricNameDescriptor(metricName: name, unitName: "", helpText: help)
}
