// Starting and waiting for the processes of a local cluster: system tools, `tessera`
// children, loopback ports, and what the kernel's mount table says.
import Foundation
import TesseraCore

/// The running `tessera` binary, which starts the others.
public let tesseraExecutable = URL(fileURLWithPath: CommandLine.arguments[0]).resolvingSymlinksInPath().path

/// True once something accepts TCP connections at `host:port` (an IPv4 address).
public func accepting(_ host: String, _ port: Int) -> Bool {
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    defer { close(fd) }
    return withIPv4Address(host == "localhost" ? "127.0.0.1" : host, port) { connect(fd, $0, $1) } == 0
}

/// Calls `body` with a sockaddr for `host:port` (an IPv4 address) and its length.
public func withIPv4Address(_ host: String, _ port: Int, _ body: (UnsafePointer<sockaddr>, socklen_t) -> Int32) -> Int32 {
    var addr = sockaddr_in()
    addr.sin_family = sa_family_t(AF_INET)
    addr.sin_port = in_port_t(UInt16(port).bigEndian)
    addr.sin_addr.s_addr = inet_addr(host)
    return withUnsafePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { body($0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
}

/// Runs a system tool, its output on our stderr; returns its exit status (or 128 + the
/// signal that ended it). A tool that daemonizes (bindfs, a mount helper) leaves a child;
/// only the tool itself is waited for.
public func runTool(_ path: String, _ args: [String]) throws -> Int32 {
    try ChildProcess(path, args, stdin: .inherit, stdout: .descriptor(STDERR_FILENO)).wait().status
}

/// Runs `path ARGS` (a `tessera` command) with its output dropped; throws unless it exits 0.
public func runChild(_ path: String, _ args: [String]) throws {
    let status = try ChildProcess(path, args, stdout: .null).wait().status
    guard status == 0 else { throw TesseraError(.io, "tessera \(args.joined(separator: " ")) failed (exit \(status))") }
}

/// Loopback ports free now, for processes started later (a cluster file names their
/// ports). Picked at random between 20000 and 32000, below the kernel's ephemeral range
/// (net.ipv4.ip_local_port_range starts at 32768): the kernel never hands those to an
/// outgoing connection or a bind of port 0, so nothing takes one before its process binds
/// it. Never the same port twice in one process.
public func freePorts(_ n: Int) throws -> [Int] {
    var out: [Int] = []
    for _ in 0..<1000 where out.count < n {
        let port = Int.random(in: 20_000..<32_000)
        guard !out.contains(port), !portsGiven.withLock({ $0.contains(port) }) else { continue }
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        let ok = withIPv4Address("127.0.0.1", port) { bind(fd, $0, $1) }
        close(fd)
        if ok == 0 { out.append(port) }
    }
    guard out.count == n else { throw TesseraError(.io, "found no free loopback ports") }
    portsGiven.withLock { $0.formUnion(out) }
    return out
}

private let portsGiven = Locked<Set<Int>>([])

/// The absolute path, symlinks resolved, that the kernel's mount table names for `path`.
public func mountTarget(_ path: String) -> String {
    URL(fileURLWithPath: path).standardizedFileURL.resolvingSymlinksInPath().path
}

/// Whether `path` is a directory; nil if nothing is there.
public func isDirectory(_ path: String) -> Bool? {
    var isDir = ObjCBool(false)
    return FileManager.default.fileExists(atPath: path, isDirectory: &isDir) ? isDir.boolValue : nil
}

/// True if `path` (absolute, symlinks resolved) is a FUSE mount point now.
public func isFuseMount(_ path: String) -> Bool {
    guard let text = try? String(contentsOfFile: "/proc/self/mountinfo", encoding: .utf8) else { return false }
    for line in text.split(separator: "\n") {
        let halves = line.components(separatedBy: " - ")
        guard halves.count == 2 else { continue }
        let fields = halves[0].split(separator: " ")
        guard fields.count >= 5, halves[1].hasPrefix("fuse") else { continue }
        if unescapeMountinfo(String(fields[4])) == path { return true }
    }
    return false
}

/// mountinfo writes space, tab, newline and backslash as \ooo.
private func unescapeMountinfo(_ s: String) -> String {
    var out: [UInt8] = []
    let b = Array(s.utf8)
    var i = 0
    while i < b.count {
        if b[i] == 0x5C, i + 4 <= b.count, let v = UInt8(String(decoding: b[(i + 1)..<(i + 4)], as: UTF8.self), radix: 8) {
            out.append(v)
            i += 4
        } else {
            out.append(b[i])
            i += 1
        }
    }
    return String(decoding: out, as: UTF8.self)
}

/// Writes `tessera: MESSAGE` to stderr.
public func printError(_ message: String) {
    FileHandle.standardError.write(Data(("tessera: " + message + "\n").utf8))
}
