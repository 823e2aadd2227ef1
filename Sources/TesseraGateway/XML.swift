// XML for S3: a writer for replies, and a small parser for the few request bodies S3
// takes (CompleteMultipartUpload, Delete, CreateBucketConfiguration). The parser takes
// elements, text, the five predefined entities and numeric references; it skips the XML
// declaration, comments and processing instructions, and refuses DTDs, so a body cannot
// expand or reach outside itself.

struct XMLWriter {
    private(set) var text = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n"

    static func escape(_ s: String) -> String {
        var out = ""
        out.reserveCapacity(s.utf8.count)
        for c in s.unicodeScalars {
            switch c {
            case "&": out += "&amp;"
            case "<": out += "&lt;"
            case ">": out += "&gt;"
            case "\"": out += "&quot;"
            case "'": out += "&apos;"
            default:
                if c.value < 0x20 && c != "\n" && c != "\t" && c != "\r" { out += "&#\(c.value);" } else { out.unicodeScalars.append(c) }
            }
        }
        return out
    }

    mutating func open(_ name: String, xmlns: Bool = false) {
        text += xmlns ? "<\(name) xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\">" : "<\(name)>"
    }
    /// An element with attributes (values escaped).
    mutating func open(_ name: String, attributes: [(String, String)]) {
        text += "<\(name)" + attributes.map { " \($0.0)=\"\(Self.escape($0.1))\"" }.joined() + ">"
    }
    /// Escaped text inside the element that is open.
    mutating func text(_ value: String) { text += Self.escape(value) }
    mutating func close(_ name: String) { text += "</\(name)>" }
    mutating func element(_ name: String, _ value: String) { text += "<\(name)>\(Self.escape(value))</\(name)>" }
    /// S3's Owner element: an access key is both the ID and the display name here.
    mutating func owner(_ id: String) {
        self.element("Owner") { w in
            w.element("ID", id)
            w.element("DisplayName", id)
        }
    }
    mutating func element(_ name: String, _ body: (inout XMLWriter) -> Void) {
        open(name)
        body(&self)
        close(name)
    }
}

final class XMLNode {
    let name: String
    var children: [XMLNode] = []
    var text = ""

    init(name: String) { self.name = name }

    func child(_ n: String) -> XMLNode? { children.first { $0.name == n } }
    func all(_ n: String) -> [XMLNode] { children.filter { $0.name == n } }
    func value(_ n: String) -> String? { child(n)?.text }
}

enum XMLParser {
    struct Failure: Error { var message: String }

    /// Parses a document of at most `limit` bytes into its root element.
    static func parse(_ bytes: [UInt8], limit: Int = 2 << 20, maxDepth: Int = 32) throws(Failure) -> XMLNode {
        guard bytes.count <= limit else { throw Failure(message: "XML body larger than \(limit) bytes") }
        var i = 0
        var stack: [XMLNode] = []
        var root: XMLNode?
        func startsWith(_ s: String) -> Bool {
            let u = Array(s.utf8)
            return i + u.count <= bytes.count && Array(bytes[i..<(i + u.count)]) == u
        }
        func skip(past s: String) throws(Failure) {
            let u = Array(s.utf8)
            while i + u.count <= bytes.count {
                if Array(bytes[i..<(i + u.count)]) == u {
                    i += u.count
                    return
                }
                i += 1
            }
            throw Failure(message: "unterminated markup")
        }
        func decodeText(_ raw: ArraySlice<UInt8>) throws(Failure) -> String {
            guard raw.contains(UInt8(ascii: "&")) else { return String(decoding: raw, as: UTF8.self) }
            let s = String(decoding: raw, as: UTF8.self)
            var out = ""
            var rest = Substring(s)
            while let amp = rest.firstIndex(of: "&") {
                out += rest[..<amp]
                guard let semi = rest[amp...].firstIndex(of: ";") else { throw Failure(message: "unterminated entity") }
                let name = rest[rest.index(after: amp)..<semi]
                switch name {
                case "amp": out += "&"
                case "lt": out += "<"
                case "gt": out += ">"
                case "quot": out += "\""
                case "apos": out += "'"
                default:
                    var v: UInt32?
                    if name.hasPrefix("#x") { v = UInt32(name.dropFirst(2), radix: 16) } else if name.hasPrefix("#") { v = UInt32(name.dropFirst()) }
                    guard let v, let scalar = Unicode.Scalar(v) else { throw Failure(message: "unknown entity &\(name);") }
                    out.unicodeScalars.append(scalar)
                }
                rest = rest[rest.index(after: semi)...]
            }
            return out + rest
        }
        while i < bytes.count {
            if bytes[i] == UInt8(ascii: "<") {
                if startsWith("<?") {
                    try skip(past: "?>")
                } else if startsWith("<!--") {
                    try skip(past: "-->")
                } else if startsWith("<![CDATA[") {
                    let start = i + 9
                    try skip(past: "]]>")
                    guard let top = stack.last else { throw Failure(message: "text outside the root element") }
                    top.text += String(decoding: bytes[start..<(i - 3)], as: UTF8.self)
                } else if startsWith("<!") {
                    throw Failure(message: "DTDs are not accepted")
                } else if startsWith("</") {
                    let start = i + 2
                    try skip(past: ">")
                    let name = String(decoding: bytes[start..<(i - 1)], as: UTF8.self).trimmingSpaces
                    guard let top = stack.popLast(), top.name == name else { throw Failure(message: "mismatched </\(name)>") }
                } else {
                    let start = i + 1
                    try skip(past: ">")
                    var inner = String(decoding: bytes[start..<(i - 1)], as: UTF8.self)
                    let selfClosing = inner.hasSuffix("/")
                    if selfClosing { inner.removeLast() }
                    let name = String(inner.split(whereSeparator: { $0 == " " || $0 == "\n" || $0 == "\t" || $0 == "\r" }).first ?? "")
                    let local = name.split(separator: ":").last.map(String.init) ?? name
                    guard !local.isEmpty else { throw Failure(message: "element without a name") }
                    let node = XMLNode(name: local)
                    if let top = stack.last {
                        top.children.append(node)
                        guard top.children.count <= 100_000 else { throw Failure(message: "too many elements") }
                    } else {
                        guard root == nil else { throw Failure(message: "more than one root element") }
                        root = node
                    }
                    if !selfClosing {
                        stack.append(node)
                        guard stack.count <= maxDepth else { throw Failure(message: "elements nested too deep") }
                    }
                }
            } else {
                let start = i
                while i < bytes.count && bytes[i] != UInt8(ascii: "<") { i += 1 }
                let raw = bytes[start..<i]
                if let top = stack.last {
                    top.text += try decodeText(raw)
                } else if !raw.allSatisfy({ $0 == 32 || $0 == 10 || $0 == 13 || $0 == 9 }) {
                    throw Failure(message: "text outside the root element")
                }
            }
        }
        guard stack.isEmpty, let root else { throw Failure(message: "unterminated document") }
        return root
    }
}

extension String {
    var trimmingSpaces: String {
        var s = Substring(self)
        while let f = s.first, f == " " || f == "\n" || f == "\t" || f == "\r" { s.removeFirst() }
        while let l = s.last, l == " " || l == "\n" || l == "\t" || l == "\r" { s.removeLast() }
        return String(s)
    }
}
