// swift-tools-version: 6.0
// Tessera: a FUSE-mounted object filesystem over its own distributed object store.
// Targets follow the layers of docs/ARCHITECTURE.md; imports only point down.
// Linux only: the code uses Glibc, libfuse3, O_DIRECT and Linux's /proc (no platforms are
// listed, as the list names only Apple's).
import PackageDescription

let package = Package(
    name: "Tessera",
    products: [
        .executable(name: "tessera", targets: ["tessera"]),
        // The metadata engine, for other packages: B+tree catalogues in one image file with
        // a write-ahead log and crash recovery (docs/FORMAT.md). TesseraCore holds the types
        // its API uses (Fid, TesseraError). Tests/Package builds a package that uses it.
        .library(name: "TesseraEngine", targets: ["TesseraEngine", "TesseraCore"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.0"),
        .package(url: "https://github.com/apple/swift-log", from: "1.16.0"),
        .package(url: "https://github.com/LebJe/TOMLKit", from: "0.6.0"),
        .package(url: "https://github.com/apple/swift-nio", from: "2.101.0"),
        .package(url: "https://github.com/apple/swift-crypto", from: "3.12.0"),
        .package(url: "https://github.com/swift-server/swift-prometheus", from: "2.4.0"),
    ],
    targets: [
        // C helpers: hardware CRC32C. No I/O.
        .target(name: "CTesseraSupport"),
        // Layer 1: ids, checksums, errors, limits. No I/O.
        .target(name: "TesseraCore", dependencies: ["CTesseraSupport"]),
        // Layer 1: the cluster file.
        .target(name: "TesseraConfig", dependencies: ["TesseraCore", .product(name: "TOMLKit", package: "TOMLKit")]),
        // Layer 2: image, log, transactions, node cache, B+trees, meta-b-tree.
        .target(
            name: "TesseraEngine",
            dependencies: ["CTesseraSupport", "TesseraCore", .product(name: "Logging", package: "swift-log")]
        ),
        // Layer 3: CAS, IOS and SYNC over the engine.
        .target(
            name: "TesseraServices",
            dependencies: ["TesseraCore", "TesseraEngine", .product(name: "Crypto", package: "swift-crypto"), .product(name: "Prometheus", package: "swift-prometheus")]
        ),
        // Layer 4: framing, handshake, SwiftNIO transport. Futures stay inside this target.
        .target(
            name: "TesseraRPC",
            dependencies: [
                "TesseraCore",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        // Layer 1½: the cluster state service's client (etcd v3 JSON gateway). No Tessera RPC.
        .target(
            name: "TesseraEtcd",
            dependencies: [
                "TesseraCore",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        // Layer 5: the client — replicated indexes, striped parity objects (ISA-L).
        .systemLibrary(name: "CISAL", pkgConfig: "libisal", providers: [.apt(["libisal-dev"])]),
        .target(
            name: "TesseraClient",
            dependencies: ["TesseraCore", "TesseraConfig", "TesseraRPC", "CISAL", .product(name: "Logging", package: "swift-log")]
        ),
        // Layer 5½: the cluster state service as the processes use it: sessions, the cluster
        // map, roles (docs/CLUSTER.md). Never on the data path.
        .target(
            name: "TesseraState",
            dependencies: ["TesseraCore", "TesseraConfig", "TesseraClient", "TesseraEtcd", "TesseraRPC", .product(name: "Logging", package: "swift-log")]
        ),
        // Layer 6: S3 buckets and objects over the client, and the S3 HTTP gateway.
        .target(
            name: "TesseraS3",
            dependencies: ["TesseraCore", "TesseraClient", .product(name: "Crypto", package: "swift-crypto"), .product(name: "Logging", package: "swift-log")]
        ),
        .target(
            name: "TesseraGateway",
            dependencies: [
                "CTesseraSupport", "TesseraCore", "TesseraConfig", "TesseraClient", "TesseraS3",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        // Layer 7: the file-system core, POSIX over one bucket. No libfuse.
        .target(
            name: "TesseraFS",
            dependencies: ["TesseraCore", "TesseraClient", "TesseraS3", .product(name: "Crypto", package: "swift-crypto"), .product(name: "Logging", package: "swift-log")]
        ),
        // Layer 8: the FUSE adapter, a libfuse3 low-level session over the core.
        .systemLibrary(name: "CFuse", pkgConfig: "fuse3", providers: [.apt(["libfuse3-dev"])]),
        .target(name: "TesseraFUSE", dependencies: ["CFuse", "TesseraFS", .product(name: "Logging", package: "swift-log")]),
        // Layer 9: a local cluster's state folder, its processes (servers, etcd, the gateway,
        // the mount daemon) and its ports, as `tessera up` and the benchmarks run them.
        .target(
            name: "TesseraLocal",
            dependencies: ["CTesseraSupport", "TesseraCore", "TesseraConfig", "TesseraEtcd", "TesseraState", .product(name: "Logging", package: "swift-log")]
        ),
        // SQLite, only as the baseline of `tessera bench engine`.
        .systemLibrary(name: "CSQLite", pkgConfig: "sqlite3", providers: [.apt(["libsqlite3-dev"])]),
        // Layer 9: the benchmarks of `tessera bench`, each against the baseline its issue names.
        .target(
            name: "TesseraBench",
            dependencies: [
                "CSQLite", "TesseraCore", "TesseraEngine", "TesseraConfig", "TesseraRPC", "TesseraClient", "TesseraS3", "TesseraGateway", "TesseraState", "TesseraLocal",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        // Layer 10: the `tessera` command, a thin layer of commands over the layers below.
        .executableTarget(
            name: "tessera",
            dependencies: [
                "CTesseraSupport", "TesseraCore", "TesseraEngine", "TesseraBench", "TesseraConfig", "TesseraServices", "TesseraRPC", "TesseraClient", "TesseraS3", "TesseraGateway", "TesseraFS", "TesseraFUSE", "TesseraEtcd", "TesseraState", "TesseraLocal",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        .testTarget(
            name: "TesseraGatewayTests",
            dependencies: ["TesseraGateway", "TesseraCore", "CTesseraSupport", .product(name: "NIOCore", package: "swift-nio")]
        ),
        .testTarget(
            name: "TesseraFSTests",
            dependencies: ["TesseraFS", "TesseraS3", "TesseraClient", "TesseraConfig", "TesseraCore", "TesseraEngine", "TesseraServices", "TesseraRPC", .product(name: "NIOPosix", package: "swift-nio")]
        ),
        .testTarget(name: "TesseraCoreTests", dependencies: ["TesseraCore", "TesseraConfig"]),
        .testTarget(
            name: "TesseraEtcdTests",
            dependencies: [
                "TesseraEtcd", "TesseraCore", "TesseraLocal",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        .testTarget(name: "TesseraStateTests", dependencies: ["TesseraState", "TesseraClient", "TesseraConfig", "TesseraEtcd"]),
        .testTarget(name: "TesseraClientTests", dependencies: ["TesseraClient", "TesseraConfig", "TesseraCore", "TesseraState", "TesseraLocal", "tessera"]),
        .testTarget(name: "TesseraEngineTests", dependencies: ["TesseraEngine", "TesseraLocal", "tessera"]),
        .testTarget(
            name: "TesseraRPCTests",
            dependencies: [
                "TesseraRPC", "TesseraServices", "TesseraEngine", "TesseraLocal", "tessera",
                .product(name: "NIOEmbedded", package: "swift-nio"),
            ]
        ),
    ],
    swiftLanguageModes: [.v6]
)

// The binary Tessera ships (`scripts/build`, which `scripts/tessera` and `scripts/test` use)
// is a release build under TESSERA_OPTIMIZE=1: it optimizes across our own modules, so
// generic engine and codec calls are specialized at their call sites instead of going
// through runtime metadata, and it skips the runtime exclusivity checks, which cost about a
// seventh of the server's CPU per request (the compiler still checks exclusivity
// statically). These are unsafe flags, which SwiftPM refuses in a package another one
// depends on by version, so without TESSERA_OPTIMIZE (a plain `swift build`, or Tessera as
// a dependency) there are none. The Swift test suites build apart with
// TESSERA_CHECK_EXCLUSIVITY=1 as well, so they run with the runtime checks on.
import Foundation
let environment = ProcessInfo.processInfo.environment
if environment["TESSERA_OPTIMIZE"] == "1" {
    var releaseFlags = ["-cross-module-optimization"]
    if environment["TESSERA_CHECK_EXCLUSIVITY"] != "1" {
        releaseFlags.append("-enforce-exclusivity=unchecked")
    }
    for target in package.targets where target.type == .regular || target.type == .executable {
        target.swiftSettings = (target.swiftSettings ?? []) + [.unsafeFlags(releaseFlags, .when(configuration: .release))]
    }
}
