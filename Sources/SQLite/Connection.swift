import CSQLite

/// Owns one `sqlite3*` and closes it when the last user (the database or a statement) lets go.
///
/// `@unchecked Sendable`: the handle is opened with `SQLITE_OPEN_NOMUTEX`, and every use of it, including finalizing
/// statements, happens while the owning `Database`'s lock is held.
final class Connection: @unchecked Sendable {
    let handle: OpaquePointer
    private var isClosed = false

    init(handle: OpaquePointer) { self.handle = handle }

    deinit { if !isClosed { sqlite3_close_v2(handle) } }

    /// `sqlite3_close_v2` defers the real close until outstanding statements are finalized, so this always succeeds
    /// for a connection we opened; the code is returned for completeness.
    func close() -> Int32 {
        guard !isClosed else { return SQLITE_OK }
        isClosed = true
        return sqlite3_close_v2(handle)
    }

    var errorMessage: String { String(cString: sqlite3_errmsg(handle)) }

    func error(_ code: Int32, _ operation: String, sql: String?) -> SQLiteError {
        SQLiteError(code: code, message: errorMessage, sql: sql, operation: operation)
    }
}
