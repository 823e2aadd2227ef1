// `tessera mkfs`: format a server's images from the cluster file, or one metadata image.
import ArgumentParser
import Foundation
import TesseraConfig
import TesseraCore
import TesseraEngine
import TesseraLocal
import TesseraServices

struct Mkfs: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Format images: a server's meta.img and data.img (--config, --id), or one metadata image (--meta).")

    @Option(help: "Cluster file; with --id, formats that server's images with the sizes it gives.")
    var config: String?

    @Option(help: "Server id in the cluster file.")
    var id: Int?

    @Option(name: .long, help: "Path of a metadata image to create on its own (it must not exist).")
    var meta: String?

    @Option(name: .long, help: "Size of the --meta image, such as 256M or 4G.")
    var size: String = "1G"

    @Option(name: .long, help: "B-tree node (page) size in bytes: 4096, 8192, 16384 or 32768.")
    var pageSize: Int = 16384

    @Option(name: .long, help: "Log size (default: 1/8 of the image, 4 MiB to 256 MiB).")
    var logSize: String?

    func validate() throws {
        guard (config != nil) == (id != nil) else { throw ValidationError("--config and --id go together") }
        guard (config != nil) != (meta != nil) else { throw ValidationError("give either --config FILE --id N, or --meta IMAGE") }
    }

    func run() throws {
        do {
            if let config, let id {
                let server = try ClusterConfig.load(path: config).server(id)
                for path in [server.metaPath, server.dataPath] {
                    try FileManager.default.createDirectory(atPath: (path as NSString).deletingLastPathComponent, withIntermediateDirectories: true)
                }
                let g = try Engine.format(path: server.metaPath, size: server.metaSize, pageSize: pageSize, logSize: try logSize.map(parseSize))
                print("\(server.metaPath): \(g.imageSize) bytes, log \(g.logSize) bytes, \(g.pageCount) pages of \(g.pageSize) bytes")
                let d = try DataImage.format(path: server.dataPath, size: server.dataSize)
                print("\(server.dataPath): \(d.imageSize) bytes, \(d.blockCount) blocks of \(d.blockSize) bytes")
            } else if let meta {
                let g = try Engine.format(path: meta, size: try parseSize(size), pageSize: pageSize, logSize: try logSize.map(parseSize))
                print("\(meta): \(g.imageSize) bytes, log \(g.logSize) bytes, \(g.pageCount) pages of \(g.pageSize) bytes")
            }
        } catch let e as TesseraError {
            printError(e.message)
            throw ExitCode(1)
        }
    }
}
