import ControllerCore
import FleetkeepProtocol
import Foundation
import Scheduling
import SQLite
import Testing
import TestSupport

/// The job store on a real SQLite file, with the clock passed in.
struct JobStoreTests {
    let directory = TemporaryDirectory(prefix: "fk-jobs")

    func store() throws -> (SQLiteJobStore, Database) {
        let database = try Database(path: directory.appending("controller.db"))
        return (try SQLiteJobStore(database: database), database)
    }

    func draft(_ agent: String = "fk-a", kind: JobKind = .backup, attempts: Int = 3, timeout: Int64 = 600, notBefore: Int64 = 1000) -> JobDraft {
        JobDraft(agentID: agent, kind: kind, parameters: JobParameters(), origin: .operator_, maxAttempts: attempts, retryBaseSeconds: 10,
                 timeoutSeconds: timeout, notBefore: notBefore)
    }

    func result(_ id: Int64, succeeded: Bool, error: String? = nil) -> JobResultRequest {
        JobResultRequest(jobID: id, localID: nil, kind: .backup, task: nil, slot: nil, succeeded: succeeded, error: error,
                         snapshots: succeeded ? ["abc"] : [], bytesAdded: 5, files: 2, startedAt: 1000, finishedAt: 1010)
    }

    @Test func lifecycleIsRecordedWithTimesAndOneBackupTypeJobRunsAtATime() throws {
        let (jobs, _) = try store()
        let first = try #require(try jobs.enqueue(draft(), now: 1000))
        let second = try #require(try jobs.enqueue(draft(kind: .verify), now: 1000))
        let restore = try #require(try jobs.enqueue(draft(kind: .restore), now: 1000))
        let out = try jobs.dispatch(agentID: "fk-a", holding: [], now: 1001)
        #expect(out.map(\.id) == [first, restore], "the verify waits for the backup; a restore may run beside it")
        #expect(try jobs.dispatch(agentID: "fk-a", holding: [first, restore], now: 1002).isEmpty)
        #expect(try jobs.job(first)?.state == .running)
        let progress = try jobs.recordProgress(agentID: "fk-a", jobID: first, progress: JobProgress(bytes: 10, files: 1, percent: nil, at: 1003), now: 1003)
        #expect(progress.known && !progress.cancel)
        guard case .recorded(let done) = try jobs.recordResult(agentID: "fk-a", result: result(first, succeeded: true), now: 1004, retryJitter: 0.5) else {
            Issue.record("not recorded"); return
        }
        #expect(done.state == .succeeded && done.outcome?.snapshots == ["abc"])
        let events = try #require(try jobs.job(first)?.events)
        #expect(events.map(\.state) == ["queued", "dispatched", "running", "succeeded"])
        #expect(events.map(\.at) == [1000, 1001, 1002, 1004])
        // The same result again (its answer was lost): a duplicate, nothing changes.
        guard case .duplicate = try jobs.recordResult(agentID: "fk-a", result: result(first, succeeded: true), now: 1005, retryJitter: 0.5) else {
            Issue.record("a repeated result must be a duplicate"); return
        }
        #expect(try jobs.dispatch(agentID: "fk-a", holding: [restore], now: 1006).map(\.id) == [second])
        // Another agent's job id is not this agent's.
        #expect(throws: JobStoreError.unknownJob(second)) { try jobs.recordResult(agentID: "fk-b", result: result(second, succeeded: true), now: 1007, retryJitter: 0.5) }
    }

    @Test func failuresAreRetriedWithExponentialBackoffUpToTheLimit() throws {
        let (jobs, _) = try store()
        var id = try #require(try jobs.enqueue(draft(attempts: 3), now: 1000))
        var now: Int64 = 1000
        var delays: [Int64] = []
        for attempt in 1...3 {
            let out = try jobs.dispatch(agentID: "fk-a", holding: [], now: now)
            #expect(out.map(\.id) == [id] && out.first?.attempt == attempt)
            _ = try jobs.recordResult(agentID: "fk-a", result: result(id, succeeded: false, error: "disk full"), now: now, retryJitter: 1.0)
            #expect(try jobs.job(id)?.state == .failed)
            guard let retry = try jobs.jobs(agentID: "fk-a", states: [.queued], limit: 5).first else { break }
            #expect(retry.retryOf == id)
            delays.append(retry.notBefore - now)
            #expect(try jobs.dispatch(agentID: "fk-a", holding: [], now: retry.notBefore - 1).isEmpty, "not before its backoff")
            id = retry.id
            now = retry.notBefore
        }
        #expect(delays == [10, 20], "base 10 s doubling; the third failure is final")
        #expect(try jobs.jobs(agentID: "fk-a", states: [.queued], limit: 5).isEmpty)
    }

    @Test func timeoutsExpireAndRetryAndCancelWorksInEveryState() throws {
        let (jobs, _) = try store()
        let slow = try #require(try jobs.enqueue(draft(attempts: 2, timeout: 60), now: 1000))
        _ = try jobs.dispatch(agentID: "fk-a", holding: [], now: 1000)
        #expect(try jobs.expireOverdue(now: 1060, retryJitter: 0.5).isEmpty)
        #expect(try jobs.expireOverdue(now: 1061, retryJitter: 0.5) == [slow])
        #expect(try jobs.job(slow)?.state == .expired)
        let retry = try #require(try jobs.jobs(agentID: "fk-a", states: [.queued], limit: 1).first)
        #expect(retry.attempt == 2 && retry.notBefore == 1061 + 5)
        #expect(try jobs.cancel(retry.id, now: 1062) == .cancelled)
        let running = try #require(try jobs.enqueue(draft(kind: .prune), now: 1063))
        _ = try jobs.dispatch(agentID: "fk-a", holding: [], now: 1063)
        #expect(try jobs.cancel(running, now: 1064) == .dispatched)
        #expect(try jobs.cancelRequests(agentID: "fk-a", holding: [running]) == [running])
        _ = try jobs.recordResult(agentID: "fk-a", result: result(running, succeeded: false, error: "stopped"), now: 1065, retryJitter: 0.5)
        #expect(try jobs.job(running)?.state == .cancelled)
        #expect(try jobs.jobs(agentID: "fk-a", states: [.queued], limit: 5).isEmpty, "a cancelled job is not retried")
    }

    @Test func scheduledRunsAreQueuedOnceAndAnOfflineRunTakesTheirPlace() throws {
        let (jobs, _) = try store()
        var scheduled = draft()
        scheduled.task = .backup
        scheduled.slot = 5000
        scheduled.origin = .schedule
        let id = try #require(try jobs.enqueue(scheduled, now: 5000))
        #expect(try jobs.enqueue(scheduled, now: 5001) == nil)
        var offline = JobResultRequest(jobID: nil, localID: "local-1", kind: .backup, task: .backup, slot: 5000, succeeded: true, error: nil,
                                       snapshots: ["s"], bytesAdded: 1, files: 1, startedAt: 5000, finishedAt: 5100)
        guard case .recorded(let record) = try jobs.recordResult(agentID: "fk-a", result: offline, now: 9000, retryJitter: 0.5) else {
            Issue.record("not recorded"); return
        }
        #expect(record.id == id && record.state == .succeeded && record.localID == "local-1")
        guard case .duplicate = try jobs.recordResult(agentID: "fk-a", result: offline, now: 9001, retryJitter: 0.5) else {
            Issue.record("delivered twice must be a duplicate"); return
        }
        offline.localID = "local-2"
        offline.slot = 6000
        guard case .recorded(let other) = try jobs.recordResult(agentID: "fk-a", result: offline, now: 9002, retryJitter: 0.5) else {
            Issue.record("not recorded"); return
        }
        #expect(other.origin == "agent-offline" && other.state == .succeeded)
        #expect(try jobs.dispatch(agentID: "fk-a", holding: [], now: 9003).isEmpty)
    }
}

/// The dispatcher's batch: many agents' polls answered from one transaction, with the same rules as one by one.
struct BatchDispatchTests {
    @Test func batchDispatchGivesEachAgentItsJobsUnderTheSameRules() throws {
        let directory = TemporaryDirectory(prefix: "fk-jobs-batch")
        let jobs = try SQLiteJobStore(database: try Database(path: directory.appending("controller.db")))
        func draft(_ agent: String, _ kind: JobKind) -> JobDraft {
            JobDraft(agentID: agent, kind: kind, parameters: JobParameters(), origin: .operator_, maxAttempts: 1, retryBaseSeconds: 10,
                     timeoutSeconds: 600, notBefore: 1000)
        }
        var expected: [String: Int64] = [:]
        for index in 0..<200 {
            let agent = "fk-\(index)"
            expected[agent] = try #require(try jobs.enqueue(draft(agent, .backup), now: 1000))
            _ = try jobs.enqueue(draft(agent, .verify), now: 1000)
        }
        let out = try jobs.dispatch(agents: expected.keys.map { (agentID: $0, holding: Set<Int64>()) }, now: 1001)
        #expect(out.count == 200)
        for (agent, id) in expected { #expect(out[agent]?.map(\.id) == [id], "one backup-type job at a time for \(agent)") }
        #expect(try jobs.jobs(agentID: nil, states: [.dispatched], limit: 1000).count == 200)
        #expect(try jobs.job(expected["fk-7"] ?? 0)?.events?.map(\.state) == ["queued", "dispatched"])
    }
}

/// The dispatcher queries the job table four times a second; a controller keeps months of job history, so none of
/// those queries may read the whole table. Checked on the controller's whole schema (the dashboard adds indexes that
/// SQLite's planner may prefer).
struct DispatcherQueryPlanTests {
    @Test func everyDispatcherQuerySearchesAnIndexInsteadOfScanningTheJobHistory() throws {
        let harness = try DashboardHarness()
        for query in SQLiteJobStore.dispatcherQueries {
            let bindings: [SQLValue] = query.contains("?") ? [.integer(1_800_000_000)] : []
            let plan = try harness.store.database.query("EXPLAIN QUERY PLAN " + query, bindings).compactMap { $0.string("detail") }
            #expect(!plan.isEmpty && !plan.contains { $0.hasPrefix("SCAN") }, "\(query): \(plan)")
        }
    }
}
