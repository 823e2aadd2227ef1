// The three date forms S3 uses, formatted and parsed with the C library (thread-safe,
// unlike a shared DateFormatter): HTTP dates (RFC 7231), ISO 8601 in XML, and SigV4's
// basic form.
import Foundation

private func format(_ d: Date, _ pattern: String) -> String {
    var t = time_t(d.timeIntervalSince1970.rounded(.down))
    var tm = tm()
    gmtime_r(&t, &tm)
    var buf = [Int8](repeating: 0, count: 64)
    let n = strftime(&buf, buf.count, pattern, &tm)
    return String(decoding: buf[..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self)
}

private let months = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]

/// Builds a date from UTC fields, checking their ranges.
private func utc(_ y: Int?, _ mo: Int?, _ d: Int?, _ h: Int?, _ mi: Int?, _ s: Int?) -> Date? {
    guard let y, let mo, let d, let h, let mi, let s, (1970...9999).contains(y), (1...12).contains(mo), (1...31).contains(d), (0...23).contains(h),
        (0...59).contains(mi), (0...60).contains(s)
    else { return nil }
    var t = tm()
    t.tm_year = Int32(y - 1900)
    t.tm_mon = Int32(mo - 1)
    t.tm_mday = Int32(d)
    t.tm_hour = Int32(h)
    t.tm_min = Int32(mi)
    t.tm_sec = Int32(s)
    return Date(timeIntervalSince1970: TimeInterval(timegm(&t)))
}

private func int(_ s: Substring) -> Int? { s.allSatisfy(\.isASCII) ? Int(s) : nil }

/// "Sat, 28 Nov 2026 05:36:33 GMT" (the C locale's day and month names are English).
func httpDate(_ d: Date) -> String { format(d, "%a, %d %b %Y %H:%M:%S GMT") }
func parseHTTPDate(_ s: String) -> Date? {
    // "Sun, 06 Nov 1994 08:49:37 GMT"
    let f = s.split(separator: " ")
    guard f.count == 6, f[5] == "GMT", let mo = months.firstIndex(of: String(f[2])) else { return nil }
    let hms = f[4].split(separator: ":")
    guard hms.count == 3 else { return nil }
    return utc(int(f[3]), mo + 1, int(f[1]), int(hms[0]), int(hms[1]), int(hms[2]))
}

/// "2026-11-28T05:36:33.000Z"
func isoDate(_ d: Date) -> String {
    let ms = Int((d.timeIntervalSince1970 * 1000).rounded(.down)) % 1000
    return format(d, "%Y-%m-%dT%H:%M:%S") + "." + String(format: "%03d", ms) + "Z"
}

/// "20261128T053633Z"
func parseAmzDate(_ s: String) -> Date? {
    let u = Array(s.utf8)
    guard u.count == 16, u[8] == UInt8(ascii: "T"), u[15] == UInt8(ascii: "Z") else { return nil }
    func n(_ a: Int, _ b: Int) -> Int? { Int(String(decoding: u[a..<b], as: UTF8.self)) }
    return utc(n(0, 4), n(4, 6), n(6, 8), n(9, 11), n(11, 13), n(13, 15))
}

func date(ns: UInt64) -> Date { Date(timeIntervalSince1970: TimeInterval(ns / 1_000_000_000) + TimeInterval(ns % 1_000_000_000) / 1e9) }

/// "20261128T053633Z"
func formatAmzDate(_ d: Date) -> String { format(d, "%Y%m%dT%H%M%SZ") }
