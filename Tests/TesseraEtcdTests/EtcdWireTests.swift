// The codecs without etcd: the JSON stream splitter fed in every way, prefix ranges, and
// replies of the wrong shape becoming errors.
import TesseraCore
import XCTest

@testable import TesseraEtcd

final class EtcdWireTests: XCTestCase {
    let messages = [
        #"{"result":{"header":{"revision":"5"},"created":true}}"#,
        #"{"result":{"events":[{"kv":{"key":"e30=","value":"In0i"}}],"note":"a } and a { and \" in a string \\"}}"#,
        #"{"a":[{"b":[]},{}]}"#,
    ]

    var stream: [UInt8] { Array(messages.joined(separator: "\n").utf8) + Array("\n".utf8) }

    func split(_ pieces: [[UInt8]]) throws -> [String] {
        var splitter = JSONStreamSplitter()
        var out: [String] = []
        for p in pieces { out += try splitter.append(p).map { String(decoding: $0, as: UTF8.self) } }
        XCTAssertFalse(splitter.hasPartialObject)
        return out
    }

    func testSplitterAllAtOnceByteByByteAndPerMessage() throws {
        XCTAssertEqual(try split([stream]), messages)
        XCTAssertEqual(try split(stream.map { [$0] }), messages)
        XCTAssertEqual(try split(messages.map { Array($0.utf8) }), messages, "objects back to back without newlines")
        for cut in stride(from: 1, to: stream.count, by: 7) {
            XCTAssertEqual(try split([Array(stream[..<cut]), Array(stream[cut...])]), messages, "cut at \(cut)")
        }
    }

    func testSplitterHoldsAPartialObject() throws {
        var splitter = JSONStreamSplitter()
        XCTAssertEqual(try splitter.append(Array(#"{"a":"{"#.utf8)).count, 0)
        XCTAssertTrue(splitter.hasPartialObject)
        XCTAssertEqual(try splitter.append(Array(#""}"#.utf8)).count, 1)
    }

    func testSplitterRefusesGarbageAndHugeObjects() {
        var splitter = JSONStreamSplitter()
        XCTAssertThrowsError(try splitter.append(Array("<html>".utf8)))
        var small = JSONStreamSplitter(limit: 16)
        XCTAssertThrowsError(try small.append(Array(#"{"a":"0123456789abcdef"#.utf8))) { error in
            XCTAssertEqual((error as? TesseraError)?.code, .tooLarge)
        }
    }

    func testPrefixRange() {
        XCTAssertEqual(EtcdWire.prefixRange("a/").end, Array("a0".utf8))
        XCTAssertEqual(EtcdWire.prefixRange("").key, [0])
        XCTAssertEqual(EtcdWire.prefixRange("").end, [0])
        // "\u{7f}" stays one byte; "ÿ" is 0xC3 0xBF, whose last byte increments.
        XCTAssertEqual(EtcdWire.prefixRange("a\u{7f}").end, [0x61, 0x80])
        XCTAssertEqual(EtcdWire.prefixRange("ÿ").end, [0xC3, 0xC0])
    }

    func testWrongShapesAreErrorsNotCrashes() throws {
        func object(_ json: String) throws -> JSONObject { try JSONObject(parsing: Array(json.utf8)) }
        XCTAssertThrowsError(try object("not json"))
        XCTAssertThrowsError(try object("[1,2]"))
        XCTAssertThrowsError(try object(#"{"kvs":{}}"#).objects("kvs"))
        XCTAssertThrowsError(try object(#"{"kvs":[1]}"#).objects("kvs"))
        XCTAssertThrowsError(try object(#"{"revision":"12x"}"#).int64("revision"))
        XCTAssertThrowsError(try object(#"{"revision":1.5}"#).int64("revision"))
        XCTAssertThrowsError(try object(#"{"revision":true}"#).int64("revision"))
        XCTAssertThrowsError(try object(#"{"key":"***"}"#).bytes("key"))
        XCTAssertThrowsError(try object(#"{"succeeded":"yes"}"#).bool("succeeded"))
        XCTAssertEqual(try object(#"{"revision":"-3"}"#).int64("revision"), -3)
        XCTAssertEqual(try object(#"{"revision":7}"#).int64("revision"), 7)
        XCTAssertEqual(try object("{}").int64("revision"), 0)
        XCTAssertEqual(try object(#"{"succeeded":true}"#).bool("succeeded"), true)
        XCTAssertEqual(try object(#"{"succeeded":false}"#).bool("succeeded"), false)
        XCTAssertThrowsError(try object(#"{"succeeded":1}"#).bool("succeeded"))
        XCTAssertEqual(try object(#"{"revision":9007199254740993}"#).int64("revision"), 9007199254740993, "no rounding through a double")
        // A transaction reply with fewer results than operations.
        let reply = try object(#"{"header":{"revision":"3"},"succeeded":true,"responses":[]}"#)
        XCTAssertThrowsError(try EtcdWire.txnResult(reply, success: [.get("a")], failure: []))
        XCTAssertThrowsError(try EtcdWatcher.event(object(#"{"type":"EXPLODE","kv":{}}"#)))
    }
}
