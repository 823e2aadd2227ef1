// The Prometheus endpoint: requests, latencies, failures and engine figures by name.
import Foundation
import NIOPosix
import Testing
import TesseraCore
import TesseraRPC
import TesseraServices

@Suite struct MetricsTests {
    /// GET `path` from loopback `port` with a raw socket; returns the whole response.
    static func httpGet(port: Int, path: String) -> String {
        guard let s = try? RawPeer(port: port) else { return "" }
        defer { s.close() }
        _ = s.send(Array("GET \(path) HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".utf8))
        var out: [UInt8] = []
        var buf = [UInt8](repeating: 0, count: 65536)
        while true {
            let n = recv(s.fd, &buf, buf.count, 0)
            if n <= 0 { break }
            out += buf[0..<n]
        }
        return String(decoding: out, as: UTF8.self)
    }

    @Test func endpointExposesServerFigures() async throws {
        let n = try IONode()
        let metrics = ServerMetrics(n.node)
        let index = Fid(hi: 1, lo: 1)
        _ = await metrics.handle(.createIndexes([index]))
        _ = await metrics.handle(.put(index: index, records: [Record(key: [1], value: [2])], mode: .overwrite, syncWait: true))
        _ = await metrics.handle(.get(index: Fid(hi: 5, lo: 5), keys: [[1]]))
        _ = await metrics.handle(.write(cob: index, offset: 0, data: [1, 2, 3], syncWait: true))
        let endpoint = try await MetricsEndpoint.start(host: "127.0.0.1", port: 0, group: MultiThreadedEventLoopGroup.singleton) { metrics.scrape() }
        let page = Self.httpGet(port: endpoint.port, path: "/metrics")
        #expect(page.hasPrefix("HTTP/1.1 200"))
        for needle in [
            #"tessera_requests_total{op="put"} 1"#, #"tessera_request_seconds_bucket{op="put""#,
            #"tessera_request_failures_total{op="get",status="notFound"} 1"#, "tessera_tx_groups_logged",
            "tessera_log_used_bytes", "tessera_node_cache_hits", "tessera_node_cache_misses", "tessera_io_bytes_written 3",
        ] {
            #expect(page.contains(needle), "missing \(needle)")
        }
        #expect(Self.httpGet(port: endpoint.port, path: "/other").hasPrefix("HTTP/1.1 404"))
        await endpoint.close()
    }
}
