import CSQLite

/// A failure reported by SQLite (or by this wrapper on misuse): the (extended) result code, SQLite's message,
/// what we were doing, and the SQL involved.
public struct SQLiteError: Error, CustomStringConvertible, Sendable {
    /// The extended result code, e.g. 2067 (`SQLITE_CONSTRAINT_UNIQUE`); `primaryCode` gives the family.
    public let code: Int32
    public let message: String
    public let sql: String?
    public let operation: String

    public init(code: Int32, message: String, sql: String?, operation: String) {
        self.code = code
        self.message = message
        self.sql = sql
        self.operation = operation
    }

    public var description: String {
        var text = "SQLite \(operation) failed (\(String(cString: sqlite3_errstr(code))), code \(code)): \(message)"
        if let sql { text += " [SQL: \(sql)]" }
        return text
    }

    /// The primary result code (`SQLITE_CONSTRAINT`, `SQLITE_BUSY`, …).
    public var primaryCode: Int32 { code & 0xff }

    /// True for a uniqueness, foreign-key, NOT NULL or check violation.
    public var isConstraintViolation: Bool { primaryCode == SQLITE_CONSTRAINT }

    /// True when another connection held the lock for longer than the busy timeout.
    public var isBusy: Bool { primaryCode == SQLITE_BUSY || primaryCode == SQLITE_LOCKED }

    static func closed(sql: String?) -> SQLiteError {
        SQLiteError(code: SQLITE_MISUSE, message: "database is closed", sql: sql, operation: "use")
    }
}
