/// A statement prepared once and run many times, e.g. in a hot loop.
///
/// It keeps its `Database` alive, and every call takes the database's lock, so it may be used from any thread.
/// `Database.run` and `Database.query` already reuse prepared statements through an internal cache keyed by SQL;
/// a `Statement` only saves the cache lookup.
///
/// `@unchecked Sendable`: the prepared handle is touched (bound, stepped, finalized) only under the database's lock.
public final class Statement: @unchecked Sendable {
    public let database: Database
    public let sql: String
    /// Nil once released; only read or written under the database's lock.
    private var handle: StatementHandle?

    init(database: Database, handle: StatementHandle) {
        self.database = database
        self.sql = handle.sql
        self.handle = handle
    }

    deinit {
        // sqlite3_finalize touches the connection, so it must not race a call on another thread.
        database.lock.withLock { handle = nil }
    }

    /// Runs the statement with `bindings` and returns how many rows it changed.
    @discardableResult
    public func run(_ bindings: [SQLValue] = []) throws -> Int {
        try database.lock.withLock {
            let handle = try usable()
            try handle.bind(bindings)
            try handle.runToCompletion()
            return database.changes
        }
    }

    /// Runs the statement with `bindings` and returns its rows.
    public func query(_ bindings: [SQLValue] = []) throws -> [Row] {
        try database.lock.withLock {
            let handle = try usable()
            try handle.bind(bindings)
            return try handle.rows()
        }
    }

    private func usable() throws -> StatementHandle {
        guard !database.isClosed, let handle else { throw SQLiteError.closed(sql: sql) }
        return handle
    }
}
