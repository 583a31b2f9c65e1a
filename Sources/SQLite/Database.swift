import CSQLite
import Foundation

/// One SQLite connection in WAL mode (synchronous=NORMAL, foreign keys on), shared by many threads.
///
/// Every call is serialized by one lock, so the connection is opened without SQLite's own mutex. `run` and `query`
/// reuse prepared statements from a cache keyed by their SQL. Inside `transaction`, the body gets this same object
/// and may call it freely on its own thread (the lock is re-entrant); it must not wait for another thread that uses
/// this database, or both wait forever.
///
/// `@unchecked Sendable`: the connection, the statement cache, `isClosed` and the transaction depth are only
/// touched while `lock` is held.
public final class Database: @unchecked Sendable {
    public let path: String
    let lock = ReentrantLock()
    let connection: Connection
    private var cache: [String: StatementHandle] = [:]
    private(set) var isClosed = false
    private var transactionDepth = 0

    /// Statements built from varying SQL (say, IN lists) would otherwise pile up for the life of the connection.
    private static let cacheLimit = 256

    /// Opens the database at `path`, creating it with mode 0600 unless `readOnly`. SQLite gives the -wal and -shm
    /// files the mode of the database file, so they are private too.
    /// Throws `SQLiteError` naming the path when the file cannot be opened or is not a database.
    public init(path: String, busyTimeout: Duration = .seconds(5), readOnly: Bool = false) throws {
        self.path = path
        if !readOnly && !Self.isSpecial(path) { try Self.createPrivately(path) }
        var handle: OpaquePointer?
        let flags = (readOnly ? SQLITE_OPEN_READONLY : SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE)
            | SQLITE_OPEN_NOMUTEX | SQLITE_OPEN_EXRESCODE
        let code = sqlite3_open_v2(path, &handle, flags, nil)
        guard code == SQLITE_OK, let handle else {
            let message = handle.map { String(cString: sqlite3_errmsg($0)) } ?? "out of memory"
            sqlite3_close_v2(handle)
            throw SQLiteError(code: code, message: message, sql: nil, operation: "open \(path)")
        }
        connection = Connection(handle: handle)
        let (seconds, attoseconds) = busyTimeout.components
        let milliseconds = seconds.multipliedReportingOverflow(by: 1000).partialValue + attoseconds / 1_000_000_000_000_000
        sqlite3_busy_timeout(handle, Int32(clamping: max(0, milliseconds)))
        do {
            // SQLite opens lazily; reading the schema turns "file is not a database" into an error here, not later.
            _ = try query("PRAGMA schema_version")
            if !readOnly {
                _ = try query("PRAGMA journal_mode=WAL")
                try execute("PRAGMA synchronous=NORMAL; PRAGMA foreign_keys=ON;")
            } else {
                try execute("PRAGMA foreign_keys=ON;")
            }
        } catch let failure as SQLiteError {
            try? close()
            throw SQLiteError(code: failure.code, message: failure.message, sql: failure.sql,
                              operation: "open \(path) (\(failure.operation))")
        }
    }

    deinit {
        // Statements first: each holds the connection, which closes when the last of them is gone.
        cache.removeAll()
    }

    /// Finalizes cached statements and closes the connection; later calls throw. Closing twice is harmless.
    public func close() throws {
        try lock.withLock {
            guard !isClosed else { return }
            isClosed = true
            cache.removeAll()
            let code = connection.close()
            if code != SQLITE_OK { throw SQLiteError(code: code, message: "close failed", sql: nil, operation: "close \(path)") }
        }
    }

    /// Runs one or more statements that take no parameters (schema changes, pragmas).
    public func execute(_ sql: String) throws {
        try lock.withLock {
            guard !isClosed else { throw SQLiteError.closed(sql: sql) }
            var message: UnsafeMutablePointer<CChar>?
            let code = sqlite3_exec(connection.handle, sql, nil, nil, &message)
            if code != SQLITE_OK {
                let text = message.map { String(cString: $0) } ?? connection.errorMessage
                sqlite3_free(message)
                throw SQLiteError(code: code, message: text, sql: sql, operation: "execute")
            }
        }
    }

    /// Runs one statement with parameters and returns how many rows it changed.
    @discardableResult
    public func run(_ sql: String, _ bindings: [SQLValue] = []) throws -> Int {
        try lock.withLock {
            let statement = try cached(sql)
            try statement.bind(bindings)
            try statement.runToCompletion()
            return changes
        }
    }

    /// Runs one statement with parameters and returns its rows.
    public func query(_ sql: String, _ bindings: [SQLValue] = []) throws -> [Row] {
        try lock.withLock {
            let statement = try cached(sql)
            try statement.bind(bindings)
            return try statement.rows()
        }
    }

    /// Prepares `sql` for repeated use, outside the cache.
    public func prepare(_ sql: String) throws -> Statement {
        try lock.withLock {
            guard !isClosed else { throw SQLiteError.closed(sql: sql) }
            return Statement(database: self, handle: try StatementHandle(connection: connection, sql: sql, persistent: true))
        }
    }

    /// The rowid of the last row inserted by this connection (0 when closed or none).
    public var lastInsertRowID: Int64 {
        lock.withLock { isClosed ? 0 : sqlite3_last_insert_rowid(connection.handle) }
    }

    /// Runs `body` inside `BEGIN IMMEDIATE … COMMIT`; any error thrown (by the body or by COMMIT) rolls it all back.
    /// Other threads wait until it ends. A nested call becomes a savepoint, so an inner failure undoes only its part.
    @discardableResult
    public func transaction<T>(_ body: (Database) throws -> T) throws -> T {
        try lock.withLock {
            guard !isClosed else { throw SQLiteError.closed(sql: nil) }
            let depth = transactionDepth
            let savepoint = "fleetkeep_savepoint_\(depth)"
            try run(depth == 0 ? "BEGIN IMMEDIATE" : "SAVEPOINT \(savepoint)")
            transactionDepth += 1
            defer { transactionDepth -= 1 }
            do {
                let result = try body(self)
                try run(depth == 0 ? "COMMIT" : "RELEASE \(savepoint)")
                return result
            } catch {
                rollback(depth: depth, savepoint: savepoint)
                throw error
            }
        }
    }

    /// Applies, in version order, every migration not yet recorded in the `schema_version` table, each in its own
    /// transaction together with its record. Re-checked inside the transaction, so two processes migrating the same
    /// file apply each version once.
    public func migrate(_ migrations: [Migration]) throws {
        var seen = Set<Int>()
        for migration in migrations {
            guard migration.version > 0, seen.insert(migration.version).inserted else {
                throw SQLiteError(code: SQLITE_MISUSE, message: "migration versions must be positive and unique (got \(migration.version) again or ≤ 0)",
                                  sql: nil, operation: "migrate \(path)")
            }
        }
        try lock.withLock {
            try execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER PRIMARY KEY, applied_at INTEGER NOT NULL)")
            let applied = Set(try appliedMigrations())
            for migration in migrations.sorted(by: { $0.version < $1.version }) where !applied.contains(migration.version) {
                try transaction { db in
                    guard try db.query("SELECT 1 FROM schema_version WHERE version = ?", [.int(migration.version)]).isEmpty else { return }
                    do {
                        try db.execute(migration.sql)
                    } catch let failure as SQLiteError {
                        throw SQLiteError(code: failure.code, message: failure.message, sql: failure.sql,
                                          operation: "migration \(migration.version) of \(path)")
                    }
                    try db.run("INSERT INTO schema_version (version, applied_at) VALUES (?, ?)",
                               [.int(migration.version), .integer(Int64(Date().timeIntervalSince1970))])
                }
            }
        }
    }

    /// The versions recorded by `migrate`, ascending (empty for a database never migrated).
    public func appliedMigrations() throws -> [Int] {
        try lock.withLock {
            let exists = try query("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'schema_version'")
            guard !exists.isEmpty else { return [] }
            return try query("SELECT version FROM schema_version ORDER BY version").compactMap { $0.int("version").map(Int.init) }
        }
    }

    /// The highest applied migration version (0 for a database never migrated).
    public func schemaVersion() throws -> Int { try appliedMigrations().last ?? 0 }

    // MARK: - Internals (lock held)

    var changes: Int { Int(sqlite3_changes64(connection.handle)) }

    private func cached(_ sql: String) throws -> StatementHandle {
        guard !isClosed else { throw SQLiteError.closed(sql: sql) }
        if let statement = cache[sql] { return statement }
        let statement = try StatementHandle(connection: connection, sql: sql, persistent: true)
        // No cached statement is mid-step here (run/query finish theirs before returning), so dropping them is safe.
        if cache.count >= Self.cacheLimit { cache.removeAll(keepingCapacity: true) }
        cache[sql] = statement
        return statement
    }

    /// Best effort: SQLite may already have rolled back on its own (SQLITE_FULL, some I/O errors), and the error that
    /// got us here is the one worth reporting.
    private func rollback(depth: Int, savepoint: String) {
        guard !isClosed else { return }
        if depth == 0 {
            if sqlite3_get_autocommit(connection.handle) == 0 { _ = try? run("ROLLBACK") }
        } else {
            _ = try? run("ROLLBACK TO \(savepoint)")
            _ = try? run("RELEASE \(savepoint)")
        }
    }

    private static func isSpecial(_ path: String) -> Bool {
        path.isEmpty || path == ":memory:" || path.hasPrefix("file:")
    }

    /// SQLite would create the file with the process umask (often world-readable); create it ourselves instead.
    private static func createPrivately(_ path: String) throws {
        let descriptor = open(path, O_CREAT | O_EXCL | O_WRONLY | O_CLOEXEC, 0o600)
        if descriptor < 0 {
            let code = errno
            if code == EEXIST { return }
            throw SQLiteError(code: SQLITE_CANTOPEN, message: String(cString: strerror(code)), sql: nil, operation: "create \(path)")
        }
        // The umask could only have removed bits; make the mode exact anyway.
        fchmod(descriptor, 0o600)
        Glibc.close(descriptor)
    }
}
