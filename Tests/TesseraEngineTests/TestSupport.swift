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

func bytes(_ s: String) -> [UInt8] { Array(s.utf8) }

/// A deterministic generator (SplitMix64), so a failing seed can be rerun.
struct SeededRandom: RandomNumberGenerator {
    var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}
