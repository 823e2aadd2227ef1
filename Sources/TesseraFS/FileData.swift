// The data of one open file: group-sized pages in front of its striped object.
//
// A page holds a whole parity group's worth of the file, complete: loaded from the object
// where the object has data, zeros elsewhere. Writes land in pages (write-back), and a page
// remembers which of its bytes differ from the object; a write-out sends those bytes with
// parity computed from the page, so it never reads the object back. A page that a
// sequential writer fills is sent at once, whole; reads ahead of a sequential reader load the next groups. Every page is taken from one
// MemoryBudget shared by all files: when it is spent, reads and writes go straight to the
// object instead, so the budget is never exceeded whatever the number of open files.
//
// Invariant: the object's bytes at and beyond `stored` are zero, and `stored` is at least the
// end of every byte written to it; truncation frees what lies beyond the new size first. So
// a page beyond `stored` starts as zeros without a read, and a hole reads as zeros.
//
// A small file whose object holds nothing (`stored` 0) keeps its bytes in `inline` instead
// of a page, and they are stored in its entry (ObjectRecord's data): a close then costs one
// UPDATE, no data writes, and an open reads them with the entry. A write, or a truncation,
// past `inlineLimit` moves them into a page (or the object), and the file is an object's
// from then on, until it is truncated to nothing.
//
// The object exists on a server only once made there, by a CREATE or a unit write: a read
// of one never made fails, as a read of a freed one does, never zeros. Every reader of a
// file's object passes its size (the entry's, or `stored` here), and a unit wholly past it
// that its server does not have reads as zeros (Objects.swift); the units below the size
// must exist. `made` tracks how far they are known to: every data unit with a byte below
// it exists, from the size the file had when opened (its object was written up to there,
// by the mount or by the S3 writer, or made everywhere), 0 for a new one. A write-out that
// starts within or right after those units extends `made` to its end: a file written in
// order, the common case, needs no CREATE (which costs each new file a request to every
// server, 12% of a tree copy's time). A write past a gap, or a truncation that grows the
// file past `made`, leaves units below the size that no write made: those start a CREATE
// of the object on every server (`startCreate`, not awaited), which travels beside the
// writes and is awaited (`objectMade`) before anything reads the object in the gap and
// before a flush returns, so an entry stored after a flush, and an fsync's SYNC, find it
// made. A file changed only within `made` sends no CREATE: one would make a freed object
// exist again, and its writes then succeed where they must fail.
//
// A FileData is used only under its inode's lock (FileSystem.fileLocks), one call at a time,
// except `published`, a copy of its size and inline bytes behind a lock of its own.
import Glibc
import TesseraClient
import TesseraCore

/// Bytes of pages all open files may hold together, and the spare page buffers.
public final class MemoryBudget: Sendable {
    public let limit: Int
    private let used = Locked(0)
    let pool = PagePool()

    public init(limit: Int) { self.limit = limit }

    func take(_ n: Int) -> Bool {
        used.withLock { u in
            guard u + n <= limit else { return false }
            u += n
            return true
        }
    }

    func give(_ n: Int) { used.withLock { $0 -= n } }

    public var inUse: Int { used.withLock { $0 } }
}

/// Page buffers given back, kept for the next page instead of unmapped: an mmap and munmap
/// per open of a small file (the unmap a TLB shoot-down on every CPU running the mount)
/// cost more than zeroing the few kilobytes it used, and zeroing a whole group in place
/// costs less than faulting it in again a 4 KiB page at a time (a sequential writer).
/// A buffer is cleaned when it is taken, and only where its next page will not overwrite
/// it: a page a read fills whole is never zeroed at all.
/// The pool holds at most `keep` buffers, resident up to what they were used for.
final class PagePool: Sendable {
    private struct Buffer: @unchecked Sendable {
        // SAFETY: a buffer in the pool belongs to no page; the pool hands it to one page.
        let bytes: UnsafeMutableRawBufferPointer
        /// Bytes at and past this offset are zero.
        let used: Int
    }
    private let spare = Locked<[Buffer]>([])
    /// At most this many buffers wait in the pool.
    static let keep = 16

    /// A buffer of `size` bytes, zero at and past `filled` (the caller fills the bytes
    /// before): a spare one, or fresh anonymous memory, whose pages the kernel hands out
    /// zeroed as they are touched.
    func take(_ size: Int, filled: Int = 0) -> UnsafeMutableRawBufferPointer {
        if let b = spare.withLock({ s -> Buffer? in
            guard let i = s.lastIndex(where: { $0.bytes.count == size }) else { return nil }
            return s.remove(at: i)
        }) {
            if b.used > filled { memset(b.bytes.baseAddress! + filled, 0, b.used - filled) }
            return b.bytes
        }
        guard let p = mmap(nil, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0), p != MAP_FAILED else {
            fatalError("out of memory: mmap of a \(size)-byte page failed")
        }
        return UnsafeMutableRawBufferPointer(start: p, count: size)
    }

    /// Takes back a buffer whose bytes past `used` are zero.
    func giveBack(_ bytes: UnsafeMutableRawBufferPointer, used: Int) {
        let kept = spare.withLock { s -> Bool in
            guard s.count < Self.keep else { return false }
            s.append(Buffer(bytes: bytes, used: used))
            return true
        }
        if !kept { munmap(bytes.baseAddress, bytes.count) }
    }
}

/// One group of the file in memory.
final class Page: @unchecked Sendable {
    // SAFETY: touched only under the inode's lock, or by the one task writing it out, during
    // which the page is in `flushing` and no one else reads or writes it.
    let bytes: UnsafeMutableRawBufferPointer
    private let pool: PagePool
    /// Bytes at and past this offset are zero: how much of the buffer the pool cleans for
    /// its next page. Every write into `bytes` goes through `put` or `zero`, or fills the
    /// first bytes `init` was told of.
    private var used = 0
    /// Bytes (offsets in the group) that differ from the object: written, or zeroed by a
    /// truncation while the object still holds their old data. Nil when the page is clean:
    /// every byte is what the object holds (zeros at and past `stored`).
    var changed: Range<Int>?
    var dirty: Bool { changed != nil }

    func markChanged(_ r: Range<Int>) {
        guard !r.isEmpty else { return }
        changed = changed.map { min($0.lowerBound, r.lowerBound)..<max($0.upperBound, r.upperBound) } ?? r
    }

    /// A page of zeros, its buffer from `pool`; with `filling`, one whose first `filling`
    /// bytes the caller fills at once (a read), so they are not zeroed first.
    init(size: Int, pool: PagePool, filling: Int = 0) {
        self.pool = pool
        bytes = pool.take(size, filled: filling)
        used = filling
    }

    deinit { pool.giveBack(bytes, used: used) }

    /// Copies `src` in at `offset`.
    func put(_ src: UnsafeRawBufferPointer, at offset: Int) {
        UnsafeMutableRawBufferPointer(rebasing: bytes[offset..<(offset + src.count)]).copyMemory(from: src)
        used = max(used, offset + src.count)
    }

    /// Zeros every byte from `offset` on.
    func zero(from offset: Int) {
        guard offset < used else { return }
        UnsafeMutableRawBufferPointer(rebasing: bytes[offset..<used]).initializeMemory(as: UInt8.self, repeating: 0)
        used = offset
    }
}

final class FileData: @unchecked Sendable {
    // SAFETY: used only under the inode's lock (see the header).
    let cluster: Cluster
    let budget: MemoryBudget
    var fid: Fid
    /// The file's size as the mount sees it.
    var size: UInt64 { didSet { published.withLock { $0.size = size } } }
    /// The object's bytes from here on are zero (the invariant above).
    var stored: UInt64
    private var pages: [UInt64: Page] = [:]
    /// Pages being written out, by group; the page comes back to `pages` only if written to
    /// again, after the write-out is done.
    private var flushing: [UInt64: Task<Void, Error>] = [:]
    /// Pages being read (ahead, or for a caller), by group; nil when the read failed, and
    /// the caller then goes to the object itself and sees the error.
    private var loading: [UInt64: Task<Page?, Never>] = [:]
    private var readEnd: UInt64 = 0
    /// Data changed since the record was last stored.
    var changed = false
    /// The file's bytes (`size` of them), when they live in its entry (see the header).
    private(set) var inline: [UInt8]? { didSet { published.withLock { $0.inline = inline } } }
    /// `size` and `inline` as last set, for what stores the file's entry without its inode's
    /// lock (a rename, link or unlink of an open file runs under the namespace lock, which
    /// is taken after an inode's, never before).
    let published: Locked<(size: UInt64, inline: [UInt8]?)>
    /// The largest file kept in its entry; 0: none.
    let inlineLimit: Int
    /// Every data unit of the object with a byte below this exists on its server; `.max`
    /// once made on every server (see the header).
    private var made: UInt64
    /// The CREATE of the object, in flight.
    private var creating: Task<Void, Error>?
    var groupSize: Int { cluster.layout.groupSize }

    static let maxFlushing = 3
    static let readAhead = 6

    /// The data of a file of `size` bytes in object `fid`, or in its entry (`inline`). An
    /// empty file's object holds nothing, so it starts in the entry too.
    init(cluster: Cluster, budget: MemoryBudget, fid: Fid, size: UInt64, inline: [UInt8]? = nil, inlineLimit: Int = 0) {
        self.cluster = cluster
        self.budget = budget
        self.fid = fid
        self.size = size
        self.inlineLimit = inlineLimit
        if let inline, inline.count == size {
            self.inline = inline
            stored = 0
        } else {
            self.inline = size == 0 && inlineLimit > 0 ? [] : nil
            stored = size
        }
        made = stored
        published = Locked((size, self.inline))
    }

    // MARK: The object's existence

    /// Starts the object's CREATE if the file reaches past where the object is known to
    /// exist and none is in flight.
    private func startCreate() {
        if inline == nil && size > made { _ = creation() }
    }

    /// Notes that object bytes [from, to) are being written: if the write starts within or
    /// right after the units known to exist, they now reach `to`; past a gap, the object's
    /// CREATE starts instead.
    private func writing(_ from: UInt64, _ to: UInt64) {
        guard made != .max else { return }
        let u = UInt64(cluster.layout.unitSize)
        if from / u <= (made + u - 1) / u {
            made = max(made, to)
        } else {
            _ = creation()
        }
    }

    /// Returns once the object exists wherever it has a unit below `end` (a CREATE started
    /// if one is needed and none was); a failed CREATE throws and is sent again next time.
    private func objectMade(below end: UInt64) async throws {
        guard end > made else { return }
        do { try await creation().value } catch {
            creating = nil
            throw error
        }
        made = .max
        creating = nil
    }

    /// What a read of the object below `end` must wait for first: the CREATE, if one is
    /// needed (started if none is in flight).
    private func pendingCreate(below end: UInt64) -> Task<Void, Error>? {
        end > made ? creation() : nil
    }

    /// The CREATE in flight, started if none is.
    private func creation() -> Task<Void, Error> {
        if let creating { return creating }
        let (cluster, fid) = (self.cluster, self.fid)
        let t = Task { try await cluster.create(fid) }
        creating = t
        return t
    }

    // MARK: Data in the entry

    /// Whether bytes up to `end` may stay in the entry.
    private func fitsInline(_ end: UInt64) -> Bool { inline != nil && end <= UInt64(inlineLimit) }

    /// Moves the bytes kept in the entry to a page of group 0 (changed: the object holds
    /// none of them), or, with no room in the budget, writes them to the object.
    func spill() async throws {
        guard let bytes = inline, !spillResident() else { return }
        inline = nil
        writing(0, UInt64(bytes.count))
        try await cluster.write(fid, at: 0, bytes, size: stored)
        stored = UInt64(bytes.count)
    }

    /// `spill` into a new page, done at once; false, with nothing changed, if the budget
    /// has no room for one.
    private func spillResident() -> Bool {
        guard let bytes = inline else { return true }
        if !bytes.isEmpty {
            // Data in the entry means no pages, and the object holds nothing to load.
            guard budget.take(groupSize) else { return false }
            let page = newPage()
            bytes.withUnsafeBytes { page.put($0, at: 0) }
            page.markChanged(0..<bytes.count)
            pages[0] = page
        }
        inline = nil
        return true
    }

    /// Puts `src` at `offset` in the bytes kept in the entry (zeros fill a gap).
    private func writeInline(_ src: UnsafeRawBufferPointer, at offset: UInt64) {
        let end = Int(offset) + src.count
        if inline!.count < end { inline!.append(contentsOf: repeatElement(0, count: end - inline!.count)) }
        inline!.withUnsafeMutableBytes { UnsafeMutableRawBufferPointer(rebasing: $0[Int(offset)..<end]).copyMemory(from: src) }
        size = UInt64(inline!.count)
        changed = true
    }

    /// Reads from the bytes kept in the entry.
    private func readInline(at offset: UInt64, into dst: UnsafeMutableRawBufferPointer) -> Int {
        guard offset < size else { return 0 }
        let n = Int(min(UInt64(dst.count), size - offset))
        inline!.withUnsafeBytes { UnsafeMutableRawBufferPointer(rebasing: dst[0..<n]).copyMemory(from: UnsafeRawBufferPointer(rebasing: $0[Int(offset)..<(Int(offset) + n)])) }
        return n
    }

    // MARK: Writes

    func write(_ src: UnsafeRawBufferPointer, at offset: UInt64) async throws {
        guard !src.isEmpty else { return }
        if fitsInline(offset + UInt64(src.count)) { return writeInline(src, at: offset) }
        try await spill()
        let gs = UInt64(groupSize)
        var done = 0
        while done < src.count {
            let at = offset + UInt64(done)
            let g = at / gs
            let inGroup = Int(at % gs)
            let n = min(src.count - done, groupSize - inGroup)
            let piece = UnsafeRawBufferPointer(rebasing: src[done..<(done + n)])
            if let page = try await page(g, create: true) {
                page.put(piece, at: inGroup)
                page.markChanged(inGroup..<(inGroup + n))
                size = max(size, at + UInt64(n))
                // A sequential writer filled the group: send it now, whole.
                if inGroup + n == groupSize { try await startFlush(g) }
            } else {
                try await flushing[g]?.value
                writing(at, at + UInt64(n))
                try await cluster.write(fid, at: at, Array(piece), size: stored)
                stored = max(stored, at + UInt64(n))
                size = max(size, at + UInt64(n))
            }
            done += n
        }
        changed = true
    }

    /// `write` when it needs no I/O and no wait, done at once: the bytes fall in one group,
    /// short of its end (so no write-out starts), whose page is here, or which lies wholly
    /// past `stored` with nothing loading or writing it out (a new page of zeros, if the
    /// budget has room). False, with nothing changed, otherwise.
    func writeResident(_ src: UnsafeRawBufferPointer, at offset: UInt64) -> Bool {
        guard !src.isEmpty else { return true }
        if fitsInline(offset + UInt64(src.count)) {
            writeInline(src, at: offset)
            return true
        }
        guard spillResident() else { return false }
        let gs = UInt64(groupSize)
        let g = offset / gs
        let inGroup = Int(offset % gs)
        guard inGroup + src.count < groupSize else { return false }
        let page: Page
        if let p = pages[g] {
            page = p
        } else {
            guard loading[g] == nil, flushing[g] == nil, g * gs >= stored, budget.take(groupSize) else { return false }
            page = newPage()
            pages[g] = page
        }
        page.put(src, at: inGroup)
        page.markChanged(inGroup..<(inGroup + src.count))
        size = max(size, offset + UInt64(src.count))
        changed = true
        return true
    }

    /// The page of group `g`: the one in memory, the one being read ahead, or (with
    /// `create`, if the budget allows) a new one, loaded where the object has data.
    private func page(_ g: UInt64, create: Bool) async throws -> Page? {
        if let p = pages[g] { return p }
        var load = loading.removeValue(forKey: g)
        if load == nil && create {
            try await flushing.removeValue(forKey: g)?.value
            load = startLoad(g)
        }
        guard let p = await load?.value else { return nil }
        pages[g] = p
        return p
    }

    /// Starts reading group `g` into a new page, if the budget has room for one; where the
    /// object holds nothing (at and past `stored`) the page stays zeros, unread.
    private func startLoad(_ g: UInt64) -> Task<Page?, Never>? {
        guard budget.take(groupSize) else { return nil }
        let start = g * UInt64(groupSize)
        let n = start < stored ? Int(min(UInt64(groupSize), stored - start)) : 0
        let (cluster, fid, budget, groupSize) = (self.cluster, self.fid, self.budget, self.groupSize)
        let made = n > 0 ? pendingCreate(below: start + UInt64(n)) : nil
        let stored = self.stored
        return Task {
            // Its first n bytes count as used at once: a read that fails may fill part of them.
            let p = Page(size: groupSize, pool: budget.pool, filling: n)
            guard n > 0 else { return p }
            do {
                try await made?.value
                try await cluster.read(fid, at: start, into: UnsafeMutableRawBufferPointer(rebasing: p.bytes[0..<n]), size: stored)
                return p
            } catch {
                budget.give(groupSize)
                return nil
            }
        }
    }

    /// Waits for every page being written out.
    private func waitForWriteOuts() async throws {
        let all = flushing
        flushing.removeAll()
        for (_, t) in all { try await t.value }
    }

    /// A new page of zeros (the caller took its room from the budget).
    private func newPage() -> Page { Page(size: groupSize, pool: budget.pool) }

    /// Marks page `g` clean as its write-out starts, and the object as holding its bytes.
    private func takeChanges(_ g: UInt64, _ page: Page) {
        guard let changed = page.changed else { return }
        page.changed = nil
        let start = g * UInt64(groupSize)
        writing(start + UInt64(changed.lowerBound), start + UInt64(changed.upperBound))
        // Changed bytes past the size are a truncation's zeros: data ends below the size.
        stored = max(stored, min(g * UInt64(groupSize) + UInt64(changed.upperBound), size))
    }

    /// Starts writing page `g` out; at most `maxFlushing` write-outs at once. Only the bytes
    /// that differ from the object go out, with parity over the same stripe computed from the
    /// page: the rest of the page is what the object holds, so nothing is read back. A page a
    /// sequential writer filled leaves memory; one written out by `flush` (close, fsync) is
    /// `kept`, clean, so the next small write or read of the group needs no read either.
    private func startFlush(_ g: UInt64, keep: Bool = false, syncWait: Bool = false) async throws {
        guard let page = keep ? pages[g] : pages.removeValue(forKey: g) else { return }
        guard let changed = page.changed else {
            if !keep { budget.give(groupSize) }
            return
        }
        if let earlier = flushing.removeValue(forKey: g) { try await earlier.value }
        takeChanges(g, page)
        let (cluster, fid, budget, groupSize) = (self.cluster, self.fid, self.budget, self.groupSize)
        if keep {
            // The unit writes copy their bytes now: the page may change again while they go out.
            let write = cluster.groupWrite(group: g, content: UnsafeRawBufferPointer(page.bytes), changed: changed)
            flushing[g] = Task { try await cluster.write(fid, write, syncWait: syncWait) }
        } else {
            // The page is the task's alone: its bytes are copied and encoded there.
            flushing[g] = Task {
                defer { budget.give(groupSize) }
                try await cluster.write(fid, cluster.groupWrite(group: g, content: UnsafeRawBufferPointer(page.bytes), changed: changed))
            }
        }
        if flushing.count > Self.maxFlushing, let oldest = flushing.keys.min() {
            try await flushing.removeValue(forKey: oldest)?.value
        }
    }

    /// Writes every dirty page out and waits for every write: after this the object holds
    /// all the file's data, not yet durable (the caller's SYNC, or a sync-wait request to
    /// the same servers, makes it so), or durable with `syncWait` (each write waits for
    /// LOGGED; earlier write-outs still in flight do not, the caller's SYNC covers them).
    /// The object is made on every server too if the file's size reaches past the units its
    /// writes made (a write past a gap; a file grown by a truncation names its object with
    /// no write).
    func flush(syncWait: Bool = false) async throws {
        let dirty = pages.keys.sorted().filter { pages[$0]!.dirty }
        // One page to write and nothing else in flight (a close after small writes): sent
        // from this task, with no task of its own to start and wait for.
        if dirty.count == 1, flushing.isEmpty, let page = pages[dirty[0]], let changed = page.changed {
            let g = dirty[0]
            takeChanges(g, page)
            try await cluster.write(fid, cluster.groupWrite(group: g, content: UnsafeRawBufferPointer(page.bytes), changed: changed), syncWait: syncWait)
        } else {
            for g in dirty { try await startFlush(g, keep: true, syncWait: syncWait) }
            try await waitForWriteOuts()
        }
        startCreate()
        if creating != nil { try await objectMade(below: .max) }
    }

    // MARK: Reads

    /// Reads up to `count` bytes at `offset` (fewer at the end of the file) into `dst`;
    /// returns how many.
    func read(at offset: UInt64, into dst: UnsafeMutableRawBufferPointer) async throws -> Int {
        if inline != nil { return readInline(at: offset, into: dst) }
        guard offset < size else { return 0 }
        let total = Int(min(UInt64(dst.count), size - offset))
        let gs = UInt64(groupSize)
        let sequential = offset == readEnd
        var done = 0
        while done < total {
            let at = offset + UInt64(done)
            let g = at / gs
            let inGroup = Int(at % gs)
            let n = min(total - done, groupSize - inGroup)
            let out = UnsafeMutableRawBufferPointer(rebasing: dst[done..<(done + n)])
            if let p = try await page(g, create: sequential) {
                out.copyMemory(from: UnsafeRawBufferPointer(rebasing: p.bytes[inGroup..<(inGroup + n)]))
                // A sequential reader is done with a clean page once past its end.
                if sequential && inGroup + n == groupSize && !p.dirty {
                    pages[g] = nil
                    budget.give(groupSize)
                }
            } else {
                try await flushing.removeValue(forKey: g)?.value
                let fromObject = Int(min(UInt64(n), stored > at ? stored - at : 0))
                if fromObject > 0 {
                    try await objectMade(below: at + UInt64(fromObject))
                    try await cluster.read(fid, at: at, into: UnsafeMutableRawBufferPointer(rebasing: out[0..<fromObject]), size: stored)
                }
                if fromObject < n { UnsafeMutableRawBufferPointer(rebasing: out[fromObject...]).initializeMemory(as: UInt8.self, repeating: 0) }
            }
            done += n
        }
        readEnd = offset + UInt64(total)
        if sequential { startReadAhead(after: (readEnd - 1) / gs) }
        return total
    }

    /// `read` when it needs no I/O and no wait, done at once: the bytes fall in one group
    /// whose page is here (or in the entry), and `reply` gets them where they lie, with no
    /// copy. False, with nothing changed and no reply, otherwise.
    func readResident(at offset: UInt64, count: Int, reply: (UnsafeRawBufferPointer) -> Void) -> Bool {
        guard offset < size else {
            reply(UnsafeRawBufferPointer(start: nil, count: 0))
            return true
        }
        let total = Int(min(UInt64(count), size - offset))
        if let bytes = inline {
            bytes.withUnsafeBytes { reply(UnsafeRawBufferPointer(rebasing: $0[Int(offset)..<(Int(offset) + total)])) }
            return true
        }
        let gs = UInt64(groupSize)
        let g = offset / gs
        let inGroup = Int(offset % gs)
        guard inGroup + total <= groupSize, let p = pages[g] else { return false }
        reply(UnsafeRawBufferPointer(rebasing: p.bytes[inGroup..<(inGroup + total)]))
        let sequential = offset == readEnd
        if sequential && inGroup + total == groupSize && !p.dirty {
            pages[g] = nil
            budget.give(groupSize)
        }
        readEnd = offset + UInt64(total)
        if sequential && total > 0 { startReadAhead(after: (readEnd - 1) / gs) }
        return true
    }

    /// Starts reading the first group, for a reader that has just opened the file (the
    /// open's check of the entry runs meanwhile).
    func prefetch() {
        guard inline == nil, stored > 0, pages[0] == nil, loading[0] == nil, flushing[0] == nil, let load = startLoad(0) else { return }
        loading[0] = load
    }

    private func startReadAhead(after g: UInt64) {
        for next in (g + 1)...(g + UInt64(Self.readAhead)) {
            guard next * UInt64(groupSize) < stored, pages[next] == nil, loading[next] == nil, flushing[next] == nil else { continue }
            guard let load = startLoad(next) else { return }
            loading[next] = load
        }
    }

    // MARK: Size

    /// `truncate` to a size no smaller than the file's, done at once: it needs no I/O unless
    /// it moves bytes kept in the entry to the object (then false, nothing changed). Pages
    /// being read in stay valid: the object's bytes past `stored` are zeros either way.
    func growResident(to newSize: UInt64) -> Bool {
        guard newSize >= size else { return false }
        if inline != nil {
            guard fitsInline(newSize) else { return false }
            inline!.append(contentsOf: repeatElement(0, count: Int(newSize - size)))
        }
        size = newSize
        changed = true
        startCreate()  // an entry may name the object with this size before any write
        return true
    }

    /// Sets the size. Shrinking frees the object beyond the new size (so it reads as zeros
    /// if the file grows again) and cuts the pages; growing needs nothing. A file cut to
    /// nothing whose object then holds nothing keeps its bytes in the entry again.
    func truncate(to newSize: UInt64) async throws {
        let grows = newSize > size
        if grows && growResident(to: newSize) { return }
        if fitsInline(newSize) {
            inline!.removeLast(Int(size - newSize))
            size = newSize
            changed = true
            return
        }
        try await spill()
        for (g, t) in loading {
            if let p = await t.value { pages[g] = p }
        }
        loading.removeAll()
        let gs = UInt64(groupSize)
        if newSize < size {
            // The group the new end falls in: cut in its page if it has one (the write-out
            // then zeros the object's old bytes), else in the object.
            let partial = newSize % gs == 0 ? nil : newSize / gs
            var cutInPage = false
            for (g, p) in pages {
                let start = g * gs
                if start >= newSize {
                    pages[g] = nil
                    budget.give(groupSize)
                } else if g == partial {
                    let from = Int(newSize - start)
                    p.zero(from: from)
                    if stored > newSize {
                        p.markChanged(from..<Int(min(gs, stored - start)))
                    }
                    cutInPage = true
                }
            }
            if stored > newSize {
                try await waitForWriteOuts()
                let from = cutInPage ? (partial! + 1) * gs : newSize
                if stored > from {
                    try await objectMade(below: stored)
                    try await cluster.free(fid, at: from, length: stored - from, size: stored)
                }
                stored = cutInPage ? min(stored, (partial! + 1) * gs) : newSize
            }
        }
        size = newSize
        changed = true
        if grows { startCreate() }
        if newSize == 0 && stored == 0 && inlineLimit > 0 && pages.isEmpty && flushing.isEmpty && loading.isEmpty { inline = [] }
    }

    /// Nothing to write and nothing in flight: a flush would do nothing, and `dropNow` can
    /// give the pages back at once.
    var isClean: Bool {
        !changed && flushing.isEmpty && loading.isEmpty && !pages.values.contains { $0.dirty }
    }

    /// `drop` of a clean file (`isClean`), done at once.
    func dropNow() {
        precondition(isClean, "dropNow of a file with data in flight")
        budget.give(groupSize * pages.count)
        pages.removeAll()
    }

    /// Gives every page back to the budget (the caller flushed first).
    func drop() async {
        _ = try? await creating?.value
        for (_, t) in loading where await t.value != nil { budget.give(groupSize) }
        loading.removeAll()
        for (_, t) in flushing { _ = try? await t.value }
        flushing.removeAll()
        budget.give(groupSize * pages.count)
        pages.removeAll()
    }
}
