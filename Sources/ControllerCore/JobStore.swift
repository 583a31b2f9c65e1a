import FleetkeepProtocol
import Foundation
import Scheduling
import SQLite

/// The life of a job: queued → dispatched → running → succeeded | failed | cancelled | expired.
public enum JobState: String, Codable, Sendable, CaseIterable {
    case queued, dispatched, running, succeeded, failed, cancelled, expired

    public var isFinished: Bool { [.succeeded, .failed, .cancelled, .expired].contains(self) }
    static let open: [JobState] = [.queued, .dispatched, .running]
}

/// Where a job came from.
public enum JobOrigin: String, Codable, Sendable {
    case schedule, operator_ = "operator", retry, agentOffline = "agent-offline"
}

/// A job to create.
public struct JobDraft: Sendable {
    public var agentID: String
    public var kind: JobKind
    public var parameters: JobParameters
    public var origin: JobOrigin
    public var task: ScheduledTask?
    public var slot: Int64?
    public var attempt = 1
    public var maxAttempts: Int
    public var retryBaseSeconds: Int64
    public var retryOf: Int64?
    public var timeoutSeconds: Int64
    public var notBefore: Int64

    public init(agentID: String, kind: JobKind, parameters: JobParameters, origin: JobOrigin, task: ScheduledTask? = nil, slot: Int64? = nil,
                maxAttempts: Int, retryBaseSeconds: Int64, timeoutSeconds: Int64, notBefore: Int64) {
        self.agentID = agentID
        self.kind = kind
        self.parameters = parameters
        self.origin = origin
        self.task = task
        self.slot = slot
        self.maxAttempts = maxAttempts
        self.retryBaseSeconds = retryBaseSeconds
        self.timeoutSeconds = timeoutSeconds
        self.notBefore = notBefore
    }
}

/// Progress an agent reported.
public struct JobProgress: Codable, Sendable, Equatable {
    public var bytes: Int64
    public var files: Int64
    public var percent: Double?
    public var at: Int64
    public init(bytes: Int64, files: Int64, percent: Double?, at: Int64) {
        self.bytes = bytes
        self.files = files
        self.percent = percent
        self.at = at
    }
}

/// What an agent reported at the end of a job.
public struct JobOutcome: Codable, Sendable, Equatable {
    public var snapshots: [String]
    public var bytesAdded: Int64
    public var files: Int64
    public var durationSeconds: Int64
    public var error: String?
    /// backup: the agent's repository size on disk after the run.
    public var repositoryBytes: Int64?
    /// backup: which account and kind each snapshot holds, so a restore is offered from the right ones.
    public var snapshotItems: [SnapshotItem]?
}

/// A snapshot of a backup result, with the account and kind it holds.
public struct SnapshotItem: Codable, Sendable, Equatable {
    public var id: String
    public var account: String
    public var kind: String
}

/// One recorded state change.
public struct JobEvent: Codable, Sendable, Equatable {
    public let at: Int64
    public let state: String
    public let detail: String?
}

/// A job as stored.
public struct JobRecord: Codable, Sendable {
    public let id: Int64
    public let agentID: String
    public let kind: JobKind
    public let state: JobState
    public let parameters: JobParameters
    public let origin: String
    public let task: ScheduledTask?
    public let slot: Int64?
    public let attempt: Int
    public let maxAttempts: Int
    public let retryOf: Int64?
    public let timeoutSeconds: Int64
    public let notBefore: Int64
    public let queuedAt: Int64
    public let dispatchedAt: Int64?
    public let startedAt: Int64?
    public let finishedAt: Int64?
    public let cancelRequested: Bool
    public let progress: JobProgress?
    public let outcome: JobOutcome?
    public let localID: String?
    public var events: [JobEvent]?

    public var assignment: JobAssignment {
        JobAssignment(id: id, kind: kind, parameters: parameters, timeoutSeconds: timeoutSeconds, attempt: attempt)
    }
}

/// How a result was taken.
public enum ResultRecording: Sendable {
    case recorded(JobRecord)
    /// The same result was recorded before: the agent's copy may go.
    case duplicate
}

/// Storage for jobs. Every method is one transaction, so a crash leaves each job in one recorded state.
public protocol JobStore: Sendable {
    /// Nil when a job for the same scheduled run (agent, task, slot) exists already.
    func enqueue(_ draft: JobDraft, now: Int64) throws -> Int64?
    func job(_ id: Int64) throws -> JobRecord?
    func jobs(agentID: String?, states: [JobState]?, limit: Int) throws -> [JobRecord]
    /// Marks the agent's due queued jobs dispatched and returns them with the jobs already dispatched to it that it
    /// does not hold (their answer was lost). At most one backup-type job of an agent is out at a time.
    func dispatch(agentID: String, holding: Set<Int64>, now: Int64) throws -> [JobRecord]
    /// `dispatch` for many agents in one transaction (one commit, so one disk sync, for a whole fleet's pickup).
    func dispatch(agents: [(agentID: String, holding: Set<Int64>)], now: Int64) throws -> [String: [JobRecord]]
    /// Agents with a queued job due by `now` that could be dispatched.
    func agentsWithDueJobs(now: Int64) throws -> Set<String>
    func recordProgress(agentID: String, jobID: Int64, progress: JobProgress, now: Int64) throws -> (known: Bool, cancel: Bool)
    func recordResult(agentID: String, result: JobResultRequest, now: Int64, retryJitter: Double) throws -> ResultRecording
    /// Cancels a queued job at once; asks the agent to stop a dispatched or running one. Nil for an unknown id.
    func cancel(_ id: Int64, now: Int64) throws -> JobState?
    /// Open jobs of the agent that an operator cancelled.
    func cancelRequests(agentID: String, holding: Set<Int64>) throws -> [Int64]
    /// Agents with a dispatched or running job an operator cancelled.
    func agentsWithCancelRequests() throws -> Set<String>
    /// Expires jobs past their timeout (retrying them when attempts remain); returns their ids.
    func expireOverdue(now: Int64, retryJitter: Double) throws -> [Int64]
    func hasJob(agentID: String, task: ScheduledTask, slot: Int64) throws -> Bool
}

/// `JobStore` in the controller's SQLite database (migration 201; 400 adds backup coverage, see `SQLiteBackupStatusStore`).
public final class SQLiteJobStore: JobStore {
    let database: Database

    static let migrations = [
        Migration(version: 201, sql: """
            CREATE TABLE jobs (id INTEGER PRIMARY KEY AUTOINCREMENT, agent_id TEXT NOT NULL, kind TEXT NOT NULL, state TEXT NOT NULL,
                               parameters TEXT NOT NULL, origin TEXT NOT NULL, task TEXT, slot INTEGER,
                               attempt INTEGER NOT NULL, max_attempts INTEGER NOT NULL, retry_base INTEGER NOT NULL, retry_of INTEGER,
                               timeout_seconds INTEGER NOT NULL, not_before INTEGER NOT NULL, queued_at INTEGER NOT NULL,
                               dispatched_at INTEGER, started_at INTEGER, finished_at INTEGER, cancel_requested INTEGER NOT NULL DEFAULT 0,
                               progress TEXT, outcome TEXT, local_id TEXT UNIQUE);
            CREATE UNIQUE INDEX jobs_scheduled_run ON jobs (agent_id, task, slot) WHERE slot IS NOT NULL AND attempt = 1;
            CREATE INDEX jobs_open ON jobs (state, not_before) WHERE state IN ('queued', 'dispatched', 'running');
            CREATE INDEX jobs_agent ON jobs (agent_id, id);
            CREATE TABLE job_events (job_id INTEGER NOT NULL REFERENCES jobs(id), at INTEGER NOT NULL, state TEXT NOT NULL, detail TEXT);
            CREATE INDEX job_events_job ON job_events (job_id, at);
            """),
        // SQLite uses a partial index only when the query repeats its condition, and `state = 'queued'` does not
        // repeat `state IN (...)`: the dispatcher's queries, four times a second, scanned the whole job history.
        // A full index on state, with the columns those queries read, makes each a short index search.
        Migration(version: 202, sql: """
            DROP INDEX jobs_open;
            CREATE INDEX jobs_state ON jobs (state, not_before, agent_id);
            """),
    ] + SQLiteBackupStatusStore.migrations

    public init(database: Database) throws {
        self.database = database
        try database.migrate(Self.migrations)
        // A result is acknowledged only once its commit is on disk, not merely handed to the OS: with FULL, WAL
        // commits are fsynced. Heartbeats are written in one batch a second, so this costs one fsync a second there.
        try database.execute("PRAGMA synchronous=FULL")
    }

    public func enqueue(_ draft: JobDraft, now: Int64) throws -> Int64? {
        try database.transaction { db in
            if let task = draft.task, let slot = draft.slot, draft.attempt == 1,
               try !db.query("SELECT 1 FROM jobs WHERE agent_id = ? AND task = ? AND slot = ? AND attempt = 1",
                             [.text(draft.agentID), .text(task.rawValue), .integer(slot)]).isEmpty {
                return nil
            }
            return try insert(draft, state: .queued, now: now, db: db)
        }
    }

    private func insert(_ draft: JobDraft, state: JobState, now: Int64, db: Database, localID: String? = nil) throws -> Int64 {
        try db.run("""
            INSERT INTO jobs (agent_id, kind, state, parameters, origin, task, slot, attempt, max_attempts, retry_base, retry_of,
                              timeout_seconds, not_before, queued_at, local_id)
            VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
            """, [.text(draft.agentID), .text(draft.kind.rawValue), .text(state.rawValue), .text(Self.json(draft.parameters)),
                  .text(draft.origin.rawValue), .optional(draft.task?.rawValue), .optional(draft.slot), .int(draft.attempt),
                  .int(draft.maxAttempts), .integer(draft.retryBaseSeconds), .optional(draft.retryOf), .integer(draft.timeoutSeconds),
                  .integer(draft.notBefore), .integer(now), .optional(localID)])
        guard let id = try db.query("SELECT last_insert_rowid() AS id").first?.int("id") else { throw ControllerError("job insert returned no id") }
        try event(id, state.rawValue, now: now, detail: draft.retryOf.map { "retry \(draft.attempt) of \(draft.maxAttempts) after job \($0)" }, db: db)
        return id
    }

    private func event(_ id: Int64, _ state: String, now: Int64, detail: String?, db: Database) throws {
        try db.run("INSERT INTO job_events (job_id, at, state, detail) VALUES (?, ?, ?, ?)", [.integer(id), .integer(now), .text(state), .optional(detail)])
    }

    public func job(_ id: Int64) throws -> JobRecord? {
        guard var record = try database.query("SELECT * FROM jobs WHERE id = ?", [.integer(id)]).first.flatMap(Self.record) else { return nil }
        record.events = try database.query("SELECT at, state, detail FROM job_events WHERE job_id = ? ORDER BY at, rowid", [.integer(id)]).map {
            JobEvent(at: $0.int("at") ?? 0, state: $0.string("state") ?? "", detail: $0.string("detail"))
        }
        return record
    }

    public func jobs(agentID: String?, states: [JobState]?, limit: Int) throws -> [JobRecord] {
        var clauses: [String] = [], bindings: [SQLValue] = []
        if let agentID { clauses.append("agent_id = ?"); bindings.append(.text(agentID)) }
        if let states, !states.isEmpty {
            clauses.append("state IN (\(states.map { _ in "?" }.joined(separator: ",")))")
            bindings += states.map { .text($0.rawValue) }
        }
        let filter = clauses.isEmpty ? "" : "WHERE " + clauses.joined(separator: " AND ")
        return try database.query("SELECT * FROM jobs \(filter) ORDER BY id DESC LIMIT \(max(1, min(limit, 100_000)))", bindings).compactMap(Self.record)
    }

    public func dispatch(agentID: String, holding: Set<Int64>, now: Int64) throws -> [JobRecord] {
        try database.transaction { db in
            let open = try db.query("SELECT * FROM jobs WHERE agent_id = ? AND state IN ('queued', 'dispatched', 'running') ORDER BY not_before, id",
                                    [.text(agentID)]).compactMap(Self.record)
            // Dispatched before, but the agent does not hold it: the answer carrying it was lost. Hand it out again
            // (the agent runs a job id at most once).
            var out = open.filter { $0.state == .dispatched && !holding.contains($0.id) && !$0.cancelRequested }
            var backupOut = open.contains { $0.kind.isBackupType && ($0.state == .running || $0.state == .dispatched) }
            for job in open where job.state == .queued && job.notBefore <= now {
                if job.kind.isBackupType {
                    if backupOut { continue }
                    backupOut = true
                }
                try db.run("UPDATE jobs SET state = 'dispatched', dispatched_at = ? WHERE id = ? AND state = 'queued'", [.integer(now), .integer(job.id)])
                try event(job.id, JobState.dispatched.rawValue, now: now, detail: nil, db: db)
                out.append(job)
            }
            // Held by the agent and still marked dispatched: it is running.
            for job in open where job.state == .dispatched && holding.contains(job.id) {
                try markRunning(job.id, now: now, db: db)
            }
            return out
        }
    }

    public func dispatch(agents: [(agentID: String, holding: Set<Int64>)], now: Int64) throws -> [String: [JobRecord]] {
        try database.transaction { _ in
            var out: [String: [JobRecord]] = [:]
            // Each agent's dispatch becomes a savepoint inside this transaction.
            for (agentID, holding) in agents { out[agentID] = try dispatch(agentID: agentID, holding: holding, now: now) }
            return out
        }
    }

    private func markRunning(_ id: Int64, now: Int64, db: Database) throws {
        if try db.run("UPDATE jobs SET state = 'running', started_at = ? WHERE id = ? AND state = 'dispatched'", [.integer(now), .integer(id)]) == 1 {
            try event(id, JobState.running.rawValue, now: now, detail: nil, db: db)
        }
    }

    /// The queries the dispatcher runs on every pass (four a second), whatever the size of the job history.
    public static let dispatcherQueries = [dueAgentsQuery, cancelRequestsQuery, overdueQuery]
    static let dueAgentsQuery = "SELECT DISTINCT agent_id FROM jobs WHERE state = 'queued' AND not_before <= ?"
    static let cancelRequestsQuery = "SELECT DISTINCT agent_id FROM jobs WHERE cancel_requested = 1 AND state IN ('dispatched', 'running')"
    static let overdueQuery = """
        SELECT * FROM jobs WHERE state IN ('dispatched', 'running') AND timeout_seconds > 0
        AND COALESCE(started_at, dispatched_at) + timeout_seconds < ?
        """

    public func agentsWithDueJobs(now: Int64) throws -> Set<String> {
        Set(try database.query(Self.dueAgentsQuery, [.integer(now)])
            .compactMap { $0.string("agent_id") })
    }

    public func recordProgress(agentID: String, jobID: Int64, progress: JobProgress, now: Int64) throws -> (known: Bool, cancel: Bool) {
        try database.transaction { db in
            guard let row = try db.query("SELECT state, cancel_requested FROM jobs WHERE id = ? AND agent_id = ?", [.integer(jobID), .text(agentID)]).first,
                  let state = row.string("state").flatMap(JobState.init) else { return (false, false) }
            let cancel = row.int("cancel_requested") == 1 || state == .cancelled
            guard state == .dispatched || state == .running else { return (true, cancel) }
            try markRunning(jobID, now: now, db: db)
            try db.run("UPDATE jobs SET progress = ? WHERE id = ?", [.text(Self.json(progress)), .integer(jobID)])
            return (true, cancel)
        }
    }

    public func recordResult(agentID: String, result: JobResultRequest, now: Int64, retryJitter: Double) throws -> ResultRecording {
        try database.transaction { db in
            let outcome = JobOutcome(snapshots: result.snapshots, bytesAdded: result.bytesAdded, files: result.files,
                                     durationSeconds: max(0, result.finishedAt.subtractingReportingOverflow(result.startedAt).overflow ? 0 : result.finishedAt - result.startedAt),
                                     error: result.error, repositoryBytes: result.kind == .backup ? result.repositoryBytes : nil,
                                     snapshotItems: result.kind == .backup ? result.items?.compactMap { item in
                                         item.snapshot.map { SnapshotItem(id: $0, account: item.account, kind: item.kind) }
                                     } : nil)
            let target: JobRecord
            if let jobID = result.jobID {
                guard let job = try db.query("SELECT * FROM jobs WHERE id = ? AND agent_id = ?", [.integer(jobID), .text(agentID)]).first.flatMap(Self.record) else {
                    throw JobStoreError.unknownJob(jobID)
                }
                target = job
            } else if let localID = result.localID {
                if try !db.query("SELECT 1 FROM jobs WHERE local_id = ? AND agent_id = ?", [.text(localID), .text(agentID)]).isEmpty { return .duplicate }
                // A run the agent made on its own: it takes the place of the controller's job for the same scheduled
                // run if that is still waiting, so the run is not made twice.
                if let task = result.task, let slot = result.slot,
                   let waiting = try db.query("SELECT * FROM jobs WHERE agent_id = ? AND task = ? AND slot = ? AND state = 'queued'",
                                              [.text(agentID), .text(task.rawValue), .integer(slot)]).first.flatMap(Self.record) {
                    try db.run("UPDATE jobs SET local_id = ?, origin = ? WHERE id = ?", [.text(localID), .text(JobOrigin.agentOffline.rawValue), .integer(waiting.id)])
                    try event(waiting.id, "ran-on-agent", now: now, detail: "the agent ran this scheduled run itself while the controller was unreachable", db: db)
                    target = waiting
                } else {
                    var draft = JobDraft(agentID: agentID, kind: result.kind, parameters: JobParameters(), origin: .agentOffline, task: result.task,
                                         slot: result.slot, maxAttempts: 1, retryBaseSeconds: 60, timeoutSeconds: 0, notBefore: result.startedAt)
                    // A second offline run of the same slot (after a retry on the agent) is recorded as a later attempt.
                    if let task = result.task, let slot = result.slot,
                       try !db.query("SELECT 1 FROM jobs WHERE agent_id = ? AND task = ? AND slot = ? AND attempt = 1",
                                     [.text(agentID), .text(task.rawValue), .integer(slot)]).isEmpty {
                        draft.attempt = 2
                    }
                    let id = try insert(draft, state: .running, now: now, db: db, localID: localID)
                    guard let inserted = try db.query("SELECT * FROM jobs WHERE id = ?", [.integer(id)]).first.flatMap(Self.record) else {
                        throw JobStoreError.unknownJob(id)
                    }
                    target = inserted
                }
            } else {
                throw JobStoreError.noIdentity
            }
            if target.state.isFinished {
                if target.outcome == outcome || target.state == .cancelled || target.state == .expired { return .duplicate }
                throw JobStoreError.alreadyFinished(target.id, target.state)
            }
            let state: JobState = result.succeeded ? .succeeded : (target.cancelRequested ? .cancelled : .failed)
            try db.run("UPDATE jobs SET state = ?, finished_at = ?, started_at = COALESCE(started_at, ?), outcome = ? WHERE id = ?",
                       [.text(state.rawValue), .integer(now), .integer(now), .text(Self.json(outcome)), .integer(target.id)])
            try event(target.id, state.rawValue, now: now, detail: result.error.map { String($0.prefix(JobLimits.longestError)) }, db: db)
            if target.kind == .backup, let items = result.items {
                // In this transaction, so the coverage alerts read is never behind an acknowledged result.
                try SQLiteBackupStatusStore.record(agentID: agentID, items: items,
                                                   complete: target.parameters.account == nil && target.parameters.kinds == nil,
                                                   at: min(max(result.finishedAt, 0), now), jobID: target.id, db: db)
            }
            if state == .failed { try retryIfAllowed(target, now: now, jitter: retryJitter, db: db) }
            guard let final = try db.query("SELECT * FROM jobs WHERE id = ?", [.integer(target.id)]).first.flatMap(Self.record) else {
                throw JobStoreError.unknownJob(target.id)
            }
            return .recorded(final)
        }
    }

    /// Queues the next attempt after exponential backoff: base × 2^(attempt-1), at most an hour, times `jitter`
    /// (0.5..<1.0, drawn by the caller) so that many jobs failing together do not come back together.
    private func retryIfAllowed(_ job: JobRecord, now: Int64, jitter: Double, db: Database) throws {
        guard job.attempt < job.maxAttempts, !job.cancelRequested,
              let base = try db.query("SELECT retry_base FROM jobs WHERE id = ?", [.integer(job.id)]).first?.int("retry_base") else { return }
        let exponent = min(job.attempt - 1, 20)
        let (scaled, overflow) = base.multipliedReportingOverflow(by: Int64(1) << exponent)
        let ceiling = overflow ? 3600 : min(scaled, 3600)
        let delay = Int64((Double(ceiling) * min(max(jitter, 0.5), 1.0)).rounded(.up))
        var draft = JobDraft(agentID: job.agentID, kind: job.kind, parameters: job.parameters, origin: .retry, task: job.task, slot: job.slot,
                             maxAttempts: job.maxAttempts, retryBaseSeconds: base, timeoutSeconds: job.timeoutSeconds, notBefore: now + delay)
        draft.attempt = job.attempt + 1
        draft.retryOf = job.id
        _ = try insert(draft, state: .queued, now: now, db: db)
    }

    public func cancel(_ id: Int64, now: Int64) throws -> JobState? {
        try database.transaction { db in
            guard let job = try db.query("SELECT * FROM jobs WHERE id = ?", [.integer(id)]).first.flatMap(Self.record) else { return nil }
            switch job.state {
            case .queued:
                try db.run("UPDATE jobs SET state = 'cancelled', finished_at = ?, cancel_requested = 1 WHERE id = ?", [.integer(now), .integer(id)])
                try event(id, JobState.cancelled.rawValue, now: now, detail: "cancelled by the operator before it was dispatched", db: db)
                return .cancelled
            case .dispatched, .running:
                if job.cancelRequested { return job.state }
                try db.run("UPDATE jobs SET cancel_requested = 1 WHERE id = ?", [.integer(id)])
                try event(id, "cancel-requested", now: now, detail: "the agent is asked to stop it", db: db)
                return job.state
            default:
                return job.state
            }
        }
    }

    public func cancelRequests(agentID: String, holding: Set<Int64>) throws -> [Int64] {
        try database.query("SELECT id FROM jobs WHERE agent_id = ? AND cancel_requested = 1 AND state IN ('dispatched', 'running')", [.text(agentID)])
            .compactMap { $0.int("id") }.filter(holding.contains)
    }

    public func agentsWithCancelRequests() throws -> Set<String> {
        Set(try database.query(Self.cancelRequestsQuery)
            .compactMap { $0.string("agent_id") })
    }

    public func expireOverdue(now: Int64, retryJitter: Double) throws -> [Int64] {
        try database.transaction { db in
            let overdue = try db.query(Self.overdueQuery, [.integer(now)]).compactMap(Self.record)
            for job in overdue {
                try db.run("UPDATE jobs SET state = 'expired', finished_at = ? WHERE id = ?", [.integer(now), .integer(job.id)])
                try event(job.id, JobState.expired.rawValue, now: now, detail: "no result within its timeout of \(job.timeoutSeconds)s", db: db)
                try retryIfAllowed(job, now: now, jitter: retryJitter, db: db)
            }
            return overdue.map(\.id)
        }
    }

    public func hasJob(agentID: String, task: ScheduledTask, slot: Int64) throws -> Bool {
        try !database.query("SELECT 1 FROM jobs WHERE agent_id = ? AND task = ? AND slot = ? AND attempt = 1",
                            [.text(agentID), .text(task.rawValue), .integer(slot)]).isEmpty
    }

    static func record(_ row: Row) -> JobRecord? {
        guard let id = row.int("id"), let agent = row.string("agent_id"), let kind = row.string("kind").flatMap(JobKind.init),
              let state = row.string("state").flatMap(JobState.init) else { return nil }
        return JobRecord(id: id, agentID: agent, kind: kind, state: state,
                         parameters: decode(JobParameters.self, row.string("parameters")) ?? JobParameters(),
                         origin: row.string("origin") ?? "", task: row.string("task").flatMap(ScheduledTask.init), slot: row.int("slot"),
                         attempt: Int(row.int("attempt") ?? 1), maxAttempts: Int(row.int("max_attempts") ?? 1), retryOf: row.int("retry_of"),
                         timeoutSeconds: row.int("timeout_seconds") ?? 0, notBefore: row.int("not_before") ?? 0, queuedAt: row.int("queued_at") ?? 0,
                         dispatchedAt: row.int("dispatched_at"), startedAt: row.int("started_at"), finishedAt: row.int("finished_at"),
                         cancelRequested: row.int("cancel_requested") == 1, progress: decode(JobProgress.self, row.string("progress")),
                         outcome: decode(JobOutcome.self, row.string("outcome")), localID: row.string("local_id"), events: nil)
    }

    static func json<T: Encodable>(_ value: T) -> String {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        return String(decoding: (try? encoder.encode(value)) ?? Data("{}".utf8), as: UTF8.self)
    }

    static func decode<T: Decodable>(_ type: T.Type, _ text: String?) -> T? {
        text.flatMap { try? JSONDecoder().decode(type, from: Data($0.utf8)) }
    }
}

/// Job store refusals, mapped to HTTP statuses in `JobService.httpError`.
public enum JobStoreError: Error, CustomStringConvertible, Equatable {
    case unknownJob(Int64)
    case alreadyFinished(Int64, JobState)
    case noIdentity

    public var description: String {
        switch self {
        case .unknownJob(let id): "job \(id) is not a job of this agent"
        case .alreadyFinished(let id, let state): "job \(id) already finished (\(state.rawValue)) with another result"
        case .noIdentity: "a result names either jobID or localID"
        }
    }
}
