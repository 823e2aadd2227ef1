// `tessera check`: audit an image and print what was found.
import ArgumentParser
import Foundation
import TesseraCore
import TesseraEngine
import TesseraLocal
import TesseraServices

struct Check: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Audit a metadata image: exit 0 if clean, 1 if problems were found, 2 if unreadable.",
        discussion: "Committed log records are replayed first, as on any open; data blocks they journaled go to the server's data image.")

    @Argument(help: "The image to check.")
    var image: String

    @Option(help: "The server's data image, for data blocks journaled in the log (default: data.img beside the image, if there is one).")
    var data: String?

    func run() throws {
        let engine: Engine
        var dataFile: DataFile?
        do {
            var options = EngineOptions()
            let sibling = ((image as NSString).deletingLastPathComponent as NSString).appendingPathComponent("data.img")
            if let path = data ?? (FileManager.default.fileExists(atPath: sibling) ? sibling : nil) {
                let d = try DataFile(path: path)
                d.hook(into: &options)
                dataFile = d
            }
            engine = try Engine.open(path: image, options: options)
        } catch let e as TesseraError {
            printError("\(e.message)")
            throw ExitCode(2)
        }
        defer {
            try? engine.close()
            dataFile?.close()
        }
        let report: AuditReport
        do {
            report = try engine.audit()
        } catch let e as TesseraError {
            printError("\(image): audit stopped: \(e.message)")
            throw ExitCode(1)
        }
        let problems = engine.headerProblems + report.problems
        print("\(image): \(report.catalogues) catalogues, \(report.records) records, \(report.treePages) tree pages, \(report.freePages) free pages, high-water mark \(report.highWater) of \(engine.geometry.pageCount) pages")
        if engine.recoveredGroups > 0 { print("\(image): replayed \(engine.recoveredGroups) commit groups from the log") }
        if report.droppedCatalogues > 0 { print("\(image): \(report.droppedCatalogues) dropped catalogues still being reclaimed") }
        guard problems.isEmpty else {
            for p in problems { print("problem: \(p)") }
            print("\(image): \(problems.count) problems found")
            throw ExitCode(1)
        }
        print("\(image): clean")
    }
}
