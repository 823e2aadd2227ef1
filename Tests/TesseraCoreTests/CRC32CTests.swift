// CRC32C against the standard check value and in pieces.
import Testing
import TesseraCore

@Suite struct CRC32CTests {
    @Test func standardCheckValue() {
        #expect(CRC32C.checksum(Array("123456789".utf8)) == 0xE306_9283)
    }

    @Test func emptyIsZero() {
        #expect(CRC32C.checksum([]) == 0)
    }

    @Test func continuesAcrossPieces() {
        let bytes = (0..<1000).map { UInt8(truncatingIfNeeded: $0 &* 31) }
        let whole = CRC32C.checksum(bytes)
        for cut in [0, 1, 7, 8, 9, 500, 999, 1000] {
            let first = CRC32C.checksum(Array(bytes[..<cut]))
            #expect(CRC32C.checksum(Array(bytes[cut...]), continuing: first) == whole)
        }
    }
}
