// Cuts a byte stream carrying one JSON object after another (etcd's watch and keep-alive
// streams: objects separated by newlines) into whole objects, however the bytes arrive.
import TesseraCore

/// Takes bytes in any pieces and returns each top-level JSON object once its closing brace
/// has arrived. It tracks only nesting and strings (with their escapes), so it never parses
/// an object twice; `JSONObject(parsing:)` checks the object itself.
struct JSONStreamSplitter {
    /// A received object larger than this is an error, not an ever-growing buffer.
    let limit: Int
    private var buffer: [UInt8] = []
    /// Where the scan resumes in `buffer`, and its state there.
    private var scanned = 0
    private var depth = 0
    private var inString = false
    private var escaped = false

    init(limit: Int = 16 << 20) { self.limit = limit }

    /// Bytes received but not yet part of a returned object (whitespace excluded).
    var hasPartialObject: Bool { buffer.contains { !Self.isSpace($0) } }

    /// Appends `bytes` and returns the objects they completed, in order.
    /// - Complexity: O(n) in the bytes appended, amortized.
    mutating func append(_ bytes: some Collection<UInt8>) throws -> [ArraySlice<UInt8>] {
        buffer.append(contentsOf: bytes)
        var objects: [ArraySlice<UInt8>] = []
        var start = 0
        while scanned < buffer.count {
            let byte = buffer[scanned]
            scanned += 1
            if depth == 0 {
                if Self.isSpace(byte) {
                    start = scanned
                    continue
                }
                guard byte == UInt8(ascii: "{") else {
                    throw TesseraError(.corrupt, "the stream holds \(JSONObject.preview(buffer[(scanned - 1)...])) where a JSON object should start")
                }
                start = scanned - 1
                depth = 1
                continue
            }
            if step(byte) {
                objects.append(buffer[start..<scanned])
                start = scanned
            }
        }
        try keep(from: start)
        return objects
    }

    /// Advances the nesting state over one byte inside an object; true when it closed it.
    private mutating func step(_ byte: UInt8) -> Bool {
        if inString {
            if escaped {
                escaped = false
            } else if byte == UInt8(ascii: "\\") {
                escaped = true
            } else if byte == UInt8(ascii: "\"") {
                inString = false
            }
            return false
        }
        switch byte {
        case UInt8(ascii: "\""): inString = true
        case UInt8(ascii: "{"), UInt8(ascii: "["): depth += 1
        case UInt8(ascii: "}"), UInt8(ascii: "]"): depth -= 1
        default: break
        }
        return depth == 0
    }

    /// Drops the bytes before `start` (returned objects, whitespace) and checks the limit.
    private mutating func keep(from start: Int) throws {
        // Slices already returned hold their own copy of the storage (copy on write).
        buffer.removeFirst(start)
        scanned -= start
        guard buffer.count <= limit else {
            throw TesseraError(.tooLarge, "a streamed JSON object passed \(limit) bytes")
        }
    }

    private static func isSpace(_ b: UInt8) -> Bool {
        b == UInt8(ascii: " ") || b == UInt8(ascii: "\n") || b == UInt8(ascii: "\r") || b == UInt8(ascii: "\t")
    }
}
