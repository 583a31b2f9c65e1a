import CommandLineSupport
import FleetkeepProtocol
import Foundation
import Scheduling

/// `fleetkeep-controller job ...`: on-demand jobs and the job history.
public enum JobCommands {
    public static let usage = """
      job run --agent ID --kind KIND [--account USER] [--snapshot ID] [--kinds files,databases,email]
              [--timeout 6h] [--max-attempts 3] [--retry-base 5m] [--json]     KIND: backup, offsite-push, restore, verify, prune
      job list [--agent ID] [--state STATE] [--limit 50] [--json]
      job show JOB_ID [--json]                           one job with every state change and its time
      job cancel JOB_ID                                  a queued job stops at once; a running one is stopped by its agent
    """

    public static func job(_ raw: [String]) throws -> Int32 {
        let arguments = try Arguments(raw, options: ["data", "agent", "kind", "account", "snapshot", "kinds", "timeout", "max-attempts",
                                                     "retry-base", "state", "limit"], flags: ["json"])
        let (store, _) = try ControllerSetup.open(paths: ControllerCommands.paths(arguments))
        let jobs = try SQLiteJobStore(database: store.database)
        let now = FleetkeepClock.now()
        switch arguments.positionals.first {
        case "run":
            try arguments.expectPositionals(atMost: 1)
            guard let agentID = arguments.value("agent") else { throw UsageError("job run needs --agent ID") }
            try ScheduleCommands.requireAgent(agentID, store: store)
            guard let kindText = arguments.value("kind") else { throw UsageError("job run needs --kind (\(JobKind.allCases.map(\.rawValue).joined(separator: ", ")))") }
            let kind: JobKind
            do { kind = try JobKind.parse(kindText) } catch let error as ScheduleError { throw UsageError("--kind: \(error.message)") }
            let parameters: JobParameters
            do {
                let account = try arguments.value("account").map { try OnDemandJob.account($0) }
                let snapshot = try arguments.value("snapshot").flatMap { try OnDemandJob.snapshot($0) }
                let kinds = arguments.list("kinds")
                for name in kinds where !["files", "databases", "email"].contains(name) { throw UsageError("--kinds: unknown kind '\(name.prefix(32))' (files, databases, email)") }
                let policy = try ScheduleService(store: try SQLiteScheduleStore(database: store.database)).effectivePolicy(agentID: agentID)
                parameters = try OnDemandJob.parameters(kind: kind, account: account, snapshot: snapshot, kinds: kinds, policy: policy)
            } catch let invalid as OnDemandJob.Invalid {
                throw UsageError("job run: \(invalid.description) (--account USER, --snapshot ID)")
            }
            let defaults = JobDefaults()
            let timeout = try arguments.value("timeout").map { try Arguments.parseDuration($0, option: "timeout", maximum: 7 * 86_400) } ?? defaults.timeout(for: kind)
            let retryBase = try arguments.value("retry-base").map { try Arguments.parseDuration($0, option: "retry-base", maximum: 86_400) } ?? defaults.retryBaseSeconds
            let attempts = try ScheduleCommands.number(arguments.value("max-attempts") ?? String(defaults.maxAttempts), option: "max-attempts", range: 1...20)
            let draft = JobDraft(agentID: agentID, kind: kind, parameters: parameters, origin: .operator_, maxAttempts: attempts,
                                 retryBaseSeconds: retryBase, timeoutSeconds: timeout, notBefore: now)
            guard let id = try jobs.enqueue(draft, now: now) else { throw ControllerError("the job was not queued") }
            if arguments.flag("json") { print(try ControllerCommands.jsonText(["jobID": id])) } else { print("job \(id) queued: \(kind.rawValue) on \(agentID)") }
        case "list":
            try arguments.expectPositionals(atMost: 1)
            let states = try arguments.list("state").map { text -> JobState in
                guard let state = JobState(rawValue: text) else {
                    throw UsageError("--state '\(text.prefix(32))' is not a job state (\(JobState.allCases.map(\.rawValue).joined(separator: ", ")))")
                }
                return state
            }
            let limit = try ScheduleCommands.number(arguments.value("limit") ?? "50", option: "limit", range: 1...100_000)
            let list = try jobs.jobs(agentID: arguments.value("agent"), states: states.isEmpty ? nil : states, limit: limit)
            if arguments.flag("json") { print(try ControllerCommands.jsonText(list)) } else {
                for job in list {
                    let detail = job.outcome?.error.map { "  \($0.prefix(80))" } ?? job.progress.map { "  \($0.files) files, \($0.bytes / 1_048_576) MiB" } ?? ""
                    print("\(job.id)  \(job.kind.rawValue.padding(toLength: 12, withPad: " ", startingAt: 0)) \(job.state.rawValue.padding(toLength: 10, withPad: " ", startingAt: 0)) \(job.agentID)  attempt \(job.attempt)/\(job.maxAttempts)  \(job.origin)\(detail)")
                }
                print("\(list.count) jobs")
            }
        case "show":
            let id = try jobID(arguments.positional(1, "JOB_ID"))
            try arguments.expectPositionals(atMost: 2)
            guard let job = try jobs.job(id) else { throw ControllerError("no job \(id); see `fleetkeep-controller job list`") }
            if arguments.flag("json") { print(try ControllerCommands.jsonText(job)) } else {
                print("job \(job.id): \(job.kind.rawValue) on \(job.agentID), \(job.state.rawValue), attempt \(job.attempt) of \(job.maxAttempts) (\(job.origin))")
                for event in job.events ?? [] {
                    print("  \(timeText(event.at))  \(event.state)\(event.detail.map { ": \($0)" } ?? "")")
                }
                if let outcome = job.outcome {
                    print("  result: \(outcome.snapshots.count) snapshots, \(outcome.bytesAdded) bytes added, \(outcome.files) files, \(outcome.durationSeconds)s\(outcome.error.map { ", error: \($0)" } ?? "")")
                }
            }
        case "cancel":
            let id = try jobID(arguments.positional(1, "JOB_ID"))
            try arguments.expectPositionals(atMost: 2)
            guard let state = try jobs.cancel(id, now: now) else { throw ControllerError("no job \(id); see `fleetkeep-controller job list`") }
            switch state {
            case .cancelled: print("job \(id) cancelled")
            case .dispatched, .running: print("job \(id) is \(state.rawValue): its agent is asked to stop it")
            default: throw ControllerError("job \(id) already finished (\(state.rawValue))")
            }
        default:
            throw UsageError("expected `job run|list|show|cancel`")
        }
        return 0
    }

    static func jobID(_ text: String) throws -> Int64 {
        guard text.utf8.count <= 19, let id = Int64(text), id > 0 else { throw UsageError("JOB_ID '\(text.prefix(32))' must be a job number (see `job list`)") }
        return id
    }

    static func timeText(_ at: Int64) -> String {
        ISO8601DateFormatter().string(from: Date(timeIntervalSince1970: TimeInterval(at)))
    }
}
