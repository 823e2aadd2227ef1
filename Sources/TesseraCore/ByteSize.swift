// Sizes as people write them: 4096, 64K, 256M, 1G, 2T (binary multiples), optional "B"/"iB".

public enum ByteSize {
    /// Parses a size; nil if `text` is not one.
    public static func parse(_ text: String) -> UInt64? {
        let units: [Character: UInt64] = ["K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40]
        var digits = Substring(text.uppercased().trimmingSpaces())
        if digits.hasSuffix("IB") { digits = digits.dropLast(2) } else if digits.hasSuffix("B") { digits = digits.dropLast() }
        var multiplier: UInt64 = 1
        if let last = digits.last, let m = units[last] {
            multiplier = m
            digits = digits.dropLast()
        }
        guard let n = UInt64(digits) else { return nil }
        let (v, overflow) = n.multipliedReportingOverflow(by: multiplier)
        return overflow ? nil : v
    }

    /// Parses a size given as an option or setting; a clear error if `text` is not one.
    public static func required(_ text: String) throws -> UInt64 {
        guard let n = parse(text) else { throw TesseraError(.invalidArgument, "'\(text)' is not a size (examples: 1048576, 64M, 1G)") }
        return n
    }
}

extension String {
    func trimmingSpaces() -> Substring {
        var s = Substring(self)
        while s.first == " " { s = s.dropFirst() }
        while s.last == " " { s = s.dropLast() }
        return s
    }
}
