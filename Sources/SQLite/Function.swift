import CSQLite

/// A scalar SQL function written in Swift: SQLite calls `body` once per row with the argument values, on the thread
/// that runs the statement and while the database's lock is held, so the body must not use the database itself.
final class ScalarFunction {
    let body: @Sendable ([SQLValue]) -> SQLValue
    init(_ body: @escaping @Sendable ([SQLValue]) -> SQLValue) { self.body = body }
}

extension Database {
    /// Registers (or replaces) the scalar function `name` taking `argumentCount` arguments on this connection.
    /// `deterministic`: the same arguments always give the same result, so SQLite may use it in indexes and reuse
    /// results. The function lives as long as the connection, or until registered again.
    public func createFunction(_ name: String, argumentCount: Int32, deterministic: Bool = true,
                               _ body: @escaping @Sendable ([SQLValue]) -> SQLValue) throws {
        try lock.withLock {
            guard !isClosed else { throw SQLiteError.closed(sql: nil) }
            let box = Unmanaged.passRetained(ScalarFunction(body)).toOpaque()
            let flags = SQLITE_UTF8 | (deterministic ? SQLITE_DETERMINISTIC : 0)
            let code = sqlite3_create_function_v2(connection.handle, name, argumentCount, flags, box, { context, count, arguments in
                guard let context, let user = sqlite3_user_data(context) else { return }
                let function = Unmanaged<ScalarFunction>.fromOpaque(user).takeUnretainedValue()
                var values: [SQLValue] = []
                values.reserveCapacity(Int(max(0, count)))
                for index in 0..<Int(max(0, count)) { values.append(SQLValue(arguments?[index])) }
                switch function.body(values) {
                case .null: sqlite3_result_null(context)
                case .integer(let value): sqlite3_result_int64(context, value)
                case .real(let value): sqlite3_result_double(context, value)
                case .text(let value): sqlite3_result_text(context, value, -1, SQLiteDestructor.transient)
                case .blob(let bytes):
                    bytes.withUnsafeBytes { sqlite3_result_blob(context, $0.baseAddress, Int32(clamping: $0.count), SQLiteDestructor.transient) }
                }
            }, nil, nil, { user in
                // SQLite calls this when the function is replaced or the connection closes (also when registering fails).
                if let user { Unmanaged<ScalarFunction>.fromOpaque(user).release() }
            })
            guard code == SQLITE_OK else { throw connection.error(code, "create function \(name)", sql: nil) }
        }
    }
}

extension SQLValue {
    /// One argument of a function call.
    init(_ value: OpaquePointer?) {
        guard let value else { self = .null; return }
        switch sqlite3_value_type(value) {
        case SQLITE_INTEGER: self = .integer(sqlite3_value_int64(value))
        case SQLITE_FLOAT: self = .real(sqlite3_value_double(value))
        case SQLITE_TEXT:
            guard let text = sqlite3_value_text(value) else { self = .text(""); return }
            self = .text(String(decoding: UnsafeBufferPointer(start: text, count: Int(sqlite3_value_bytes(value))), as: UTF8.self))
        case SQLITE_BLOB:
            let count = Int(sqlite3_value_bytes(value))
            guard count > 0, let bytes = sqlite3_value_blob(value) else { self = .blob([]); return }
            self = .blob(Array(UnsafeRawBufferPointer(start: bytes, count: count)))
        default: self = .null
        }
    }
}
