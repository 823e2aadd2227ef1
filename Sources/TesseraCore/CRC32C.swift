// CRC32C (Castagnoli), the checksum of every log record, header and data block.
import CTesseraSupport

public enum CRC32C {
    /// CRC32C of `bytes`, continuing from `crc` (0 to start).
    @inlinable
    public static func checksum(_ bytes: UnsafeRawBufferPointer, continuing crc: UInt32 = 0) -> UInt32 {
        guard let base = bytes.baseAddress else { return crc }
        return tessera_crc32c(crc, base, bytes.count)
    }

    public static func checksum(_ bytes: [UInt8], continuing crc: UInt32 = 0) -> UInt32 {
        bytes.withUnsafeBytes { checksum($0, continuing: crc) }
    }

    /// CRC32C of a 4 KiB data block of zeros: what a hole in a data image checks as.
    public static let zeroBlock = checksum([UInt8](repeating: 0, count: 4096))
}
