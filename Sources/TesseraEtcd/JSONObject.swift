// Typed, checked access to a JSON object received from etcd: a missing field is protobuf's
// default (0, false, empty), a field of the wrong type is an error, never a trap.
import Foundation
import TesseraCore

/// A parsed JSON object. Every accessor throws `TesseraError(.corrupt)` naming the field
/// when the received value has the wrong shape.
struct JSONObject {
    private let fields: [String: Any]

    init(_ fields: [String: Any]) { self.fields = fields }

    /// Parses `bytes`, which must hold one JSON object.
    init(parsing bytes: some Collection<UInt8>) throws {
        let value: Any
        do {
            value = try JSONSerialization.jsonObject(with: Data(bytes), options: [])
        } catch {
            throw TesseraError(.corrupt, "the reply is not JSON: \(Self.preview(bytes))")
        }
        guard let object = value as? [String: Any] else {
            throw TesseraError(.corrupt, "the reply is JSON but not an object: \(Self.preview(bytes))")
        }
        fields = object
    }

    func has(_ name: String) -> Bool { fields[name] != nil }

    /// An int64, which etcd sends as a JSON string (numbers are accepted too); 0 if absent.
    func int64(_ name: String) throws -> Int64 {
        switch fields[name] {
        case nil, is NSNull: return 0
        case let s as String:
            guard let v = Int64(s) else { throw Self.wrong(name, "an int64", s) }
            return v
        case let n as NSNumber:
            // JSON true and false are NSNumbers too; fractions are refused, not truncated.
            switch String(cString: n.objCType) {
            case "c": throw Self.wrong(name, "an int64", n.boolValue)
            case "d", "f":
                guard let v = Int64(exactly: n.doubleValue) else { throw Self.wrong(name, "an int64", n) }
                return v
            default: return n.int64Value
            }
        case let other?: throw Self.wrong(name, "an int64", other)
        }
    }

    /// A boolean; false if absent.
    func bool(_ name: String) throws -> Bool {
        switch fields[name] {
        case nil, is NSNull: return false
        // A parsed JSON boolean is an NSNumber of type char; other numbers are not booleans.
        case let n as NSNumber where String(cString: n.objCType) == "c": return n.boolValue
        case let other?: throw Self.wrong(name, "a boolean", other)
        }
    }

    /// A string, nil if absent.
    func string(_ name: String) throws -> String? {
        switch fields[name] {
        case nil, is NSNull: return nil
        case let s as String: return s
        case let other?: throw Self.wrong(name, "a string", other)
        }
    }

    /// Bytes sent base64-encoded (keys and values); empty if absent.
    func bytes(_ name: String) throws -> [UInt8] {
        guard let s = try string(name) else { return [] }
        guard let data = Data(base64Encoded: s) else { throw Self.wrong(name, "base64", s) }
        return [UInt8](data)
    }

    /// A nested object, nil if absent.
    func object(_ name: String) throws -> JSONObject? {
        switch fields[name] {
        case nil, is NSNull: return nil
        case let o as [String: Any]: return JSONObject(o)
        case let other?: throw Self.wrong(name, "an object", other)
        }
    }

    /// A list of objects; empty if absent.
    func objects(_ name: String) throws -> [JSONObject] {
        switch fields[name] {
        case nil, is NSNull: return []
        case let list as [Any]:
            return try list.map {
                guard let o = $0 as? [String: Any] else { throw Self.wrong(name, "a list of objects", $0) }
                return JSONObject(o)
            }
        case let other?: throw Self.wrong(name, "a list", other)
        }
    }

    /// Encodes a request body.
    static func encode(_ object: [String: Any]) -> [UInt8] {
        // Only strings, numbers, booleans, lists and objects are ever put in: cannot fail.
        (try? [UInt8](JSONSerialization.data(withJSONObject: object, options: []))) ?? Array("{}".utf8)
    }

    /// The start of received bytes, printable, for error messages.
    static func preview(_ bytes: some Collection<UInt8>, limit: Int = 120) -> String {
        let text = String(decoding: bytes.prefix(limit), as: UTF8.self)
        let printable = String(text.unicodeScalars.map { $0.properties.isWhitespace || $0.value < 0x20 ? " " : Character($0) })
        let trimmed = printable.trimmingCharacters(in: .whitespaces)
        if trimmed.isEmpty { return "(\(bytes.count) bytes)" }
        return bytes.count > limit ? "\"\(trimmed)…\"" : "\"\(trimmed)\""
    }

    private static func wrong(_ name: String, _ expected: String, _ got: Any) -> TesseraError {
        TesseraError(.corrupt, "field \"\(name)\" is not \(expected): \(String(describing: got).prefix(80))")
    }
}

extension Array where Element == UInt8 {
    /// Base64, as etcd's JSON carries keys and values.
    var base64: String { Data(self).base64EncodedString() }
}
