import CSQLite
import Foundation

/// One SQLite connection in WAL mode, shared by many threads.
///
/// `@unchecked Sendable`: the `sqlite3` handle and the statement cache are touched only while `lock` is held.
/// The lock is recursive (NSRecursiveLock rather than `Mutex`) on purpose: a `transaction` body receives this same
/// object and runs statements inside the transaction on the thread that already holds the lock.
public final class Database: @unchecked Sendable {
    public let path: String
    private let connection: OpaquePointer
    private let lock = NSRecursiveLock()
    private var statements: [String: Statement] = [:]
    private var isClosed = false

    /// Opens (creating with mode 0600 if needed) the database at `path`.
    public init(path: String, busyTimeout: Duration = .seconds(5), readOnly: Bool = false) throws {
        self.path = path
        if !readOnly && !FileManager.default.fileExists(atPath: path) {
            // Create the file ourselves so it is private from the first byte; SQLite would use the umask.
            let descriptor = open(path, O_CREAT | O_WRONLY | O_CLOEXEC, 0o600)
            guard descriptor >= 0 else {
                throw SQLiteError(code: SQLITE_CANTOPEN, message: String(cString: strerror(errno)), sql: nil, operation: "create \(path)")
            }
            Glibc.close(descriptor)
        }
        var handle: OpaquePointer?
        let flags = (readOnly ? SQLITE_OPEN_READONLY : SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE) | SQLITE_OPEN_NOMUTEX
        let code = sqlite3_open_v2(path, &handle, flags, nil)
        guard code == SQLITE_OK, let handle else {
            let message = handle.map { String(cString: sqlite3_errmsg($0)) } ?? "out of memory"
            sqlite3_close_v2(handle)
            throw SQLiteError(code: code, message: message, sql: nil, operation: "open \(path)")
        }
        connection = handle
        sqlite3_extended_result_codes(handle, 1)
        let milliseconds = busyTimeout.components.seconds * 1000 + busyTimeout.components.attoseconds / 1_000_000_000_000_000
        sqlite3_busy_timeout(handle, Int32(clamping: milliseconds))
        do {
            // Reading the schema here turns "file is not a database" into an error at open time.
            _ = try query("PRAGMA schema_version")
            if !readOnly {
                _ = try query("PRAGMA journal_mode=WAL")
                try execute("PRAGMA synchronous=NORMAL; PRAGMA foreign_keys=ON;")
            }
        } catch let failure as SQLiteError {
            statements.removeAll()
            sqlite3_close_v2(handle)
            isClosed = true
            throw SQLiteError(code: failure.code, message: failure.message, sql: failure.sql,
                              operation: "open \(path) (\(failure.operation))")
        }
    }

    deinit {
        if !isClosed {
            statements.removeAll()
            sqlite3_close_v2(connection)
        }
    }

    /// Closes the connection; later calls throw.
    public func close() throws {
        try locked {
            guard !isClosed else { return }
            statements.removeAll()
            let code = sqlite3_close_v2(connection)
            if code != SQLITE_OK { throw error(code, "close", nil) }
            isClosed = true
        }
    }

    /// Runs one or more statements that take no parameters.
    public func execute(_ sql: String) throws {
        try locked {
            var message: UnsafeMutablePointer<CChar>?
            let code = sqlite3_exec(connection, sql, nil, nil, &message)
            if code != SQLITE_OK {
                let text = message.map { String(cString: $0) } ?? String(cString: sqlite3_errmsg(connection))
                sqlite3_free(message)
                throw SQLiteError(code: code, message: text, sql: sql, operation: "execute")
            }
        }
    }

    /// Runs one statement with parameters and returns how many rows it changed.
    @discardableResult
    public func run(_ sql: String, _ bindings: [SQLValue] = []) throws -> Int {
        try locked {
            let statement = try prepared(sql)
            try statement.bind(bindings)
            _ = try statement.rows()
            return Int(sqlite3_changes(connection))
        }
    }

    /// Runs a query and returns its rows.
    public func query(_ sql: String, _ bindings: [SQLValue] = []) throws -> [Row] {
        try locked {
            let statement = try prepared(sql)
            try statement.bind(bindings)
            return try statement.rows()
        }
    }

    public var lastInsertRowID: Int64 { locked { sqlite3_last_insert_rowid(connection) } }

    /// Runs `body` inside `BEGIN IMMEDIATE … COMMIT`; any thrown error rolls everything back.
    /// Other threads wait until the transaction ends; `body` may use this database freely.
    public func transaction<T>(_ body: (Database) throws -> T) throws -> T {
        try locked {
            try execute("BEGIN IMMEDIATE")
            do {
                let result = try body(self)
                try execute("COMMIT")
                return result
            } catch {
                try? execute("ROLLBACK")
                throw error
            }
        }
    }

    /// Applies the migrations newer than the recorded schema version, each in its own transaction.
    public func migrate(_ migrations: [Migration]) throws {
        try locked {
            try execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER PRIMARY KEY, applied_at INTEGER NOT NULL)")
            let current = try query("SELECT COALESCE(MAX(version), 0) AS v FROM schema_version").first?.int("v") ?? 0
            for migration in migrations.sorted(by: { $0.version < $1.version }) where migration.version > current {
                try transaction { db in
                    try db.execute(migration.sql)
                    try db.run("INSERT INTO schema_version (version, applied_at) VALUES (?, ?)",
                               [.int(migration.version), .integer(Int64(Date().timeIntervalSince1970))])
                }
            }
        }
    }

    /// The highest applied migration version (0 for a new database).
    public func schemaVersion() throws -> Int {
        let rows = try query("SELECT COALESCE(MAX(version), 0) AS v FROM schema_version")
        return Int(rows.first?.int("v") ?? 0)
    }

    // MARK: - Internals

    private func locked<T>(_ body: () throws -> T) rethrows -> T {
        lock.lock()
        defer { lock.unlock() }
        return try body()
    }

    private func prepared(_ sql: String) throws -> Statement {
        guard !isClosed else { throw SQLiteError(code: SQLITE_MISUSE, message: "database is closed", sql: sql, operation: "prepare") }
        if let statement = statements[sql] { return statement }
        let statement = try Statement(connection: connection, sql: sql)
        statements[sql] = statement
        return statement
    }

    func error(_ code: Int32, _ operation: String, _ sql: String?) -> SQLiteError {
        SQLiteError(code: code, message: String(cString: sqlite3_errmsg(connection)), sql: sql, operation: operation)
    }
}
