// Capture of the regions a transaction modifies, and the undo that can take them back.
#if canImport(Glibc)
import Glibc
#endif
import TesseraCore

/// The running transaction's view of what it changed. Every change to a cached page is
/// declared with `willModify` first: the old bytes go to the undo log, and the 64-byte
/// chunks touched are marked, to be copied into the commit group at close.
final class TxContext {
    static let chunk = 64
    let pageSize: Int
    private(set) var touched: [Frame] = []
    private var undoBytes: [UInt8] = []
    private var undoEntries: [(frame: Frame, offset: Int, length: Int)] = []
    /// Bytes the transaction journals for another image (`Transaction.journal`), in order.
    private var journalBytes: [UInt8] = []
    private var journalEntries: [(offset: UInt64, length: Int)] = []
    var active = false
    var journals: Bool { !journalEntries.isEmpty }

    init(pageSize: Int) { self.pageSize = pageSize }

    func willModify(_ f: Frame, _ offset: Int, _ length: Int) {
        precondition(active, "page modified outside a transaction")
        guard length > 0 else { return }
        precondition(offset >= 0 && offset + length <= pageSize)
        if !f.inTransaction {
            f.inTransaction = true
            if f.txMask.isEmpty { f.txMask = [UInt64](repeating: 0, count: pageSize / TxContext.chunk / 64) }
            touched.append(f)
        }
        undoBytes.append(contentsOf: UnsafeRawBufferPointer(start: f.data + offset, count: length))
        undoEntries.append((f, offset, length))
        var c = offset / TxContext.chunk
        let last = (offset + length - 1) / TxContext.chunk
        while c <= last {
            f.txMask[c >> 6] |= 1 << UInt64(c & 63)
            c += 1
        }
    }

    /// Calls `body(page, offsetInPage, length)` for each run of modified chunks.
    func forEachRegion(_ body: (Frame, Int, Int) -> Void) {
        let chunks = pageSize / TxContext.chunk
        for f in touched {
            var c = 0
            while c < chunks {
                if f.txMask[c >> 6] == 0 {
                    c = (c | 63) + 1
                    continue
                }
                guard f.txMask[c >> 6] & (1 << UInt64(c & 63)) != 0 else {
                    c += 1
                    continue
                }
                let start = c
                while c < chunks && f.txMask[c >> 6] & (1 << UInt64(c & 63)) != 0 { c += 1 }
                body(f, start * TxContext.chunk, (c - start) * TxContext.chunk)
            }
        }
    }

    func journal(_ bytes: UnsafeRawBufferPointer, at offset: UInt64) {
        precondition(active, "journal outside a transaction")
        journalEntries.append((offset, bytes.count))
        journalBytes.append(contentsOf: bytes)
    }

    /// Payload bytes and region count this transaction adds to a log record.
    func payloadSize() -> (bytes: Int, regions: Int) {
        var bytes = journalBytes.count + journalEntries.count * LogRecord.regionHeaderSize
        var regions = journalEntries.count
        forEachRegion { _, _, len in
            bytes += LogRecord.regionHeaderSize + len
            regions += 1
        }
        return (bytes, regions)
    }

    /// Appends this transaction's regions to a log-record payload: journaled bytes first,
    /// then the segment's.
    func appendPayload(to buffer: inout [UInt8]) {
        var at = 0
        for e in journalEntries {
            buffer.appendLE(e.offset | LogRecord.dataRegion)
            buffer.appendLE(UInt32(e.length))
            buffer.append(contentsOf: journalBytes[at..<(at + e.length)])
            at += e.length
        }
        forEachRegion { f, offset, length in
            buffer.appendLE(f.page * UInt64(pageSize) + UInt64(offset))
            buffer.appendLE(UInt32(length))
            buffer.append(contentsOf: UnsafeRawBufferPointer(start: f.data + offset, count: length))
        }
    }

    /// Ends the transaction: its frames belong to `group` from now on.
    func finish(group: UInt64) {
        for f in touched {
            f.lastGroup = group
            f.inTransaction = false
            for i in f.txMask.indices { f.txMask[i] = 0 }
        }
        reset()
    }

    /// Puts back every byte the transaction changed, newest change first.
    func rollback() {
        var end = undoBytes.count
        undoBytes.withUnsafeBytes { undo in
            for e in undoEntries.reversed() {
                end -= e.length
                (e.frame.data + e.offset).copyMemory(from: undo.baseAddress! + end, byteCount: e.length)
                e.frame.validated = false
            }
        }
        for f in touched {
            f.inTransaction = false
            for i in f.txMask.indices { f.txMask[i] = 0 }
        }
        reset()
    }

    private func reset() {
        touched.removeAll(keepingCapacity: true)
        undoBytes.removeAll(keepingCapacity: true)
        undoEntries.removeAll(keepingCapacity: true)
        journalBytes.removeAll(keepingCapacity: journalBytes.count <= 1 << 20)
        journalEntries.removeAll(keepingCapacity: true)
        active = false
    }
}
