import Foundation
import SQLite
import Testing
import TestSupport

struct ConcurrencyTests {
    @Test func concurrentWritersAndReadersAllLand() throws {
        let directory = TemporaryDirectory()
        let db = try Database(path: directory.appending("concurrent.sqlite"))
        try db.execute("CREATE TABLE t (thread INTEGER, n INTEGER, PRIMARY KEY (thread, n))")
        let failures = Failures()
        DispatchQueue.concurrentPerform(iterations: 8) { thread in
            do {
                for n in 0..<250 {
                    if thread % 2 == 0 {
                        try db.transaction { db in
                            try db.run("INSERT INTO t VALUES (?, ?)", [.int(thread), .int(n)])
                            if db.lastInsertRowID <= 0 { failures.add("no rowid") }
                        }
                    } else {
                        try db.run("INSERT INTO t VALUES (?, ?)", [.int(thread), .int(n)])
                        _ = try db.query("SELECT COUNT(*) AS c FROM t WHERE thread = ?", [.int(thread)])
                    }
                }
            } catch {
                failures.add("thread \(thread): \(error)")
            }
        }
        #expect(failures.all.isEmpty)
        #expect(try db.query("SELECT COUNT(*) AS c FROM t").first?.int("c") == 2000)
        #expect(try db.query("SELECT COUNT(DISTINCT thread) AS c FROM t").first?.int("c") == 8)
    }

    /// The controller's load: thousands of small write transactions per second through one connection.
    @Test func manySmallTransactionsAreFast() throws {
        let directory = TemporaryDirectory()
        let db = try Database(path: directory.appending("fast.sqlite"))
        try db.execute("CREATE TABLE hb (agent TEXT PRIMARY KEY, seen INTEGER NOT NULL, facts TEXT NOT NULL)")
        let count = 5000
        let clock = ContinuousClock()
        let elapsed = clock.measure {
            DispatchQueue.concurrentPerform(iterations: 4) { worker in
                for n in 0..<count / 4 {
                    _ = try? db.transaction { db in
                        try db.run("INSERT INTO hb (agent, seen, facts) VALUES (?, ?, ?) ON CONFLICT(agent) DO UPDATE SET seen = excluded.seen, facts = excluded.facts",
                                   [.text("agent-\(worker)-\(n % 500)"), .int(n), .text("{\"load\": \(n)}")])
                    }
                }
            }
        }
        #expect(try db.query("SELECT COUNT(*) AS c FROM hb").first?.int("c") == 2000)
        // Generous for a debug build on a busy 2-core machine; release does this in a fraction of a second.
        #expect(elapsed < .seconds(10), "5000 transactions took \(elapsed)")
    }

    @Test func secondConnectionWaitsForABusyWriter() throws {
        let directory = TemporaryDirectory()
        let path = directory.appending("busy.sqlite")
        let first = try Database(path: path)
        try first.execute("CREATE TABLE t (x INTEGER)")
        let second = try Database(path: path, busyTimeout: .seconds(10))
        let holding = DispatchSemaphore(value: 0)
        let finished = DispatchSemaphore(value: 0)
        let holder = Thread {
            try? first.transaction { db in
                try db.run("INSERT INTO t VALUES (1)")
                holding.signal()
                Thread.sleep(forTimeInterval: 0.3)
            }
            finished.signal()
        }
        holder.start()
        holding.wait()
        let started = ContinuousClock.now
        try second.run("INSERT INTO t VALUES (2)")  // waits for the lock instead of failing with SQLITE_BUSY
        #expect(ContinuousClock.now - started > .milliseconds(100))
        finished.wait()
        #expect(try second.query("SELECT x FROM t ORDER BY x").map { $0.int("x") } == [1, 2])
    }

    @Test func busyTimeoutRunsOutWithAClearError() throws {
        let directory = TemporaryDirectory()
        let path = directory.appending("timeout.sqlite")
        let first = try Database(path: path)
        try first.execute("CREATE TABLE t (x INTEGER)")
        let second = try Database(path: path, busyTimeout: .milliseconds(50))
        let holding = DispatchSemaphore(value: 0)
        let release = DispatchSemaphore(value: 0)
        let finished = DispatchSemaphore(value: 0)
        let holder = Thread {
            try? first.transaction { db in
                try db.run("INSERT INTO t VALUES (1)")
                holding.signal()
                release.wait()
            }
            finished.signal()
        }
        holder.start()
        holding.wait()
        do {
            try second.transaction { db in try db.run("INSERT INTO t VALUES (2)") }
            Issue.record("a write succeeded while another connection held the lock")
        } catch let error as SQLiteError {
            #expect(error.isBusy)
            #expect(error.message.contains("locked"))
        }
        release.signal()
        finished.wait()
        // Once the lock is free the same connection works again.
        try second.transaction { db in try db.run("INSERT INTO t VALUES (3)") }
        #expect(try second.query("SELECT x FROM t ORDER BY x").map { $0.int("x") } == [1, 3])
    }
}
