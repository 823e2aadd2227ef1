// The cluster file: a good one parses; each kind of mistake is named.
import Testing
import TesseraConfig

@Suite struct ClusterConfigTests {
    static let good = """
        secret = "0123456789abcdef-cluster"
        [layout]
        data_units = 2
        parity_units = 1
        unit_size = "256K"
        [[server]]
        id = 0
        address = "127.0.0.1:7100"
        metrics = "127.0.0.1:9100"
        meta = "0/meta.img"
        meta_size = "64M"
        data = "/abs/data.img"
        data_size = "1G"
        [[server]]
        id = 1
        address = "127.0.0.1:7101"
        meta = "1/meta.img"
        data = "1/data.img"
        [[server]]
        id = 2
        address = "[::1]:7102"
        meta = "2/meta.img"
        data = "2/data.img"
        """

    @Test func parsesAndResolvesPaths() throws {
        let c = try ClusterConfig.parse(Self.good, path: "/etc/t/cluster.toml", directory: "/etc/t")
        #expect(c.layout == .init(dataUnits: 2, parityUnits: 1, unitSize: 256 << 10))
        #expect(c.servers.count == 3)
        let s0 = try c.server(0)
        #expect(s0.metaPath == "/etc/t/0/meta.img" && s0.dataPath == "/abs/data.img")
        #expect(s0.metaSize == 64 << 20 && s0.dataSize == 1 << 30)
        #expect(s0.metrics == Endpoint(host: "127.0.0.1", port: 9100))
        #expect(try c.server(2).address == Endpoint(host: "::1", port: 7102))
        #expect(try c.server(1).metaSize == 1 << 30)
        #expect(throws: (any Error).self) { try c.server(7) }
    }

    @Test func stateSection() throws {
        let none = try ClusterConfig.parse(Self.good, path: "c.toml", directory: ".")
        #expect(none.state == nil)
        #expect(throws: (any Error).self) { try none.requireState(for: "the gateway") }
        let text = Self.good + "\n[state]\nendpoints = [\"127.0.0.1:2379\", \"http://10.0.0.2:2379\"]\nttl = 3\ngrace = \"1500ms\"\n"
        let s = try #require(try ClusterConfig.parse(text, path: "c.toml", directory: ".").state)
        #expect(s.endpoints == ["127.0.0.1:2379", "http://10.0.0.2:2379"])
        #expect(s.ttl == .seconds(3) && s.grace == .milliseconds(1500) && s.sweepInterval == .seconds(10))
        // Named from the secret unless given: the same secret, the same prefix.
        #expect(s.prefix.hasPrefix("/tessera/") && s.name.count == 16 && !s.name.contains("0123456789abcdef-cluster"))
        let named = try ClusterConfig.parse(text + "name = \"prod\"\n", path: "c.toml", directory: ".")
        #expect(named.state?.prefix == "/tessera/prod/")
    }

    @Test(arguments: [
        "endpoints = []",
        "endpoints = [\"nowhere\"]",
        "endpoints = [\"127.0.0.1:2379\"]\nttl = \"soon\"",
        "endpoints = [\"127.0.0.1:2379\"]\nttl = \"500ms\"",
        "endpoints = [\"127.0.0.1:2379\"]\nname = \"a/b\"",
        "ttl = 5",
    ])
    func stateMistakesAreNamed(section: String) {
        #expect(throws: (any Error).self) { try ClusterConfig.parse(Self.good + "\n[state]\n" + section + "\n", path: "c.toml", directory: ".") }
    }

    @Test(arguments: [
        ("secret = \"0123456789abcdef-cluster\"", "secret = \"short\""),
        ("address = \"127.0.0.1:7100\"", "address = \"nowhere\""),
        ("unit_size = \"256K\"", "unit_size = \"3000\""),
        ("meta_size = \"64M\"", "meta_size = \"lots\""),
        ("id = 1", "id = 0"),
        ("[[server]]\nid = 2", "[[xserver]]\nid = 2"),
        ("data_units = 2", "data_units = \"two\""),
        ("secret =", "secret == "),
    ])
    func mistakesAreNamed(replace: String, with bad: String) {
        let text = Self.good.replacingOccurrences(of: replace, with: bad, options: [], range: Self.good.range(of: replace))
        #expect(throws: (any Error).self) { try ClusterConfig.parse(text, path: "c.toml", directory: ".") }
    }
}

import Foundation
