// Access control lists: the two canned ACLs the gateway keeps, `private` (the owner alone)
// and `public-read` (anyone may read), set by `x-amz-acl` or by an AccessControlPolicy body
// that grants just those, and written back as S3's AccessControlPolicy. Grants to other
// accounts are NotImplemented. A bucket keeps its ACL in its record's public-read flag; an
// object keeps `public-read` as its `x-amz-acl` attribute (absent: private).
import Foundation

enum CannedACL: String {
    case `private` = "private"
    case publicRead = "public-read"

    /// The attribute an object's ACL is kept in.
    static let attribute = "x-amz-acl"

    /// The attributes of a Grantee element of type `type`.
    private static func grantee(_ type: String) -> [(String, String)] {
        [("xmlns:xsi", "http://www.w3.org/2001/XMLSchema-instance"), ("xsi:type", type)]
    }

    /// The group anyone is in.
    static let allUsers = "http://acs.amazonaws.com/groups/global/AllUsers"

    /// The canned ACL `x-amz-acl` of a bucket request names (nil: none named).
    init?(bucketHeaders r: HTTPRequest) throws {
        try Self.refuseGrants(r)
        guard let v = r.header("x-amz-acl") else { return nil }
        guard let acl = CannedACL(rawValue: v.trimmingCharacters(in: .whitespaces)) else { throw Self.unserved(v) }
        self = acl
    }

    /// The canned ACL `x-amz-acl` of an object request names (nil: none named). The
    /// bucket-owner ACLs are `private` here, as the bucket's owner owns every object in it.
    init?(objectHeaders r: HTTPRequest) throws {
        try Self.refuseGrants(r)
        guard let v = r.header("x-amz-acl")?.trimmingCharacters(in: .whitespaces) else { return nil }
        if v == "bucket-owner-full-control" || v == "bucket-owner-read" {
            self = .private
            return
        }
        guard let acl = CannedACL(rawValue: v) else { throw Self.unserved(v) }
        self = acl
    }

    /// The ACL an AccessControlPolicy body sets: the owner's FULL_CONTROL, and READ for
    /// AllUsers or not. Any other grant is NotImplemented.
    init(policy bytes: [UInt8], owner: String) throws {
        let root: XMLNode
        do { root = try XMLParser.parse(bytes) } catch { throw S3Error.malformedXML() }
        guard root.name == "AccessControlPolicy" else { throw S3Error.malformedXML() }
        var publicRead = false
        for grant in root.child("AccessControlList")?.all("Grant") ?? [] {
            guard let grantee = grant.child("Grantee"), let permission = grant.value("Permission")?.trimmingSpaces else { throw S3Error.malformedXML() }
            if let id = grantee.value("ID")?.trimmingSpaces, id == owner, permission == "FULL_CONTROL" { continue }
            if grantee.value("URI")?.trimmingSpaces == Self.allUsers, permission == "READ" {
                publicRead = true
                continue
            }
            throw S3Error.notImplemented("an ACL grant other than the owner's FULL_CONTROL and READ for AllUsers")
        }
        self = publicRead ? .publicRead : .private
    }

    private static func refuseGrants(_ r: HTTPRequest) throws {
        if r.headers.contains(where: { $0.0.hasPrefix("x-amz-grant-") }) { throw S3Error.notImplemented("ACL grants to other accounts (x-amz-grant-*)") }
    }

    private static func unserved(_ v: String) -> S3Error { S3Error.notImplemented("the canned ACL '\(v)' (this gateway keeps private and public-read)") }

    /// The object's ACL, from its attributes.
    init(object attributes: [(name: String, value: String)]) {
        self = attributes.contains { $0.name == Self.attribute && $0.value == CannedACL.publicRead.rawValue } ? .publicRead : .private
    }

    /// `attributes` with this ACL in them.
    func applied(to attributes: [(name: String, value: String)]) -> [(name: String, value: String)] {
        var out = attributes.filter { $0.name != Self.attribute }
        if self == .publicRead { out.append((Self.attribute, rawValue)) }
        return out
    }

    /// GetBucketAcl's and GetObjectAcl's answer.
    func policy(owner: String) -> XMLWriter {
        var w = XMLWriter()
        w.open("AccessControlPolicy", xmlns: true)
        w.owner(owner)
        w.element("AccessControlList") { w in
            w.element("Grant") { w in
                w.open("Grantee", attributes: Self.grantee("CanonicalUser"))
                w.element("ID", owner)
                w.element("DisplayName", owner)
                w.close("Grantee")
                w.element("Permission", "FULL_CONTROL")
            }
            if self == .publicRead {
                w.element("Grant") { w in
                    w.open("Grantee", attributes: Self.grantee("Group"))
                    w.element("URI", Self.allUsers)
                    w.close("Grantee")
                    w.element("Permission", "READ")
                }
            }
        }
        w.close("AccessControlPolicy")
        return w
    }
}
