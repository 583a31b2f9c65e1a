import Foundation
import SQLite
import Testing
import TestSupport

struct FunctionTests {
    /// A Swift function is called per row with SQLite's values and its result is used by WHERE and ORDER BY.
    @Test func scalarFunctionsSeeArgumentsAndFeedQueries() throws {
        let directory = TemporaryDirectory()
        let database = try Database(path: directory.appending("f.db"))
        try database.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, name BLOB)")
        for (id, name) in [(1, "beta"), (2, "Alpha"), (3, "gamma")] {
            try database.run("INSERT INTO t (id, name) VALUES (?, ?)", [.integer(Int64(id)), .blob(Array(name.utf8.reversed()))])
        }
        // Reverses the stored bytes, as opening a sealed value would.
        try database.createFunction("opened", argumentCount: 1) { arguments in
            guard case .blob(let bytes) = arguments.first else { return .null }
            return .text(String(decoding: bytes.reversed(), as: UTF8.self))
        }
        let sorted = try database.query("SELECT id FROM t ORDER BY opened(name) COLLATE NOCASE").compactMap { $0.int("id") }
        #expect(sorted == [2, 1, 3])
        #expect(try database.query("SELECT id FROM t WHERE opened(name) LIKE '%mm%'").compactMap { $0.int("id") } == [3])
        #expect(try database.query("SELECT opened(NULL) AS v").first?.string("v") == nil)

        try database.createFunction("echo", argumentCount: -1) { .text($0.map { "\($0)" }.joined(separator: "|")) }
        let echoed = try database.query("SELECT echo(1, 2.5, 'x', x'00ff', NULL) AS v").first?.string("v")
        #expect(echoed == "integer(1)|real(2.5)|text(\"x\")|blob([0, 255])|null")
        // Registered again: the newer body answers.
        try database.createFunction("opened", argumentCount: 1) { _ in .integer(7) }
        #expect(try database.query("SELECT opened(name) AS v FROM t LIMIT 1").first?.int("v") == 7)
        try database.close()
        #expect(throws: SQLiteError.self) { try database.createFunction("late", argumentCount: 0) { _ in .null } }
    }
}
