import SQLite
import Testing
import TestSupport

struct ErrorTests {
    @Test func syntaxErrorCarriesSQLAndMessage() throws {
        let directory = TemporaryDirectory()
        let db = try Database(path: directory.appending("syntax.sqlite"))
        for sql in ["SELEC nonsense", "SELECT * FROM missing_table"] {
            do {
                _ = try db.query(sql)
                Issue.record("expected an error for \(sql)")
            } catch let error as SQLiteError {
                #expect(error.sql == sql)
                #expect(error.operation == "prepare")
                #expect(error.description.contains(sql))
            }
        }
        do {
            try db.execute("CREATE TABLE ok (x); CREATE TABEL broken (y)")
            Issue.record("expected a syntax error")
        } catch let error as SQLiteError {
            #expect(error.message.contains("syntax error"))
            #expect(error.sql?.contains("TABEL") == true)
        }
    }

    @Test func constraintViolationCarriesSQLAndExtendedCode() throws {
        let directory = TemporaryDirectory()
        let db = try Database(path: directory.appending("constraint.sqlite"))
        try db.execute("CREATE TABLE u (k TEXT PRIMARY KEY, v TEXT NOT NULL)")
        try db.run("INSERT INTO u VALUES (?, ?)", ["a", "1"])
        let sql = "INSERT INTO u VALUES (?, ?)"
        do {
            try db.run(sql, ["a", "2"])
            Issue.record("expected a uniqueness violation")
        } catch let error as SQLiteError {
            #expect(error.isConstraintViolation)
            #expect(error.code == 1555)  // SQLITE_CONSTRAINT_PRIMARYKEY
            #expect(error.sql == sql)
            #expect(error.message.contains("UNIQUE constraint failed: u.k"))
        }
        do {
            try db.run(sql, ["b", nil])
            Issue.record("expected a NOT NULL violation")
        } catch let error as SQLiteError {
            #expect(error.code == 1299)  // SQLITE_CONSTRAINT_NOTNULL
        }
        // The statement that failed is reset and works again from the cache.
        #expect(try db.run(sql, ["b", "3"]) == 1)
        #expect(try db.query("SELECT v FROM u ORDER BY k").map { $0.string("v") } == ["1", "3"])
    }

    @Test func wrongNumberOfBindingsIsAnError() throws {
        let directory = TemporaryDirectory()
        let db = try Database(path: directory.appending("bind.sqlite"))
        try db.execute("CREATE TABLE t (a, b)")
        do {
            try db.run("INSERT INTO t VALUES (?, ?)", [1])
            Issue.record("a missing binding was accepted")
        } catch let error as SQLiteError {
            #expect(error.message.contains("takes 2 parameters, got 1"))
        }
        #expect(throws: SQLiteError.self) { try db.query("SELECT 1", [1]) }
        #expect(throws: SQLiteError.self) { try db.query("   -- only a comment") }
        #expect(try db.query("SELECT COUNT(*) AS c FROM t").first?.int("c") == 0)
    }
}
