// SQLite as the engine benchmark's baseline: one key-value table, WAL mode.
import CSQLite
import TesseraCore

/// One SQLite connection to a `kv(k BLOB PRIMARY KEY, v BLOB) WITHOUT ROWID` table.
final class SQLiteTable: @unchecked Sendable {
    // SAFETY of @unchecked Sendable: a connection is opened NOMUTEX and used by one thread
    // at a time; the benchmark gives each writer thread its own.
    private var db: OpaquePointer?
    private var insert: OpaquePointer?
    private var select: OpaquePointer?
    private static let transient = unsafeBitCast(-1, to: sqlite3_destructor_type.self)

    /// Opens (creating) the database at `path` in WAL mode with the given `synchronous`
    /// setting ("NORMAL" or "FULL") and a page cache of `cacheBytes`.
    init(path: String, synchronous: String, cacheBytes: Int) throws {
        guard sqlite3_open_v2(path, &db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX, nil) == SQLITE_OK else {
            throw TesseraError(.io, "sqlite: cannot open \(path)")
        }
        sqlite3_busy_timeout(db, 60_000)
        try exec("PRAGMA journal_mode=WAL")
        try exec("PRAGMA synchronous=\(synchronous)")
        try exec("PRAGMA cache_size=-\(cacheBytes / 1024)")
        try exec("CREATE TABLE IF NOT EXISTS kv(k BLOB PRIMARY KEY, v BLOB) WITHOUT ROWID")
        insert = try prepare("INSERT OR REPLACE INTO kv(k, v) VALUES(?, ?)")
        select = try prepare("SELECT v FROM kv WHERE k = ?")
    }

    deinit {
        sqlite3_finalize(insert)
        sqlite3_finalize(select)
        sqlite3_close_v2(db)
    }

    private var message: String { String(cString: sqlite3_errmsg(db)) }

    func exec(_ sql: String) throws {
        guard sqlite3_exec(db, sql, nil, nil, nil) == SQLITE_OK else { throw TesseraError(.io, "sqlite: \(sql): \(message)") }
    }

    private func prepare(_ sql: String) throws -> OpaquePointer? {
        var stmt: OpaquePointer?
        guard sqlite3_prepare_v2(db, sql, -1, &stmt, nil) == SQLITE_OK else { throw TesseraError(.io, "sqlite: \(sql): \(message)") }
        return stmt
    }

    /// One autocommit insert: its own transaction.
    func put(_ key: [UInt8], _ value: [UInt8]) throws {
        sqlite3_bind_blob(insert, 1, key, Int32(key.count), SQLiteTable.transient)
        sqlite3_bind_blob(insert, 2, value, Int32(value.count), SQLiteTable.transient)
        let rc = sqlite3_step(insert)
        sqlite3_reset(insert)
        guard rc == SQLITE_DONE else { throw TesseraError(.io, "sqlite: insert: \(message)") }
    }

    func get(_ key: [UInt8]) throws -> Int {
        sqlite3_bind_blob(select, 1, key, Int32(key.count), SQLiteTable.transient)
        defer { sqlite3_reset(select) }
        switch sqlite3_step(select) {
        case SQLITE_ROW: return Int(sqlite3_column_bytes(select, 0))
        case SQLITE_DONE: return -1
        default: throw TesseraError(.io, "sqlite: select: \(message)")
        }
    }

    /// Reads every row in key order; returns the number of rows.
    func scanAll() throws -> Int {
        let stmt = try prepare("SELECT k, v FROM kv ORDER BY k")
        defer { sqlite3_finalize(stmt) }
        var rows = 0
        var touched = 0
        while sqlite3_step(stmt) == SQLITE_ROW {
            // Read both blobs, as the Tessera side does.
            let k = sqlite3_column_blob(stmt, 0)!.load(as: UInt8.self)
            let v = sqlite3_column_blob(stmt, 1)!.load(as: UInt8.self)
            touched &+= Int(k) &+ Int(v)
            rows += 1
        }
        return rows
    }
}
