import Foundation
import SQLite

/// What an operator may do on the dashboard. A viewer reads the fleet; an admin also starts jobs, manages licences
/// and sees personal data (customers' names and emails).
public enum OperatorRole: String, Codable, Sendable, CaseIterable {
    case admin, viewer
}

/// A stored scrypt password hash with its parameters, so the cost can be raised later without breaking old hashes.
public struct PasswordHash: Sendable, Equatable {
    public var salt: [UInt8]
    public var hash: [UInt8]
    public var n: UInt64
    public var r: UInt64
    public var p: UInt64
}

/// One dashboard operator as stored.
public struct OperatorRecord: Sendable {
    public let id: Int64
    public let name: String
    public let role: OperatorRole
    public let createdAt: Int64
    public let password: PasswordHash?
    public let passwordSetAt: Int64?
    public let lastLoginAt: Int64?
    /// A password-setting link is outstanding until this time.
    public let setupExpiresAt: Int64?
}

/// One signed-in browser. The cookie holds the token; only its hash is stored.
public struct OperatorSessionRecord: Sendable {
    public let tokenHash: [UInt8]
    public let operatorID: Int64
    /// The form token every POST of this session must carry.
    public let csrf: String
    public let createdAt: Int64
    public let lastUsedAt: Int64
}

/// Storage of operators, their password-setting links and their sessions.
public protocol OperatorStore: Sendable {
    /// False when the name is taken.
    func addOperator(name: String, role: OperatorRole, setupHash: [UInt8], setupExpiresAt: Int64, now: Int64) throws -> Bool
    func operators() throws -> [OperatorRecord]
    func operatorRecord(name: String) throws -> OperatorRecord?
    func operatorRecord(id: Int64) throws -> OperatorRecord?
    /// The operator whose outstanding link has this hash (expired or not).
    func operatorRecord(setupHash: [UInt8]) throws -> OperatorRecord?
    /// Removes the operator and its sessions; false when there is none of that name.
    func removeOperator(name: String) throws -> Bool
    /// Clears the password, ends every session and sets a new link; false when there is none of that name.
    func resetOperator(name: String, setupHash: [UInt8], setupExpiresAt: Int64) throws -> Bool
    /// Sets the password and consumes the link, if `setupHash` is still the operator's link; false otherwise.
    func setPassword(operatorID: Int64, setupHash: [UInt8], password: PasswordHash, now: Int64) throws -> Bool
    func recordLogin(operatorID: Int64, now: Int64) throws

    func insertSession(_ session: OperatorSessionRecord) throws
    func session(tokenHash: [UInt8]) throws -> OperatorSessionRecord?
    func touchSession(tokenHash: [UInt8], now: Int64) throws
    func deleteSession(tokenHash: [UInt8]) throws
    /// Deletes sessions idle since before `idleBefore` or created before `createdBefore`.
    func deleteSessions(idleBefore: Int64, createdBefore: Int64) throws
}

/// The dashboard's tables (migrations 500+): operators, sessions, the read log (`DashboardReadLog`) and indexes the
/// pages need on the jobs table.
enum DashboardSchema {
    static let migrations = [
        Migration(version: 500, sql: """
            CREATE TABLE operators (id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE, role TEXT NOT NULL CHECK (role IN ('admin', 'viewer')),
                                    created_at INTEGER NOT NULL, password_salt BLOB, password_hash BLOB, password_n INTEGER, password_r INTEGER,
                                    password_p INTEGER, password_set_at INTEGER, last_login_at INTEGER, setup_hash BLOB, setup_expires_at INTEGER);
            CREATE UNIQUE INDEX operators_setup ON operators (setup_hash) WHERE setup_hash IS NOT NULL;
            CREATE TABLE operator_sessions (token_hash BLOB PRIMARY KEY, operator_id INTEGER NOT NULL REFERENCES operators(id) ON DELETE CASCADE,
                                            csrf TEXT NOT NULL, created_at INTEGER NOT NULL, last_used_at INTEGER NOT NULL) WITHOUT ROWID;
            CREATE INDEX operator_sessions_operator ON operator_sessions (operator_id);
            """),
        // 501 held the dashboard's own log of personal-data reads; they go to the privacy audit log now.
        // The overview's per-agent backup state (one index seek per agent), /metrics' jobs by kind and state, and the
        // fleet's daily outcomes (both read from the second index alone).
        Migration(version: 502, sql: """
            CREATE INDEX dashboard_jobs_agent_kind_finished ON jobs (agent_id, kind, state, finished_at);
            CREATE INDEX dashboard_jobs_kind_state ON jobs (kind, state, finished_at);
            """),
    ]

    /// Applies the dashboard migrations; the jobs table (migration 201) must exist first.
    static func apply(to database: Database) throws {
        _ = try SQLiteJobStore(database: database)
        try database.migrate(migrations)
    }
}

/// `OperatorStore` on the controller's SQLite database.
public final class SQLiteOperatorStore: OperatorStore {
    let database: Database

    public init(database: Database) throws {
        self.database = database
        try DashboardSchema.apply(to: database)
    }

    public func addOperator(name: String, role: OperatorRole, setupHash: [UInt8], setupExpiresAt: Int64, now: Int64) throws -> Bool {
        try database.run("""
            INSERT INTO operators (name, role, created_at, setup_hash, setup_expires_at) VALUES (?, ?, ?, ?, ?) ON CONFLICT(name) DO NOTHING
            """, [.text(name), .text(role.rawValue), .integer(now), .blob(setupHash), .integer(setupExpiresAt)]) == 1
    }

    public func operators() throws -> [OperatorRecord] {
        try database.query("SELECT * FROM operators ORDER BY name").compactMap(Self.record)
    }

    public func operatorRecord(name: String) throws -> OperatorRecord? {
        try database.query("SELECT * FROM operators WHERE name = ?", [.text(name)]).first.flatMap(Self.record)
    }

    public func operatorRecord(id: Int64) throws -> OperatorRecord? {
        try database.query("SELECT * FROM operators WHERE id = ?", [.integer(id)]).first.flatMap(Self.record)
    }

    public func operatorRecord(setupHash: [UInt8]) throws -> OperatorRecord? {
        try database.query("SELECT * FROM operators WHERE setup_hash = ?", [.blob(setupHash)]).first.flatMap(Self.record)
    }

    public func removeOperator(name: String) throws -> Bool {
        try database.transaction { db in
            guard let id = try db.query("SELECT id FROM operators WHERE name = ?", [.text(name)]).first?.int("id") else { return false }
            try db.run("DELETE FROM operator_sessions WHERE operator_id = ?", [.integer(id)])
            try db.run("DELETE FROM operators WHERE id = ?", [.integer(id)])
            return true
        }
    }

    public func resetOperator(name: String, setupHash: [UInt8], setupExpiresAt: Int64) throws -> Bool {
        try database.transaction { db in
            guard let id = try db.query("SELECT id FROM operators WHERE name = ?", [.text(name)]).first?.int("id") else { return false }
            try db.run("DELETE FROM operator_sessions WHERE operator_id = ?", [.integer(id)])
            try db.run("""
                UPDATE operators SET password_salt = NULL, password_hash = NULL, password_n = NULL, password_r = NULL, password_p = NULL,
                                     password_set_at = NULL, setup_hash = ?, setup_expires_at = ? WHERE id = ?
                """, [.blob(setupHash), .integer(setupExpiresAt), .integer(id)])
            return true
        }
    }

    public func setPassword(operatorID: Int64, setupHash: [UInt8], password: PasswordHash, now: Int64) throws -> Bool {
        try database.transaction { db in
            let changed = try db.run("""
                UPDATE operators SET password_salt = ?, password_hash = ?, password_n = ?, password_r = ?, password_p = ?, password_set_at = ?,
                                     setup_hash = NULL, setup_expires_at = NULL
                WHERE id = ? AND setup_hash = ?
                """, [.blob(password.salt), .blob(password.hash), .integer(Int64(clamping: password.n)), .integer(Int64(clamping: password.r)),
                      .integer(Int64(clamping: password.p)), .integer(now), .integer(operatorID), .blob(setupHash)])
            guard changed == 1 else { return false }
            // A new password ends every session opened with the old one.
            try db.run("DELETE FROM operator_sessions WHERE operator_id = ?", [.integer(operatorID)])
            return true
        }
    }

    public func recordLogin(operatorID: Int64, now: Int64) throws {
        try database.run("UPDATE operators SET last_login_at = ? WHERE id = ?", [.integer(now), .integer(operatorID)])
    }

    public func insertSession(_ session: OperatorSessionRecord) throws {
        try database.run("INSERT INTO operator_sessions (token_hash, operator_id, csrf, created_at, last_used_at) VALUES (?, ?, ?, ?, ?)",
                         [.blob(session.tokenHash), .integer(session.operatorID), .text(session.csrf), .integer(session.createdAt),
                          .integer(session.lastUsedAt)])
    }

    public func session(tokenHash: [UInt8]) throws -> OperatorSessionRecord? {
        guard let row = try database.query("SELECT * FROM operator_sessions WHERE token_hash = ?", [.blob(tokenHash)]).first,
              let operatorID = row.int("operator_id"), let csrf = row.string("csrf"), let created = row.int("created_at"),
              let used = row.int("last_used_at") else { return nil }
        return OperatorSessionRecord(tokenHash: tokenHash, operatorID: operatorID, csrf: csrf, createdAt: created, lastUsedAt: used)
    }

    public func touchSession(tokenHash: [UInt8], now: Int64) throws {
        try database.run("UPDATE operator_sessions SET last_used_at = MAX(last_used_at, ?) WHERE token_hash = ?", [.integer(now), .blob(tokenHash)])
    }

    public func deleteSession(tokenHash: [UInt8]) throws {
        try database.run("DELETE FROM operator_sessions WHERE token_hash = ?", [.blob(tokenHash)])
    }

    public func deleteSessions(idleBefore: Int64, createdBefore: Int64) throws {
        try database.run("DELETE FROM operator_sessions WHERE last_used_at < ? OR created_at < ?", [.integer(idleBefore), .integer(createdBefore)])
    }

    static func record(_ row: Row) -> OperatorRecord? {
        guard let id = row.int("id"), let name = row.string("name"), let role = row.string("role").flatMap(OperatorRole.init),
              let created = row.int("created_at") else { return nil }
        var password: PasswordHash?
        if let salt = row.blob("password_salt"), let hash = row.blob("password_hash"), let n = row.int("password_n"), let r = row.int("password_r"),
           let p = row.int("password_p"), n > 0, r > 0, p > 0 {
            password = PasswordHash(salt: salt, hash: hash, n: UInt64(n), r: UInt64(r), p: UInt64(p))
        }
        return OperatorRecord(id: id, name: name, role: role, createdAt: created, password: password, passwordSetAt: row.int("password_set_at"),
                              lastLoginAt: row.int("last_login_at"), setupExpiresAt: row.int("setup_expires_at"))
    }
}
