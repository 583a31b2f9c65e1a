import CSQLite

/// One prepared `sqlite3_stmt*`, finalized in deinit. Used only while the database's lock is held.
final class StatementHandle {
    let connection: Connection
    let handle: OpaquePointer
    let sql: String
    /// Built once per prepared statement and shared (copy-on-write) by every row it returns.
    private var columnIndex: [String: Int]?
    /// SQLite's re-prepare count when `columnIndex` was built.
    private var columnGeneration: Int32 = 0

    init(connection: Connection, sql: String, persistent: Bool) throws {
        var statement: OpaquePointer?
        let flags = persistent ? UInt32(SQLITE_PREPARE_PERSISTENT) : 0
        let code = sqlite3_prepare_v3(connection.handle, sql, -1, flags, &statement, nil)
        guard code == SQLITE_OK, let statement else {
            let error = connection.error(code == SQLITE_OK ? SQLITE_MISUSE : code, "prepare", sql: sql)
            sqlite3_finalize(statement)
            if code == SQLITE_OK {
                // Only whitespace or comments: SQLite returns OK with no statement.
                throw SQLiteError(code: SQLITE_MISUSE, message: "no SQL statement in the text", sql: sql, operation: "prepare")
            }
            throw error
        }
        self.connection = connection
        self.handle = statement
        self.sql = sql
    }

    deinit { sqlite3_finalize(handle) }

    /// Binds every parameter; the count must match exactly so a forgotten value is an error, not a silent NULL.
    func bind(_ values: [SQLValue]) throws {
        let expected = Int(sqlite3_bind_parameter_count(handle))
        guard expected == values.count else {
            throw SQLiteError(code: SQLITE_RANGE, message: "statement takes \(expected) parameters, got \(values.count)",
                              sql: sql, operation: "bind")
        }
        for (offset, value) in values.enumerated() {
            let index = Int32(offset + 1)
            let code: Int32
            switch value {
            case .null:
                code = sqlite3_bind_null(handle, index)
            case .integer(let v):
                code = sqlite3_bind_int64(handle, index, v)
            case .real(let v):
                code = sqlite3_bind_double(handle, index, v)
            case .text(var v):
                // Explicit byte count: text with an embedded NUL is kept whole, and no strlen is needed.
                code = v.withUTF8 { bytes in
                    guard let base = bytes.baseAddress, bytes.count > 0 else {
                        // A NULL pointer would bind NULL; the empty string must stay an empty string.
                        return sqlite3_bind_text64(handle, index, "", 0, SQLiteDestructor.transient, UInt8(SQLITE_UTF8))
                    }
                    return base.withMemoryRebound(to: CChar.self, capacity: bytes.count) {
                        sqlite3_bind_text64(handle, index, $0, UInt64(bytes.count), SQLiteDestructor.transient, UInt8(SQLITE_UTF8))
                    }
                }
            case .blob(let v):
                if v.isEmpty {
                    // A NULL pointer would bind NULL; an empty blob must stay an empty blob.
                    code = sqlite3_bind_zeroblob(handle, index, 0)
                } else {
                    code = v.withUnsafeBytes {
                        sqlite3_bind_blob64(handle, index, $0.baseAddress, UInt64($0.count), SQLiteDestructor.transient)
                    }
                }
            }
            if code != SQLITE_OK { throw connection.error(code, "bind parameter \(index)", sql: sql) }
        }
    }

    /// Steps to the end, collecting rows, and leaves the statement reset for its next use.
    func rows() throws -> [Row] {
        defer { reset() }
        var result: [Row] = []
        var columns: [String: Int] = [:]
        var count: Int32 = 0
        while true {
            let code = sqlite3_step(handle)
            if code == SQLITE_DONE { return result }
            guard code == SQLITE_ROW else { throw connection.error(code, "step", sql: sql) }
            if result.isEmpty {
                // Only now: a schema change makes SQLite re-prepare inside the first step, and `SELECT *` may then
                // have different columns than before.
                columns = names()
                count = sqlite3_column_count(handle)
            }
            var values: [SQLValue] = []
            values.reserveCapacity(Int(count))
            for column in 0..<count { values.append(value(at: column)) }
            result.append(Row(columns: columns, values: values))
        }
    }

    /// Steps to the end without building rows (INSERT/UPDATE/DELETE).
    func runToCompletion() throws {
        defer { reset() }
        while true {
            let code = sqlite3_step(handle)
            if code == SQLITE_DONE { return }
            guard code == SQLITE_ROW else { throw connection.error(code, "step", sql: sql) }
        }
    }

    private func reset() {
        sqlite3_reset(handle)
        sqlite3_clear_bindings(handle)
    }

    private func names() -> [String: Int] {
        let generation = sqlite3_stmt_status(handle, SQLITE_STMTSTATUS_REPREPARE, 0)
        if let columnIndex, generation == columnGeneration { return columnIndex }
        columnGeneration = generation
        var names: [String: Int] = [:]
        for index in 0..<sqlite3_column_count(handle) {
            let name = String(cString: sqlite3_column_name(handle, index))
            // With duplicate names (a join selecting two `id`s) the first column wins, as in most SQLite wrappers.
            if names[name] == nil { names[name] = Int(index) }
        }
        columnIndex = names
        return names
    }

    private func value(at column: Int32) -> SQLValue {
        switch sqlite3_column_type(handle, column) {
        case SQLITE_INTEGER:
            return .integer(sqlite3_column_int64(handle, column))
        case SQLITE_FLOAT:
            return .real(sqlite3_column_double(handle, column))
        case SQLITE_TEXT:
            // Pointer first, then length: that is the order SQLite documents as safe.
            guard let text = sqlite3_column_text(handle, column) else { return .text("") }
            let count = Int(sqlite3_column_bytes(handle, column))
            return .text(String(decoding: UnsafeBufferPointer(start: text, count: count), as: UTF8.self))
        case SQLITE_BLOB:
            let bytes = sqlite3_column_blob(handle, column)
            let count = Int(sqlite3_column_bytes(handle, column))
            guard count > 0, let bytes else { return .blob([]) }
            return .blob(Array(UnsafeRawBufferPointer(start: bytes, count: count)))
        default:
            return .null
        }
    }
}

/// `SQLITE_TRANSIENT` is a macro SQLite casts from -1, which Swift does not import.
enum SQLiteDestructor {
    static let transient = unsafeBitCast(-1, to: sqlite3_destructor_type.self)
}
