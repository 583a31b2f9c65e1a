import Foundation
import SQLite
import Testing
import TestSupport

struct FileTests {
    private func mode(_ path: String) throws -> Int? {
        try FileManager.default.attributesOfItem(atPath: path)[.posixPermissions] as? Int
    }

    @Test func newDatabaseIsPrivateWALWithOurPragmas() throws {
        let directory = TemporaryDirectory()
        let path = directory.appending("private.sqlite")
        let db = try Database(path: path)
        try db.execute("CREATE TABLE t (x)")
        try db.run("INSERT INTO t VALUES (1)")
        #expect(try mode(path) == 0o600)
        #expect(try mode(path + "-wal") == 0o600)
        #expect(try mode(path + "-shm") == 0o600)
        #expect(try db.query("PRAGMA journal_mode").first?.string("journal_mode") == "wal")
        #expect(try db.query("PRAGMA synchronous").first?.int("synchronous") == 1)  // NORMAL
        #expect(try db.query("PRAGMA foreign_keys").first?.int("foreign_keys") == 1)
    }

    @Test func corruptFileGivesClearErrorAndIsLeftAlone() throws {
        let directory = TemporaryDirectory()
        let path = directory.appending("garbage.sqlite")
        let garbage = Data((0..<8192).map { UInt8(truncatingIfNeeded: $0 &* 31 &+ 7) })
        try garbage.write(to: URL(fileURLWithPath: path))
        do {
            _ = try Database(path: path)
            Issue.record("a file of garbage opened as a database")
        } catch let error as SQLiteError {
            #expect(error.message.contains("not a database"))
            #expect(error.operation.contains(path))
        }
        #expect(try Data(contentsOf: URL(fileURLWithPath: path)) == garbage)
    }

    @Test func unopenablePathsGiveErrorsNamingThem() throws {
        let directory = TemporaryDirectory()
        let inMissingDirectory = directory.appending("no/such/dir/db.sqlite")
        do {
            _ = try Database(path: inMissingDirectory)
            Issue.record("opened a database in a missing directory")
        } catch let error as SQLiteError {
            #expect(error.operation.contains(inMissingDirectory))
        }
        let missing = directory.appending("missing.sqlite")
        #expect(throws: SQLiteError.self) { try Database(path: missing, readOnly: true) }
        #expect(!FileManager.default.fileExists(atPath: missing))
    }

    @Test func readOnlyDatabaseReadsButRefusesWrites() throws {
        let directory = TemporaryDirectory()
        let path = directory.appending("ro.sqlite")
        let writer = try Database(path: path)
        try writer.execute("CREATE TABLE t (x)")
        try writer.run("INSERT INTO t VALUES (?)", ["kept"])
        let reader = try Database(path: path, readOnly: true)
        #expect(try reader.query("SELECT x FROM t").first?.string("x") == "kept")
        do {
            try reader.run("INSERT INTO t VALUES (?)", ["lost"])
            Issue.record("a read-only database accepted a write")
        } catch let error as SQLiteError {
            #expect(error.primaryCode == 8)  // SQLITE_READONLY
        }
        #expect(try writer.query("SELECT COUNT(*) AS c FROM t").first?.int("c") == 1)
    }

    @Test func inMemoryDatabaseWorksWithoutCreatingAFile() throws {
        let db = try Database(path: ":memory:")
        try db.execute("CREATE TABLE t (x)")
        try db.run("INSERT INTO t VALUES (1)")
        #expect(db.lastInsertRowID == 1)
        #expect(!FileManager.default.fileExists(atPath: ":memory:"))
    }
}
