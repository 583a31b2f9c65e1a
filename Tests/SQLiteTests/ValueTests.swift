import SQLite
import Testing
import TestSupport

struct ValueTests {
    @Test func everyValueTypeRoundTrips() throws {
        let directory = TemporaryDirectory()
        let db = try Database(path: directory.appending("values.sqlite"))
        try db.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v)")
        let allBytes = (0...255).map(UInt8.init)
        let values: [SQLValue] = [
            .null, 0, -42, .integer(.max), .integer(.min), 2.5, .real(-0.0), .real(.infinity), .real(1e-300),
            "", "plain", "héllo ✓ 日本語 🇩🇪 e\u{301}", .text("a\u{0}b"), .text(String(repeating: "x", count: 100_000)),
            .blob([]), .blob([0]), .blob(allBytes), .blob([UInt8](repeating: 0xab, count: 1 << 20)), nil,
        ]
        for (id, value) in values.enumerated() {
            try db.run("INSERT INTO t (id, v) VALUES (?, ?)", [.int(id), value])
        }
        let rows = try db.query("SELECT id, v FROM t ORDER BY id")
        #expect(rows.count == values.count)
        for row in rows {
            let id = try #require(row.int("id"))
            #expect(row["v"] == values[Int(id)], "value \(id)")
        }
        // Empty text and empty blobs stay themselves rather than turning into NULL.
        #expect(try db.query("SELECT typeof(v) AS t FROM t WHERE id IN (9, 14) ORDER BY id").map { $0.string("t") } == ["text", "blob"])
    }

    @Test func typedAccessorsConvertWithoutTrapping() throws {
        let directory = TemporaryDirectory()
        let db = try Database(path: directory.appending("accessors.sqlite"))
        let row = try #require(try db.query("SELECT 7 AS i, 2.75 AS r, 1e300 AS huge, 'txt' AS s, x'00ff' AS b, NULL AS n").first)
        #expect(row.int("i") == 7)
        #expect(row.double("i") == 7)
        #expect(row.string("i") == "7")
        #expect(row.int("r") == 2)
        #expect(row.int("huge") == nil)
        #expect(row.blob("s") == Array("txt".utf8))
        #expect(row.blob("b") == [0, 255])
        #expect(row.int("s") == nil)
        #expect(row.string("n") == nil)
        #expect(row["no such column"] == .null)
        #expect(row[index: 3] == "txt")
        #expect(row[index: 99] == .null)
        #expect(row.columnNames == ["i", "r", "huge", "s", "b", "n"])
    }

    @Test func preparedStatementIsReusableAndRefusesWorkAfterClose() throws {
        let directory = TemporaryDirectory()
        let db = try Database(path: directory.appending("prepared.sqlite"))
        try db.execute("CREATE TABLE t (k TEXT PRIMARY KEY, n INTEGER)")
        let insert = try db.prepare("INSERT INTO t VALUES (?, ?)")
        for n in 0..<100 { #expect(try insert.run([.text("k\(n)"), .int(n)]) == 1) }
        let sum = try db.prepare("SELECT SUM(n) AS s FROM t WHERE n < ?")
        #expect(try sum.query([10]).first?.int("s") == 45)
        #expect(try sum.query([100]).first?.int("s") == 4950)
        try db.close()
        #expect(throws: SQLiteError.self) { try insert.run(["late", 1]) }
        #expect(throws: SQLiteError.self) { try db.query("SELECT 1") }
        #expect(throws: SQLiteError.self) { try db.execute("SELECT 1") }
        try db.close()  // closing twice is harmless
    }

    @Test func cachedStatementsFollowSchemaChangesAndManyDistinctQueries() throws {
        let directory = TemporaryDirectory()
        let db = try Database(path: directory.appending("cache.sqlite"))
        try db.execute("CREATE TABLE t (a INTEGER)")
        try db.run("INSERT INTO t VALUES (1)")
        #expect(try db.query("SELECT * FROM t").first?.values == [1])
        try db.execute("ALTER TABLE t ADD COLUMN b TEXT DEFAULT 'x'")
        // The cached "SELECT *" is re-prepared by SQLite and sees the new column.
        #expect(try db.query("SELECT * FROM t").first?.values == [1, "x"])
        // More distinct statements than the cache holds: older ones are dropped, results stay right.
        for n in 0..<600 { #expect(try db.query("SELECT \(n) AS n").first?.int("n") == Int64(n)) }
        #expect(try db.query("SELECT * FROM t").count == 1)
    }
}
