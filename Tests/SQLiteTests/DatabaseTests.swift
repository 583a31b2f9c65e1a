import Foundation
import SQLite
import Testing

private func scratchPath(_ name: String = "db.sqlite") -> (URL, String) {
    let directory = FileManager.default.temporaryDirectory.appendingPathComponent("fk-sqlite-\(UUID().uuidString)")
    try! FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
    return (directory, directory.appendingPathComponent(name).path)
}

struct DatabaseTests {
    @Test func valuesRoundTrip() throws {
        let (dir, path) = scratchPath()
        defer { try? FileManager.default.removeItem(at: dir) }
        let db = try Database(path: path)
        try db.execute("CREATE TABLE t (i INTEGER, r REAL, s TEXT, b BLOB, n TEXT)")
        try db.run("INSERT INTO t VALUES (?, ?, ?, ?, ?)", [.integer(-42), .real(2.5), .text("héllo ✓ 日本"), .blob([0, 1, 255]), .null])
        let row = try #require(try db.query("SELECT * FROM t").first)
        #expect(row.int("i") == -42)
        #expect(row.double("r") == 2.5)
        #expect(row.string("s") == "héllo ✓ 日本")
        #expect(row.blob("b") == [0, 1, 255])
        #expect(row["n"] == .null)
        #expect(row["missing"] == .null)
        try db.run("INSERT INTO t (b) VALUES (?)", [.blob([])])
        #expect(try db.query("SELECT b FROM t WHERE i IS NULL").first?.blob("b") == [])
    }

    @Test func newFileIsPrivateAndInWALMode() throws {
        let (dir, path) = scratchPath()
        defer { try? FileManager.default.removeItem(at: dir) }
        let db = try Database(path: path)
        let mode = try FileManager.default.attributesOfItem(atPath: path)[.posixPermissions] as? Int
        #expect(mode == 0o600)
        #expect(try db.query("PRAGMA journal_mode").first?.string("journal_mode") == "wal")
    }

    @Test func transactionRollsBackOnError() throws {
        let (dir, path) = scratchPath()
        defer { try? FileManager.default.removeItem(at: dir) }
        let db = try Database(path: path)
        try db.execute("CREATE TABLE t (x INTEGER)")
        struct Boom: Error {}
        #expect(throws: Boom.self) {
            try db.transaction { db in
                try db.run("INSERT INTO t VALUES (1)")
                throw Boom()
            }
        }
        #expect(try db.query("SELECT COUNT(*) AS c FROM t").first?.int("c") == 0)
        let value = try db.transaction { db -> Int in
            try db.run("INSERT INTO t VALUES (2)")
            return try db.run("INSERT INTO t VALUES (3)")
        }
        #expect(value == 1)
        #expect(try db.query("SELECT COUNT(*) AS c FROM t").first?.int("c") == 2)
    }

    @Test func migrationsApplyOnceAndSurviveReopen() throws {
        let (dir, path) = scratchPath()
        defer { try? FileManager.default.removeItem(at: dir) }
        let migrations = [Migration(version: 1, sql: "CREATE TABLE a (x INTEGER)"),
                          Migration(version: 2, sql: "ALTER TABLE a ADD COLUMN y TEXT")]
        do {
            let db = try Database(path: path)
            try db.migrate(migrations)
            #expect(try db.schemaVersion() == 2)
        }
        let db = try Database(path: path)
        try db.migrate(migrations)  // would fail with "duplicate column" if re-applied
        try db.migrate(migrations + [Migration(version: 3, sql: "CREATE TABLE b (z INTEGER)")])
        #expect(try db.schemaVersion() == 3)
        #expect(try db.query("SELECT COUNT(*) AS c FROM schema_version").first?.int("c") == 3)
    }

    @Test func failedMigrationLeavesSchemaUnchanged() throws {
        let (dir, path) = scratchPath()
        defer { try? FileManager.default.removeItem(at: dir) }
        let db = try Database(path: path)
        try db.migrate([Migration(version: 1, sql: "CREATE TABLE a (x INTEGER)")])
        #expect(throws: SQLiteError.self) {
            try db.migrate([Migration(version: 2, sql: "CREATE TABLE c (x INTEGER); THIS IS NOT SQL")])
        }
        #expect(try db.schemaVersion() == 1)
        #expect(try db.query("SELECT name FROM sqlite_master WHERE name = 'c'").isEmpty)
    }

    @Test func errorsCarryTheSQL() throws {
        let (dir, path) = scratchPath()
        defer { try? FileManager.default.removeItem(at: dir) }
        let db = try Database(path: path)
        do {
            _ = try db.query("SELEC nonsense")
            Issue.record("expected a syntax error")
        } catch let error as SQLiteError {
            #expect(error.sql == "SELEC nonsense")
            #expect(error.description.contains("syntax error"))
        }
        try db.execute("CREATE TABLE u (k TEXT PRIMARY KEY)")
        try db.run("INSERT INTO u VALUES ('a')")
        do {
            try db.run("INSERT INTO u VALUES (?)", ["a"])
            Issue.record("expected a constraint violation")
        } catch let error as SQLiteError {
            #expect(error.isConstraintViolation)
            #expect(error.sql == "INSERT INTO u VALUES (?)")
        }
        #expect(throws: SQLiteError.self) { try db.run("INSERT INTO u VALUES (?)", []) }
    }

    @Test func concurrentWritersAllLand() throws {
        let (dir, path) = scratchPath()
        defer { try? FileManager.default.removeItem(at: dir) }
        let db = try Database(path: path)
        try db.execute("CREATE TABLE t (thread INTEGER, n INTEGER)")
        DispatchQueue.concurrentPerform(iterations: 8) { thread in
            for n in 0..<200 {
                try! db.transaction { db in _ = try db.run("INSERT INTO t VALUES (?, ?)", [.int(thread), .int(n)]) }
            }
        }
        #expect(try db.query("SELECT COUNT(*) AS c FROM t").first?.int("c") == 1600)
    }

    @Test func secondConnectionWaitsForBusyWriter() throws {
        let (dir, path) = scratchPath()
        defer { try? FileManager.default.removeItem(at: dir) }
        let first = try Database(path: path)
        try first.execute("CREATE TABLE t (x INTEGER)")
        let second = try Database(path: path, busyTimeout: .seconds(5))
        let started = DispatchSemaphore(value: 0)
        let holder = Thread {
            try! first.transaction { db in
                try db.run("INSERT INTO t VALUES (1)")
                started.signal()
                Thread.sleep(forTimeInterval: 0.3)
            }
        }
        holder.start()
        started.wait()
        try second.run("INSERT INTO t VALUES (2)")  // waits for the lock instead of failing with SQLITE_BUSY
        #expect(try second.query("SELECT COUNT(*) AS c FROM t").first?.int("c") == 2)
    }

    @Test func corruptFileGivesClearError() throws {
        let (dir, path) = scratchPath()
        defer { try? FileManager.default.removeItem(at: dir) }
        try Data(repeating: 0x5a, count: 8192).write(to: URL(fileURLWithPath: path))
        do {
            _ = try Database(path: path)
            Issue.record("expected an error for a corrupt file")
        } catch let error as SQLiteError {
            #expect(error.description.contains("not a database"))
            #expect(error.operation.contains(path))
        }
    }

    @Test func closedDatabaseRefusesWork() throws {
        let (dir, path) = scratchPath()
        defer { try? FileManager.default.removeItem(at: dir) }
        let db = try Database(path: path)
        try db.close()
        #expect(throws: SQLiteError.self) { try db.query("SELECT 1") }
    }
}
