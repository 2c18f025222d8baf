import CSQLite
#if canImport(Glibc)
import Glibc
#endif

/// A failed SQLite call: its result code, SQLite's message, and the statement it was running.
public struct SQLiteError: Error, CustomStringConvertible, Equatable {
    public let code: Int32
    public let message: String
    public let sql: String

    public var description: String { "sqlite error \(code): \(message)" + (sql.isEmpty ? "" : " (in: \(sql.prefix(120)))") }

    /// A UNIQUE or PRIMARY KEY constraint was violated (the row exists).
    public var isConstraint: Bool { code & 0xFF == SQLITE_CONSTRAINT }
}

/// One SQLite database file, used by one thread at a time (the control plane's writer owns it): statements
/// are prepared, bound, stepped and finalized here; nothing is shared across threads.
public final class SQLiteDatabase {
    let handle: OpaquePointer
    public let path: String

    /// Opens (or creates) the database at `path` in WAL mode, with foreign keys on, full syncs (a control-plane
    /// change is durable once its transaction returned) and a busy timeout for readers in other processes.
    public init(path: String, readOnly: Bool = false) throws(SQLiteError) {
        var db: OpaquePointer?
        let flags = (readOnly ? SQLITE_OPEN_READONLY : SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE) | SQLITE_OPEN_NOMUTEX
        let rc = sqlite3_open_v2(path, &db, flags, nil)
        guard rc == SQLITE_OK, let db else {
            let message = db.map { String(cString: sqlite3_errmsg($0)) } ?? "out of memory"
            if let db { sqlite3_close_v2(db) }
            throw SQLiteError(code: rc, message: "cannot open \(path): \(message)", sql: "")
        }
        handle = db
        self.path = path
        sqlite3_busy_timeout(db, 5_000)
        if !readOnly {
            try exec("PRAGMA journal_mode = WAL")
            try exec("PRAGMA synchronous = FULL")
        }
        try exec("PRAGMA foreign_keys = ON")
    }

    deinit { sqlite3_close_v2(handle) }

    /// Runs statements that return no rows.
    public func exec(_ sql: String) throws(SQLiteError) {
        var error: UnsafeMutablePointer<CChar>?
        let rc = sqlite3_exec(handle, sql, nil, nil, &error)
        guard rc == SQLITE_OK else {
            let message = error.map { String(cString: $0) } ?? String(cString: sqlite3_errmsg(handle))
            sqlite3_free(error)
            throw SQLiteError(code: rc, message: message, sql: sql)
        }
    }

    /// A prepared statement for `sql`, with `values` bound to its parameters in order.
    public func statement(_ sql: String, _ values: [SQLiteValue] = []) throws(SQLiteError) -> SQLiteStatement {
        var stmt: OpaquePointer?
        let rc = sqlite3_prepare_v2(handle, sql, -1, &stmt, nil)
        guard rc == SQLITE_OK, let stmt else { throw failure(rc, sql) }
        let s = SQLiteStatement(db: self, stmt: stmt, sql: sql)
        try s.bind(values)
        return s
    }

    /// Runs `sql` with `values`; returns the rows changed.
    @discardableResult
    public func run(_ sql: String, _ values: [SQLiteValue] = []) throws(SQLiteError) -> Int {
        let s = try statement(sql, values)
        while try s.step() {}
        return Int(sqlite3_changes(handle))
    }

    /// Every row of `sql` with `values`, each read by `row`.
    public func rows<T>(_ sql: String, _ values: [SQLiteValue] = [], _ row: (SQLiteStatement) -> T) throws(SQLiteError) -> [T] {
        let s = try statement(sql, values)
        var out: [T] = []
        while try s.step() { out.append(row(s)) }
        return out
    }

    /// The rowid of the last row inserted.
    public var lastInsertRowID: Int64 { sqlite3_last_insert_rowid(handle) }

    /// Runs `body` in one transaction (BEGIN IMMEDIATE: the write lock is taken at once), committed if it
    /// returns and rolled back if it throws.
    public func transaction<T>(_ body: () throws(SQLiteError) -> T) throws(SQLiteError) -> T {
        try exec("BEGIN IMMEDIATE")
        do {
            let value = try body()
            try exec("COMMIT")
            return value
        } catch {
            try? exec("ROLLBACK")
            throw error
        }
    }

    func failure(_ rc: Int32, _ sql: String) -> SQLiteError {
        SQLiteError(code: rc, message: String(cString: sqlite3_errmsg(handle)), sql: sql)
    }
}

/// A value bound to a statement's parameter.
public enum SQLiteValue: Equatable, Sendable {
    case integer(Int64)
    case real(Double)
    case text(String)
    case blob([UInt8])
    case null
}

extension SQLiteValue: ExpressibleByStringLiteral, ExpressibleByIntegerLiteral {
    public init(stringLiteral value: String) { self = .text(value) }
    public init(integerLiteral value: Int64) { self = .integer(value) }
    public static func int(_ v: Int) -> SQLiteValue { .integer(Int64(v)) }
    public static func optional(_ v: String?) -> SQLiteValue { v.map { .text($0) } ?? .null }
    public static func optional(_ v: Int64?) -> SQLiteValue { v.map { .integer($0) } ?? .null }
}

/// A prepared statement: bound once, stepped through its rows, finalized when released.
public final class SQLiteStatement {
    unowned let db: SQLiteDatabase
    let stmt: OpaquePointer
    let sql: String

    init(db: SQLiteDatabase, stmt: OpaquePointer, sql: String) {
        self.db = db
        self.stmt = stmt
        self.sql = sql
    }

    deinit { sqlite3_finalize(stmt) }

    func bind(_ values: [SQLiteValue]) throws(SQLiteError) {
        for (i, v) in values.enumerated() {
            let index = Int32(i + 1)
            let rc: Int32 = switch v {
            case .integer(let n): sqlite3_bind_int64(stmt, index, n)
            case .real(let d): sqlite3_bind_double(stmt, index, d)
            case .text(let s): sf_sqlite_bind_text(stmt, index, s, -1)
            case .blob(let b): b.withUnsafeBytes { sf_sqlite_bind_blob(stmt, index, $0.baseAddress, Int32($0.count)) }
            case .null: sqlite3_bind_null(stmt, index)
            }
            guard rc == SQLITE_OK else { throw db.failure(rc, sql) }
        }
    }

    /// Steps once: true with a row to read, false when done.
    public func step() throws(SQLiteError) -> Bool {
        let rc = sqlite3_step(stmt)
        switch rc {
        case SQLITE_ROW: return true
        case SQLITE_DONE: return false
        default: throw db.failure(rc, sql)
        }
    }

    public func int(_ column: Int32) -> Int64 { sqlite3_column_int64(stmt, column) }
    public func double(_ column: Int32) -> Double { sqlite3_column_double(stmt, column) }
    public func isNull(_ column: Int32) -> Bool { sqlite3_column_type(stmt, column) == SQLITE_NULL }
    public func optionalInt(_ column: Int32) -> Int64? { isNull(column) ? nil : int(column) }

    public func text(_ column: Int32) -> String {
        guard let p = sqlite3_column_text(stmt, column) else { return "" }
        return String(cString: p)
    }

    public func optionalText(_ column: Int32) -> String? { isNull(column) ? nil : text(column) }

    public func blob(_ column: Int32) -> [UInt8] {
        let n = Int(sqlite3_column_bytes(stmt, column))
        guard n > 0, let p = sqlite3_column_blob(stmt, column) else { return [] }
        return Array(UnsafeRawBufferPointer(start: p, count: n))
    }
}
