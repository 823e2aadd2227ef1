// `tessera mkfs`: format a metadata image.
import ArgumentParser
import TesseraCore
import TesseraEngine

struct Mkfs: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Format a metadata image.")

    @Option(name: .long, help: "Path of the metadata image to create (it must not exist).")
    var meta: String

    @Option(name: .long, help: "Image size, such as 256M or 4G.")
    var size: String = "1G"

    @Option(name: .long, help: "B-tree node (page) size in bytes: 4096, 8192, 16384 or 32768.")
    var pageSize: Int = 16384

    @Option(name: .long, help: "Log size (default: 1/8 of the image, 4 MiB to 256 MiB).")
    var logSize: String?

    func run() throws {
        let size = try parseSize(self.size)
        let log = try logSize.map(parseSize)
        do {
            let g = try Engine.format(path: meta, size: size, pageSize: pageSize, logSize: log)
            print("\(meta): \(g.imageSize) bytes, log \(g.logSize) bytes, \(g.pageCount) pages of \(g.pageSize) bytes")
        } catch let e as TesseraError {
            printError(e.message)
            throw ExitCode(1)
        }
    }
}
