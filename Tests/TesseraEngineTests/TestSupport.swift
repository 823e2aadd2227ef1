// Helpers shared by the engine tests: temporary folders and small images.
import Foundation
import TesseraCore
import TesseraEngine

/// A temporary folder removed when the value is released.
final class TemporaryDirectory {
    let path: String
    init() {
        var template = Array((NSTemporaryDirectory() + "/tessera-test-XXXXXX").utf8CString)
        path = template.withUnsafeMutableBufferPointer { String(cString: mkdtemp($0.baseAddress!)!) }
    }
    deinit { try? FileManager.default.removeItem(atPath: path) }
    func file(_ name: String) -> String { path + "/" + name }
}

/// A small image with 4 KiB pages, so that modest trees already split and merge.
func makeImage(_ dir: TemporaryDirectory, name: String = "meta.img", size: UInt64 = 64 << 20, pageSize: Int = 4096, logSize: UInt64? = 4 << 20) throws -> String {
    let path = dir.file(name)
    _ = try Engine.format(path: path, size: size, pageSize: pageSize, logSize: logSize)
    return path
}

func options(cacheBytes: Int = 8 << 20) -> EngineOptions {
    var o = EngineOptions()
    o.cacheBytes = cacheBytes
    o.logger.logLevel = .warning
    return o
}

/// `options()` with placement held off for an hour: logged groups stay in the log, and a
/// crash replays them.
func unplacedOptions() -> EngineOptions {
    var o = options()
    o.commit.placeTimeoutNanos = 3_600 * 1_000_000_000
    return o
}

func bytes(_ s: String) -> [UInt8] { Array(s.utf8) }
