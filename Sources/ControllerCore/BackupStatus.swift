import FleetkeepProtocol
import Foundation
import Scheduling
import SQLite

/// The backup state of one account and kind on one agent, from the items of its backup results.
public struct CoverageRecord: Codable, Sendable, Equatable {
    public let agentID: String
    public let account: String
    public let kind: String
    /// When a result first named this account and kind: the reference for "overdue" until it first succeeds.
    public let firstSeenAt: Int64
    public let lastSuccessAt: Int64?
    public let lastFailureAt: Int64?
    public let lastError: String?
}

/// The latest job of a kind on one agent.
public struct JobMark: Codable, Sendable, Equatable {
    public let jobID: Int64
    public let at: Int64
    public let succeeded: Bool
    public let error: String?
}

/// A job that reached an end state, in the order the store recorded the ends (`cursor`).
public struct FinishedJob: Sendable {
    public let cursor: Int64
    public let job: JobRecord
}

/// What alerts and the report read about backups and jobs. SQLite today (the jobs tables and `backup_coverage`).
public protocol BackupStatusStore: Sendable {
    /// Every account and kind of the agent (all agents when nil).
    func coverage(agentID: String?) throws -> [CoverageRecord]
    /// Accounts and kinds without a success at or after `cutoff` (counting from when they were first seen).
    func coverage(notSucceededSince cutoff: Int64) throws -> [CoverageRecord]
    /// Agents with at least one account and kind recorded.
    func agentsWithCoverage() throws -> Set<String>
    /// Per agent, the latest succeeded job of `kind` (restore: test restores only when `drill`).
    func lastSucceeded(kind: JobKind, drill: Bool) throws -> [String: JobMark]
    /// The agent's latest succeeded job of `kind`.
    func lastSucceeded(agentID: String, kind: JobKind, drill: Bool) throws -> JobMark?
    /// The agent's latest finished (succeeded, failed or expired) job of `kind`.
    func lastFinished(agentID: String, kind: JobKind, drill: Bool) throws -> JobMark?
    /// The agent's failed or expired jobs that finished at or after `since`, newest first.
    func failures(agentID: String, since: Int64, limit: Int) throws -> [JobRecord]
    /// Jobs that ended after `cursor`, oldest end first.
    func finishedJobs(after cursor: Int64, limit: Int) throws -> [FinishedJob]
}

/// The `backup_coverage` table (migration 400, applied by `SQLiteJobStore`) and the queries over the jobs tables.
public final class SQLiteBackupStatusStore: BackupStatusStore {
    let database: Database

    static let migrations = [
        Migration(version: 400, sql: """
            CREATE TABLE backup_coverage (agent_id TEXT NOT NULL, account TEXT NOT NULL, kind TEXT NOT NULL, first_seen_at INTEGER NOT NULL,
                                          last_success_at INTEGER, last_failure_at INTEGER, last_error TEXT, last_job_id INTEGER,
                                          PRIMARY KEY (agent_id, account, kind)) WITHOUT ROWID;
            CREATE INDEX backup_coverage_success ON backup_coverage (COALESCE(last_success_at, first_seen_at));
            CREATE INDEX jobs_agent_kind_finished ON jobs (agent_id, kind, state, finished_at);
            CREATE INDEX jobs_kind_state ON jobs (kind, state);
            """),
    ]

    /// Its table is created with the jobs tables (`SQLiteJobStore` applies `migrations`), because every backup
    /// result writes to it in the same transaction.
    public init(database: Database) throws {
        self.database = database
        _ = try SQLiteJobStore(database: database)
    }

    /// Records the items of a backup result, inside the caller's transaction. `complete` says the run covered every
    /// account and kind of the server: then accounts and kinds it did not name are gone from the server and are
    /// forgotten (their overdue alerts resolve).
    static func record(agentID: String, items: [BackupItemReport], complete: Bool, at: Int64, jobID: Int64, db: Database) throws {
        struct Pair: Hashable { let account: String, kind: String }
        var outcome: [Pair: (succeeded: Bool, error: String?)] = [:]
        for item in items {
            let pair = Pair(account: item.account, kind: item.kind)
            let previous = outcome[pair] ?? (true, nil)
            // Several databases of one account: the kind succeeded only if every one did.
            outcome[pair] = (previous.succeeded && item.succeeded, previous.error ?? (item.succeeded ? nil : item.error ?? "failed"))
        }
        for (pair, result) in outcome {
            if result.succeeded {
                try db.run("""
                    INSERT INTO backup_coverage (agent_id, account, kind, first_seen_at, last_success_at, last_job_id) VALUES (?, ?, ?, ?, ?, ?)
                    ON CONFLICT (agent_id, account, kind) DO UPDATE SET
                        last_success_at = MAX(COALESCE(last_success_at, excluded.last_success_at), excluded.last_success_at), last_job_id = excluded.last_job_id
                    """, [.text(agentID), .text(pair.account), .text(pair.kind), .integer(at), .integer(at), .integer(jobID)])
            } else {
                try db.run("""
                    INSERT INTO backup_coverage (agent_id, account, kind, first_seen_at, last_failure_at, last_error, last_job_id) VALUES (?, ?, ?, ?, ?, ?, ?)
                    ON CONFLICT (agent_id, account, kind) DO UPDATE SET
                        last_failure_at = MAX(COALESCE(last_failure_at, excluded.last_failure_at), excluded.last_failure_at),
                        last_error = excluded.last_error, last_job_id = excluded.last_job_id
                    """, [.text(agentID), .text(pair.account), .text(pair.kind), .integer(at), .integer(at), .optional(result.error), .integer(jobID)])
            }
        }
        guard complete else { return }
        for row in try db.query("SELECT account, kind FROM backup_coverage WHERE agent_id = ?", [.text(agentID)]) {
            guard let account = row.string("account"), let kind = row.string("kind") else { continue }
            if outcome[Pair(account: account, kind: kind)] == nil {
                try db.run("DELETE FROM backup_coverage WHERE agent_id = ? AND account = ? AND kind = ?", [.text(agentID), .text(account), .text(kind)])
            }
        }
    }

    public func coverage(agentID: String?) throws -> [CoverageRecord] {
        if let agentID {
            return try database.query("SELECT * FROM backup_coverage WHERE agent_id = ? ORDER BY account, kind", [.text(agentID)]).compactMap(Self.coverage)
        }
        return try database.query("SELECT * FROM backup_coverage ORDER BY agent_id, account, kind").compactMap(Self.coverage)
    }

    public func coverage(notSucceededSince cutoff: Int64) throws -> [CoverageRecord] {
        try database.query("SELECT * FROM backup_coverage WHERE COALESCE(last_success_at, first_seen_at) < ? ORDER BY agent_id, account, kind",
                           [.integer(cutoff)]).compactMap(Self.coverage)
    }

    public func agentsWithCoverage() throws -> Set<String> {
        Set(try database.query("SELECT DISTINCT agent_id FROM backup_coverage").compactMap { $0.string("agent_id") })
    }

    public func lastSucceeded(kind: JobKind, drill: Bool) throws -> [String: JobMark] {
        var marks: [String: JobMark] = [:]
        // SQLite takes the other columns from the row that has the maximum.
        let rows = try database.query("""
            SELECT agent_id, id, MAX(finished_at) AS finished_at FROM jobs WHERE kind = ? AND state = 'succeeded' \(Self.drillFilter(kind, drill))
            GROUP BY agent_id
            """, [.text(kind.rawValue)])
        for row in rows {
            guard let agent = row.string("agent_id"), let id = row.int("id"), let at = row.int("finished_at") else { continue }
            marks[agent] = JobMark(jobID: id, at: at, succeeded: true, error: nil)
        }
        return marks
    }

    public func lastSucceeded(agentID: String, kind: JobKind, drill: Bool) throws -> JobMark? {
        let row = try database.query("""
            SELECT id, finished_at FROM jobs WHERE agent_id = ? AND kind = ? AND state = 'succeeded' \(Self.drillFilter(kind, drill))
            ORDER BY finished_at DESC, id DESC LIMIT 1
            """, [.text(agentID), .text(kind.rawValue)]).first
        guard let id = row?.int("id"), let at = row?.int("finished_at") else { return nil }
        return JobMark(jobID: id, at: at, succeeded: true, error: nil)
    }

    public func lastFinished(agentID: String, kind: JobKind, drill: Bool) throws -> JobMark? {
        let row = try database.query("""
            SELECT * FROM jobs WHERE agent_id = ? AND kind = ? AND state IN ('succeeded', 'failed', 'expired') \(Self.drillFilter(kind, drill))
            ORDER BY finished_at DESC, id DESC LIMIT 1
            """, [.text(agentID), .text(kind.rawValue)]).first
        guard let job = row.flatMap(SQLiteJobStore.record), let at = job.finishedAt else { return nil }
        return JobMark(jobID: job.id, at: at, succeeded: job.state == .succeeded,
                       error: job.state == .expired ? "no result within its timeout" : job.outcome?.error)
    }

    public func failures(agentID: String, since: Int64, limit: Int) throws -> [JobRecord] {
        try database.query("""
            SELECT * FROM jobs WHERE agent_id = ? AND state IN ('failed', 'expired') AND finished_at >= ?
            ORDER BY finished_at DESC, id DESC LIMIT \(max(1, min(limit, 1000)))
            """, [.text(agentID), .integer(since)]).compactMap(SQLiteJobStore.record)
    }

    public func finishedJobs(after cursor: Int64, limit: Int) throws -> [FinishedJob] {
        try database.query("""
            SELECT e.rowid AS event_cursor, j.* FROM job_events e JOIN jobs j ON j.id = e.job_id
            WHERE e.rowid > ? AND e.state IN ('succeeded', 'failed', 'expired') ORDER BY e.rowid LIMIT \(max(1, min(limit, 100_000)))
            """, [.integer(cursor)]).compactMap { row in
            guard let cursor = row.int("event_cursor"), let job = SQLiteJobStore.record(row) else { return nil }
            return FinishedJob(cursor: cursor, job: job)
        }
    }

    /// Test restores are restore jobs whose parameters say `drill`.
    static func drillFilter(_ kind: JobKind, _ drill: Bool) -> String {
        guard kind == .restore else { return "" }
        return drill ? "AND json_extract(parameters, '$.drill') = 1" : "AND COALESCE(json_extract(parameters, '$.drill'), 0) = 0"
    }

    static func coverage(_ row: Row) -> CoverageRecord? {
        guard let agent = row.string("agent_id"), let account = row.string("account"), let kind = row.string("kind"),
              let first = row.int("first_seen_at") else { return nil }
        return CoverageRecord(agentID: agent, account: account, kind: kind, firstSeenAt: first, lastSuccessAt: row.int("last_success_at"),
                              lastFailureAt: row.int("last_failure_at"), lastError: row.string("last_error"))
    }
}
