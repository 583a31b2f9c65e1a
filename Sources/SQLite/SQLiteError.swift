import CSQLite

/// A failure reported by SQLite, with its result code and message, what we were doing, and the SQL involved.
public struct SQLiteError: Error, CustomStringConvertible, Sendable {
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
        var text = "SQLite \(operation) failed (code \(code)): \(message)"
        if let sql { text += " [SQL: \(sql)]" }
        return text
    }

    /// True for a uniqueness, foreign-key or check violation.
    public var isConstraintViolation: Bool { code & 0xff == SQLITE_CONSTRAINT }
}
