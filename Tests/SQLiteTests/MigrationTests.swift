import Dispatch
import SQLite
import Testing
import TestSupport

struct MigrationTests {
    let migrations = [
        Migration(version: 1, sql: "CREATE TABLE a (x INTEGER)"),
        Migration(version: 2, sql: "ALTER TABLE a ADD COLUMN y TEXT; CREATE INDEX a_y ON a (y);"),
    ]

    @Test func appliedOnceAndIdempotentOnReopen() throws {
        let directory = TemporaryDirectory()
        let path = directory.appending("migrate.sqlite")
        do {
            let db = try Database(path: path)
            #expect(try db.appliedMigrations() == [])
            #expect(try db.schemaVersion() == 0)
            try db.migrate(migrations)
            #expect(try db.appliedMigrations() == [1, 2])
            try db.close()
        }
        let db = try Database(path: path)
        try db.migrate(migrations)  // re-applying would fail with "duplicate column name: y"
        try db.migrate(migrations.reversed() + [Migration(version: 3, sql: "CREATE TABLE b (z INTEGER)")])
        #expect(try db.appliedMigrations() == [1, 2, 3])
        #expect(try db.schemaVersion() == 3)
        let times = try db.query("SELECT applied_at FROM schema_version").compactMap { $0.int("applied_at") }
        #expect(times.count == 3 && times.allSatisfy { $0 > 1_600_000_000 })
    }

    @Test func failedMigrationChangesNothingAndNamesItself() throws {
        let directory = TemporaryDirectory()
        let db = try Database(path: directory.appending("bad.sqlite"))
        try db.migrate([migrations[0]])
        let broken = Migration(version: 2, sql: "CREATE TABLE c (x INTEGER); THIS IS NOT SQL")
        do {
            try db.migrate([migrations[0], broken])
            Issue.record("a broken migration was accepted")
        } catch let error as SQLiteError {
            #expect(error.operation.contains("migration 2"))
            #expect(error.sql == broken.sql)
            #expect(error.message.contains("syntax error"))
        }
        #expect(try db.appliedMigrations() == [1])
        #expect(try db.query("SELECT name FROM sqlite_master WHERE name = 'c'").isEmpty)
    }

    @Test func duplicateOrNonPositiveVersionsAreRefused() throws {
        let directory = TemporaryDirectory()
        let db = try Database(path: directory.appending("dup.sqlite"))
        #expect(throws: SQLiteError.self) { try db.migrate([migrations[0], Migration(version: 1, sql: "CREATE TABLE z (q)")]) }
        #expect(throws: SQLiteError.self) { try db.migrate([Migration(version: 0, sql: "CREATE TABLE z (q)")]) }
        #expect(try db.appliedMigrations() == [])
    }

    @Test func twoConnectionsMigratingTogetherApplyEachVersionOnce() throws {
        let directory = TemporaryDirectory()
        let path = directory.appending("race.sqlite")
        let connections = try (0..<4).map { _ in try Database(path: path) }
        let failures = Failures()
        DispatchQueue.concurrentPerform(iterations: connections.count) { index in
            do { try connections[index].migrate(migrations) } catch { failures.add("\(error)") }
        }
        #expect(failures.all.isEmpty)
        #expect(try connections[0].appliedMigrations() == [1, 2])
    }
}
