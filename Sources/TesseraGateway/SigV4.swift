// AWS Signature Version 4, as S3 checks it: in the Authorization header, in a presigned
// URL's query, and chunk by chunk in a signed aws-chunked body.
//
//   canonical request = method \n canonical URI \n canonical query \n canonical headers \n
//                       signed header names \n payload hash
//   string to sign    = "AWS4-HMAC-SHA256" \n amz-date \n scope \n hex(sha256(canonical request))
//   signing key       = HMAC chain of "AWS4"+secret over date, region, service, "aws4_request"
//   chunk string      = "AWS4-HMAC-SHA256-PAYLOAD" \n amz-date \n scope \n previous signature \n
//                       hex(sha256("")) \n hex(sha256(chunk))
//   trailer string    = "AWS4-HMAC-SHA256-TRAILER" \n amz-date \n scope \n previous signature \n
//                       hex(sha256(trailer lines))
import Crypto
import Foundation
import TesseraS3

struct SigV4Error: Error {
    enum Kind { case accessDenied, signatureMismatch, invalidAccessKey, expired, skewed, malformed }
    var kind: Kind
    var message: String
}

/// What a verified request was signed with: enough to check the chunks that follow.
struct SigningContext: Sendable {
    var accessKey: String
    var keyBytes: [UInt8]
    var signingKey: SymmetricKey { SymmetricKey(data: keyBytes) }
    var amzDate: String
    var scope: String
    var seedSignature: String

    func chunkSignature(previous: String, chunkHash: String) -> String {
        let s = "AWS4-HMAC-SHA256-PAYLOAD\n\(amzDate)\n\(scope)\n\(previous)\n\(SigV4.emptyHash)\n\(chunkHash)"
        return hex(HMAC<SHA256>.authenticationCode(for: Array(s.utf8), using: signingKey))
    }

    func trailerSignature(previous: String, trailerHash: String) -> String {
        let s = "AWS4-HMAC-SHA256-TRAILER\n\(amzDate)\n\(scope)\n\(previous)\n\(trailerHash)"
        return hex(HMAC<SHA256>.authenticationCode(for: Array(s.utf8), using: signingKey))
    }
}

public enum SigV4 {
    static let emptyHash = hex(SHA256.hash(data: [UInt8]()))

    /// AWS's URI encoding: unreserved characters stay, every other byte is %XX (upper case);
    /// `/` stays only in paths.
    static func encode(_ s: String, keepSlash: Bool) -> String {
        var out = ""
        out.reserveCapacity(s.utf8.count)
        for b in s.utf8 {
            switch b {
            case UInt8(ascii: "A")...UInt8(ascii: "Z"), UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "0")...UInt8(ascii: "9"),
                UInt8(ascii: "-"), UInt8(ascii: "."), UInt8(ascii: "_"), UInt8(ascii: "~"):
                out.unicodeScalars.append(UnicodeScalar(b))
            case UInt8(ascii: "/") where keepSlash:
                out.append("/")
            default:
                out += String(format: "%%%02X", b)
            }
        }
        return out
    }

    static func signingKey(secret: String, date: String, region: String, service: String) -> [UInt8] {
        func mac(_ key: [UInt8], _ data: String) -> [UInt8] { Array(HMAC<SHA256>.authenticationCode(for: Array(data.utf8), using: SymmetricKey(data: key))) }
        return mac(mac(mac(mac(Array(("AWS4" + secret).utf8), date), region), service), "aws4_request")
    }

    static func canonicalQuery(_ query: [(String, String)]) -> String {
        var pairs: [(String, String)] = []
        for (name, value) in query {
            pairs.append((encode(name, keepSlash: false), encode(value, keepSlash: false)))
        }
        pairs.sort { a, b in a.0 != b.0 ? a.0 < b.0 : a.1 < b.1 }
        return pairs.map { p in p.0 + "=" + p.1 }.joined(separator: "&")
    }

    static func canonicalHeaderValue(_ v: String) -> String {
        v.trimmingCharacters(in: .whitespaces).split(separator: " ", omittingEmptySubsequences: true).joined(separator: " ")
    }

    /// Parses "KEY/DATE/REGION/SERVICE/aws4_request".
    static func parseCredential(_ c: String) throws -> (key: String, date: String, region: String, service: String) {
        let p = c.split(separator: "/", omittingEmptySubsequences: false).map(String.init)
        guard p.count == 5, p[4] == "aws4_request", p[1].count == 8 else { throw SigV4Error(kind: .malformed, message: "malformed credential scope '\(c)'") }
        return (p[0], p[1], p[2], p[3])
    }

    /// Verifies a request; returns the signing context (for chunk signatures).
    /// `headers` are lower-cased names; `payloadHash` what the canonical request ends with.
    static func verify(
        method: String, path: String, query: [(String, String)], headers: [(String, String)], credentials: [String: String], now: Date = Date()
    ) throws -> SigningContext {
        func header(_ n: String) -> String? { headers.first { $0.0 == n }?.1 }
        let presigned = query.contains { $0.0 == "X-Amz-Algorithm" }
        let credential: String
        let signedHeaders: [String]
        let signature: String
        let amzDate: String
        let payloadHash: String
        if presigned {
            func q(_ n: String) throws -> String {
                guard let v = query.first(where: { $0.0 == n })?.1 else { throw SigV4Error(kind: .malformed, message: "presigned URL without \(n)") }
                return v
            }
            guard try q("X-Amz-Algorithm") == "AWS4-HMAC-SHA256" else { throw SigV4Error(kind: .malformed, message: "only AWS4-HMAC-SHA256 is supported") }
            credential = try q("X-Amz-Credential")
            signedHeaders = try q("X-Amz-SignedHeaders").split(separator: ";").map(String.init)
            signature = try q("X-Amz-Signature")
            amzDate = try q("X-Amz-Date")
            // Out of range is refused as S3 refuses it: AccessDenied (403), like an expired URL.
            guard let expires = Int(try q("X-Amz-Expires")) else { throw SigV4Error(kind: .malformed, message: "X-Amz-Expires must be a number of seconds") }
            guard expires >= 0 else { throw SigV4Error(kind: .expired, message: "X-Amz-Expires must be non-negative") }
            guard expires <= 604_800 else {
                throw SigV4Error(kind: .expired, message: "X-Amz-Expires must be less than a week (in seconds); that is, the given X-Amz-Expires must be less than 604800 seconds")
            }
            guard let t = parseAmzDate(amzDate) else { throw SigV4Error(kind: .malformed, message: "bad X-Amz-Date '\(amzDate)'") }
            guard expires > 0, now.timeIntervalSince(t) <= Double(expires) else { throw SigV4Error(kind: .expired, message: "Request has expired") }
            guard t.timeIntervalSince(now) <= 900 else { throw SigV4Error(kind: .skewed, message: "X-Amz-Date is in the future") }
            payloadHash = header("x-amz-content-sha256") ?? "UNSIGNED-PAYLOAD"
        } else {
            guard let auth = header("authorization") else { throw SigV4Error(kind: .accessDenied, message: "Access Denied") }
            guard auth.hasPrefix("AWS4-HMAC-SHA256 ") else {
                throw SigV4Error(kind: .malformed, message: "only AWS4-HMAC-SHA256 signatures are supported")
            }
            var fields: [String: String] = [:]
            for part in auth.dropFirst("AWS4-HMAC-SHA256 ".count).split(separator: ",") {
                let kv = part.trimmingCharacters(in: .whitespaces)
                guard let eq = kv.firstIndex(of: "=") else { continue }
                fields[String(kv[..<eq])] = String(kv[kv.index(after: eq)...])
            }
            guard let c = fields["Credential"], let sh = fields["SignedHeaders"], let sig = fields["Signature"] else {
                throw SigV4Error(kind: .malformed, message: "Authorization header lacks Credential, SignedHeaders or Signature")
            }
            credential = c
            signedHeaders = sh.split(separator: ";").map(String.init)
            signature = sig
            guard let d = header("x-amz-date") else { throw SigV4Error(kind: .malformed, message: "signed request without x-amz-date") }
            amzDate = d
            guard let t = parseAmzDate(amzDate) else { throw SigV4Error(kind: .malformed, message: "bad x-amz-date '\(amzDate)'") }
            guard abs(now.timeIntervalSince(t)) <= 900 else {
                throw SigV4Error(kind: .skewed, message: "The difference between the request time and the server's time is too large")
            }
            guard let ph = header("x-amz-content-sha256") else { throw SigV4Error(kind: .malformed, message: "signed request without x-amz-content-sha256") }
            payloadHash = ph
        }
        let cred = try parseCredential(credential)
        guard let secret = credentials[cred.key] else {
            throw SigV4Error(kind: .invalidAccessKey, message: "The AWS Access Key Id you provided does not exist in our records.")
        }
        guard amzDate.hasPrefix(cred.date) else { throw SigV4Error(kind: .malformed, message: "credential date does not match x-amz-date") }
        guard signedHeaders.contains("host") else { throw SigV4Error(kind: .malformed, message: "the host header must be signed") }

        let key = signingKey(secret: secret, date: cred.date, region: cred.region, service: cred.service)
        let scope = "\(cred.date)/\(cred.region)/\(cred.service)/aws4_request"
        let expected = SigV4.signature(
            method: method, path: path, query: query.filter { !presigned || $0.0 != "X-Amz-Signature" }, headers: headers, signedHeaders: signedHeaders,
            payloadHash: payloadHash, amzDate: amzDate, scope: scope, key: key)
        guard constantTimeEqual(expected, signature) else {
            throw SigV4Error(kind: .signatureMismatch, message: "The request signature we calculated does not match the signature you provided.")
        }
        return SigningContext(accessKey: cred.key, keyBytes: key, amzDate: amzDate, scope: scope, seedSignature: signature)
    }

    /// The signature of a request: hex HMAC of the string to sign under the signing key.
    static func signature(
        method: String, path: String, query: [(String, String)], headers: [(String, String)], signedHeaders: [String], payloadHash: String,
        amzDate: String, scope: String, key: [UInt8]
    ) -> String {
        var canonicalHeaders = ""
        for name in signedHeaders {
            let values = headers.filter { $0.0 == name }.map { canonicalHeaderValue($0.1) }
            canonicalHeaders += "\(name):\(values.joined(separator: ","))\n"
        }
        let canonical = [
            method, encode(path, keepSlash: true), canonicalQuery(query), canonicalHeaders, signedHeaders.joined(separator: ";"), payloadHash,
        ].joined(separator: "\n")
        let toSign = "AWS4-HMAC-SHA256\n\(amzDate)\n\(scope)\n\(hex(SHA256.hash(data: Array(canonical.utf8))))"
        return hex(HMAC<SHA256>.authenticationCode(for: Array(toSign.utf8), using: SymmetricKey(data: key)))
    }

    /// Signs a request for the client side (the benchmark's S3 client): returns the
    /// headers to add (`x-amz-date`, `x-amz-content-sha256`, `authorization`). `headers`
    /// must hold `host`; every header given is signed.
    public static func sign(
        method: String, path: String, query: [(String, String)] = [], headers: [(String, String)], payloadHash: String = "UNSIGNED-PAYLOAD",
        accessKey: String, secret: String, region: String, now: Date = Date()
    ) -> [(String, String)] {
        let amzDate = formatAmzDate(now)
        let day = String(amzDate.prefix(8))
        let scope = "\(day)/\(region)/s3/aws4_request"
        let all = headers.map { ($0.0.lowercased(), $0.1) } + [("x-amz-date", amzDate), ("x-amz-content-sha256", payloadHash)]
        let names = Array(Set(all.map(\.0))).sorted()
        let key = signingKey(secret: secret, date: day, region: region, service: "s3")
        let sig = signature(method: method, path: path, query: query, headers: all, signedHeaders: names, payloadHash: payloadHash, amzDate: amzDate, scope: scope, key: key)
        return [
            ("x-amz-date", amzDate), ("x-amz-content-sha256", payloadHash),
            ("authorization", "AWS4-HMAC-SHA256 Credential=\(accessKey)/\(scope),SignedHeaders=\(names.joined(separator: ";")),Signature=\(sig)"),
        ]
    }

    static func constantTimeEqual(_ a: String, _ b: String) -> Bool {
        let x = Array(a.utf8)
        let y = Array(b.utf8)
        guard x.count == y.count else { return false }
        var d: UInt8 = 0
        for i in 0..<x.count { d |= x[i] ^ y[i] }
        return d == 0
    }
}

func hex(_ d: SHA256.Digest) -> String { hex(Array(d)) }
func hex(_ d: HashedAuthenticationCode<SHA256>) -> String { hex(Array(d)) }
