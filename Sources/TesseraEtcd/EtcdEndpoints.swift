// The etcd endpoints a client was given, and which of them failed recently: calls try them
// in order, putting one that just failed last for a while.
import Foundation
import NIOConcurrencyHelpers
import TesseraCore

/// One etcd member's client URL, as host and port.
struct EtcdEndpoint: Sendable, Equatable, CustomStringConvertible {
    var host: String
    var port: Int

    /// "host:port", as every error names the endpoint.
    var description: String { host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)" }

    /// Parses "host:port", "http://host:port" (a trailing "/" allowed) or "[v6]:port"; the
    /// port defaults to etcd's 2379. https is refused: this client speaks plain HTTP.
    init(parsing text: String) throws {
        var rest = Substring(text.trimmingCharacters(in: .whitespaces))
        if let scheme = rest.range(of: "://") {
            let name = rest[..<scheme.lowerBound].lowercased()
            guard name == "http" else {
                if name == "https" {
                    throw TesseraError(.invalidArgument, "etcd endpoint \(text): https is not supported (this client speaks plain HTTP; use an http:// endpoint on a trusted network)")
                }
                throw TesseraError(.invalidArgument, "etcd endpoint \(text): unknown scheme \(name)")
            }
            rest = rest[scheme.upperBound...]
        }
        while rest.hasSuffix("/") { rest = rest.dropLast() }
        guard !rest.isEmpty, !rest.contains("/") else {
            throw TesseraError(.invalidArgument, "etcd endpoint \"\(text)\" is not host:port")
        }
        (host, port) = try Self.split(rest, text)
    }

    private static func split(_ s: Substring, _ text: String) throws -> (String, Int) {
        var host = s
        var portText: Substring?
        if s.hasPrefix("[") {
            guard let close = s.firstIndex(of: "]") else { throw TesseraError(.invalidArgument, "etcd endpoint \(text): unclosed [") }
            host = s[s.index(after: s.startIndex)..<close]
            let after = s[s.index(after: close)...]
            if after.hasPrefix(":") { portText = after.dropFirst() } else if !after.isEmpty {
                throw TesseraError(.invalidArgument, "etcd endpoint \(text) is not host:port")
            }
        } else if let colon = s.lastIndex(of: ":") {
            host = s[..<colon]
            portText = s[s.index(after: colon)...]
        }
        guard !host.isEmpty else { throw TesseraError(.invalidArgument, "etcd endpoint \(text) has no host") }
        guard let portText else { return (String(host), 2379) }
        guard let port = Int(portText), (1...65535).contains(port) else {
            throw TesseraError(.invalidArgument, "etcd endpoint \(text): bad port \"\(portText)\"")
        }
        return (String(host), port)
    }
}

/// The endpoints in the order given, with the time until which each is put last.
final class EtcdEndpoints: Sendable {
    let all: [EtcdEndpoint]
    /// How long an endpoint that failed is tried only after the others.
    let penalty: Duration
    private let failedUntil: NIOLockedValueBox<[ContinuousClock.Instant?]>

    init(_ endpoints: [EtcdEndpoint], penalty: Duration = .seconds(5)) {
        all = endpoints
        self.penalty = penalty
        failedUntil = NIOLockedValueBox(Array(repeating: nil, count: endpoints.count))
    }

    /// Every endpoint, those not failed recently first, each group in the order given.
    func ordered(now: ContinuousClock.Instant = .now) -> [Int] {
        let until = failedUntil.withLockedValue { $0 }
        let fresh = all.indices.filter { (until[$0] ?? now) <= now }
        return fresh + all.indices.filter { !fresh.contains($0) }
    }

    func failed(_ i: Int) { failedUntil.withLockedValue { $0[i] = .now + penalty } }
    func succeeded(_ i: Int) { failedUntil.withLockedValue { $0[i] = nil } }
}
