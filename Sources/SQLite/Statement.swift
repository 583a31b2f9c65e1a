import CSQLite

/// A prepared statement, cached by its `Database` and only used while the database's lock is held.
/// It holds the raw connection rather than the `Database`, because the database owns the cache and finalizes every
/// statement before it closes the connection (a strong back-reference would be a retain cycle).
final class Statement {
    let connection: OpaquePointer
    let handle: OpaquePointer
    let sql: String
    private(set) lazy var columnNames: [String: Int] = {
        var names: [String: Int] = [:]
        for index in 0..<sqlite3_column_count(handle) {
            names[String(cString: sqlite3_column_name(handle, index))] = Int(index)
        }
        return names
    }()

    init(connection: OpaquePointer, sql: String) throws {
        var statement: OpaquePointer?
        let code = sqlite3_prepare_v3(connection, sql, -1, UInt32(SQLITE_PREPARE_PERSISTENT), &statement, nil)
        guard code == SQLITE_OK, let statement else {
            sqlite3_finalize(statement)
            throw SQLiteError(code: code, message: String(cString: sqlite3_errmsg(connection)), sql: sql, operation: "prepare")
        }
        self.connection = connection
        self.handle = statement
        self.sql = sql
    }

    deinit { sqlite3_finalize(handle) }

    private static let transient = unsafeBitCast(-1, to: sqlite3_destructor_type.self)

    func bind(_ values: [SQLValue]) throws {
        let expected = Int(sqlite3_bind_parameter_count(handle))
        guard expected == values.count else {
            throw SQLiteError(code: SQLITE_RANGE, message: "statement takes \(expected) parameters, got \(values.count)", sql: sql, operation: "bind")
        }
        for (offset, value) in values.enumerated() {
            let index = Int32(offset + 1)
            let code: Int32
            switch value {
            case .null: code = sqlite3_bind_null(handle, index)
            case .integer(let v): code = sqlite3_bind_int64(handle, index, v)
            case .real(let v): code = sqlite3_bind_double(handle, index, v)
            case .text(let v): code = sqlite3_bind_text(handle, index, v, -1, Self.transient)
            case .blob(let v):
                code = v.withUnsafeBytes { sqlite3_bind_blob(handle, index, $0.baseAddress ?? UnsafeRawPointer(bitPattern: 1), Int32($0.count), Self.transient) }
            }
            if code != SQLITE_OK { throw error(code, "bind parameter \(index)") }
        }
    }

    /// Steps through every row, resetting the statement afterwards so it can be reused.
    func rows() throws -> [Row] {
        defer {
            sqlite3_reset(handle)
            sqlite3_clear_bindings(handle)
        }
        var result: [Row] = []
        while true {
            let code = sqlite3_step(handle)
            if code == SQLITE_DONE { return result }
            guard code == SQLITE_ROW else { throw error(code, "step") }
            result.append(Row(columns: columnNames, values: readRow()))
        }
    }

    private func error(_ code: Int32, _ operation: String) -> SQLiteError {
        SQLiteError(code: code, message: String(cString: sqlite3_errmsg(connection)), sql: sql, operation: operation)
    }

    private func readRow() -> [SQLValue] {
        (0..<sqlite3_column_count(handle)).map { index -> SQLValue in
            switch sqlite3_column_type(handle, index) {
            case SQLITE_INTEGER: return .integer(sqlite3_column_int64(handle, index))
            case SQLITE_FLOAT: return .real(sqlite3_column_double(handle, index))
            case SQLITE_TEXT:
                let count = Int(sqlite3_column_bytes(handle, index))
                guard let text = sqlite3_column_text(handle, index) else { return .text("") }
                return .text(String(decoding: UnsafeBufferPointer(start: text, count: count), as: UTF8.self))
            case SQLITE_BLOB:
                let count = Int(sqlite3_column_bytes(handle, index))
                guard count > 0, let bytes = sqlite3_column_blob(handle, index) else { return .blob([]) }
                return .blob(Array(UnsafeRawBufferPointer(start: bytes, count: count)))
            default: return .null
            }
        }
    }
}
