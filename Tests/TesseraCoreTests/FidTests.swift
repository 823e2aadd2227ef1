// Fid text and byte forms, and that byte order is numeric order.
import Testing
import TesseraCore

@Suite struct FidTests {
    @Test func textRoundTrip() {
        let fid = Fid(hi: 0xDEAD, lo: 0xBEEF)
        #expect(fid.description == "0xdead:0xbeef")
        #expect(Fid(fid.description) == fid)
        #expect(Fid("1:2") == Fid(hi: 1, lo: 2))
        for bad in ["", "1", "1:", ":1", "x:1", "1:2:3", "0x1ffffffffffffffff:1"] { #expect(Fid(bad) == nil, "\(bad)") }
    }

    @Test func byteOrderIsNumericOrder() {
        var rng = SeededRandom.forRun("FidTests.byteOrderIsNumericOrder")
        for _ in 0..<1000 {
            let a = Fid(hi: UInt64.random(in: 0...3, using: &rng), lo: UInt64.random(in: 0...UInt64.max, using: &rng))
            let b = Fid(hi: UInt64.random(in: 0...3, using: &rng), lo: UInt64.random(in: 0...UInt64.max, using: &rng))
            #expect((a < b) == a.bytes.lexicographicallyPrecedes(b.bytes))
            #expect(Fid(bytes: a.bytes) == a)
        }
        #expect(Fid(bytes: [1, 2, 3]) == nil)
    }
}
