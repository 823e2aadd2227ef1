// `tessera mkfs` and `tessera check` as a user runs them: exit codes and messages.
import Foundation
import Testing
import TesseraEngine
import TesseraLocal

@Suite struct CheckCommandTests {
    struct Run {
        var status: Int32
        var output: String
    }

    static func tessera(_ args: [String]) throws -> Run {
        let p = try ChildProcess(tesseraBinary(), args, stdout: .pipe, stderr: .stdout)
        let data = p.readOutput()
        return Run(status: p.wait().status, output: String(decoding: data, as: UTF8.self))
    }

    static func patch(_ path: String, at offset: Int, _ bytes: [UInt8]) throws {
        let h = try FileHandle(forUpdating: URL(fileURLWithPath: path))
        try h.seek(toOffset: UInt64(offset))
        h.write(Data(bytes))
        try h.close()
    }

    @Test func mkfsThenCheckIsClean() throws {
        let dir = TemporaryDirectory()
        let image = dir.file("meta.img")
        let mkfs = try Self.tessera(["mkfs", "--meta", image, "--size", "64M"])
        #expect(mkfs.status == 0, "\(mkfs.output)")
        let check = try Self.tessera(["check", image])
        #expect(check.status == 0, "\(check.output)")
        #expect(check.output.contains("clean"))
        let again = try Self.tessera(["mkfs", "--meta", image])
        #expect(again.status == 1 && again.output.contains("already exists"))
    }

    @Test func usageErrorsExitTwo() throws {
        #expect(try Self.tessera(["mkfs"]).status == 2)
        #expect(try Self.tessera(["mkfs", "--meta", "/tmp/x", "--size", "lots"]).status == 2)
        #expect(try Self.tessera(["no-such-command"]).status == 2)
    }

    @Test func corruptNodeIsReportedWithExitOne() throws {
        let dir = TemporaryDirectory()
        let image = try makeImage(dir, size: 32 << 20, pageSize: 4096, logSize: 1 << 20)
        let engine = try Engine.open(path: image, options: options())
        try engine.write { t in
            try t.createCatalogue(.init(hi: 1, lo: 1))
            for i in 0..<500 { try t.put(.init(hi: 1, lo: 1), bytes("key-\(i)"), [UInt8](repeating: 3, count: 40)) }
        }
        try engine.close()
        let segment = 8192 + (1 << 20)
        // Swap two slots of the catalogue's first leaf: keys out of order.
        let leaf = segment + 3 * 4096
        let h = try FileHandle(forReadingFrom: URL(fileURLWithPath: image))
        try h.seek(toOffset: UInt64(leaf + 24))
        let slots = [UInt8](h.readData(ofLength: 4))
        try h.close()
        try Self.patch(image, at: leaf + 24, [slots[2], slots[3], slots[0], slots[1]])
        let check = try Self.tessera(["check", image])
        #expect(check.status == 1, "\(check.output)")
        #expect(check.output.contains("out of order"), "\(check.output)")
        // Garbage over a whole node: reported, not a crash.
        try Self.patch(image, at: segment + 4 * 4096, [UInt8](repeating: 0xA5, count: 4096))
        let garbage = try Self.tessera(["check", image])
        #expect(garbage.status == 1, "\(garbage.output)")
        #expect(garbage.output.contains("problem:"), "\(garbage.output)")
    }

    @Test func unreadableImagesExitTwoWithAMessage() throws {
        let dir = TemporaryDirectory()
        let missing = try Self.tessera(["check", dir.file("none.img")])
        #expect(missing.status == 2 && missing.output.contains("does not exist"), "\(missing.output)")

        let notAnImage = dir.file("text.img")
        try Data(repeating: 0x41, count: 100_000).write(to: URL(fileURLWithPath: notAnImage))
        let wrong = try Self.tessera(["check", notAnImage])
        #expect(wrong.status == 2 && wrong.output.contains("bad magic"), "\(wrong.output)")

        let image = try makeImage(dir, size: 32 << 20, pageSize: 4096, logSize: 1 << 20)
        let truncated = dir.file("truncated.img")
        try FileManager.default.copyItem(atPath: image, toPath: truncated)
        truncate(truncated, 1 << 20)
        let cut = try Self.tessera(["check", truncated])
        #expect(cut.status == 2 && cut.output.contains("truncated"), "\(cut.output)")

        let newer = dir.file("newer.img")
        try FileManager.default.copyItem(atPath: image, toPath: newer)
        for slot in [0, 4096] { try Self.patch(newer, at: slot + 8, [9, 0, 0, 0]) }
        let version = try Self.tessera(["check", newer])
        #expect(version.status == 2 && version.output.contains("newer"), "\(version.output)")

        let oneSlot = dir.file("oneslot.img")
        try FileManager.default.copyItem(atPath: image, toPath: oneSlot)
        try Self.patch(oneSlot, at: 100, [1, 2, 3])
        let slot = try Self.tessera(["check", oneSlot])
        #expect(slot.status == 1 && slot.output.contains("checksum mismatch"), "\(slot.output)")
    }
}
