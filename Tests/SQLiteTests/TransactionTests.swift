import SQLite
import Testing
import TestSupport

struct TransactionTests {
    struct Boom: Error {}

    private func count(_ db: Database, _ table: String = "t") throws -> Int64? {
        try db.query("SELECT COUNT(*) AS c FROM \(table)").first?.int("c")
    }

    @Test func thrownErrorRollsBackAndDatabaseStaysUsable() throws {
        let directory = TemporaryDirectory()
        let db = try Database(path: directory.appending("tx.sqlite"))
        try db.execute("CREATE TABLE t (x INTEGER UNIQUE)")
        #expect(throws: Boom.self) {
            try db.transaction { db in
                try db.run("INSERT INTO t VALUES (1)")
                try db.run("INSERT INTO t VALUES (2)")
                throw Boom()
            }
        }
        #expect(try count(db) == 0)
        // A failing statement inside the body rolls back the earlier ones too.
        #expect(throws: SQLiteError.self) {
            try db.transaction { db in
                try db.run("INSERT INTO t VALUES (5)")
                try db.run("INSERT INTO t VALUES (5)")
            }
        }
        #expect(try count(db) == 0)
        let changed = try db.transaction { db -> Int in
            try db.run("INSERT INTO t VALUES (2)")
            return try db.run("UPDATE t SET x = 3 WHERE x = 2")
        }
        #expect(changed == 1)
        #expect(try db.query("SELECT x FROM t").map { $0.int("x") } == [3])
    }

    @Test func nestedTransactionIsASavepoint() throws {
        let directory = TemporaryDirectory()
        let db = try Database(path: directory.appending("nested.sqlite"))
        try db.execute("CREATE TABLE t (x INTEGER)")
        try db.transaction { db in
            try db.run("INSERT INTO t VALUES (1)")
            #expect(throws: Boom.self) {
                try db.transaction { db in
                    try db.run("INSERT INTO t VALUES (2)")
                    throw Boom()
                }
            }
            try db.transaction { db in try db.run("INSERT INTO t VALUES (3)") }
        }
        #expect(try db.query("SELECT x FROM t ORDER BY x").map { $0.int("x") } == [1, 3])
        // An outer failure undoes the committed inner savepoint as well.
        #expect(throws: Boom.self) {
            try db.transaction { db in
                try db.transaction { db in try db.run("INSERT INTO t VALUES (4)") }
                throw Boom()
            }
        }
        #expect(try count(db) == 2)
    }

    @Test func foreignKeysAreEnforced() throws {
        let directory = TemporaryDirectory()
        let db = try Database(path: directory.appending("fk.sqlite"))
        try db.execute("CREATE TABLE p (id INTEGER PRIMARY KEY); CREATE TABLE c (p INTEGER NOT NULL REFERENCES p(id));")
        do {
            try db.run("INSERT INTO c VALUES (?)", [42])
            Issue.record("a row pointing at a missing parent was accepted")
        } catch let error as SQLiteError {
            #expect(error.isConstraintViolation)
            #expect(error.message.contains("FOREIGN KEY"))
        }
        #expect(try count(db, "c") == 0)
    }
}
