import FleetkeepProtocol
import Foundation
import HTTPServer
import Scheduling
import Synchronization

/// Jobs on the controller: the agent endpoints (long poll, progress, result), the scheduler that queues each agent's
/// scheduled runs, and the timeouts.
public final class JobService: Sendable {
    public let jobs: any JobStore
    public let schedules: ScheduleService
    let agents: ControllerService
    let clock: @Sendable () -> Int64
    let defaults: JobDefaults

    /// One waiting poll per agent.
    private struct Waiter {
        let responder: HTTPResponder
        let holding: Set<Int64>
        let deadline: Int64
        let policy: SchedulePolicy
    }
    private let waiters = Mutex<[String: Waiter]>([:])
    /// Per agent and task, the next scheduled run not yet queued (recomputed every `scheduleRefreshSeconds`).
    private let nextRuns = Mutex<[String: [ScheduledTask: Int64]]>([:])
    /// What each agent's `nextRuns` were computed from: while these stay the same, the runs (advanced as they are
    /// queued) are still right, and a refresh skips the calendar walk.
    private let scheduleInputs = Mutex<[String: ScheduleInputs]>([:])
    private struct ScheduleInputs: Equatable {
        let policy: SchedulePolicy
        let zone: String?
        let enrolledAt: Int64
    }
    private let scheduleRefreshedAt = Atomic<Int64>(0)
    /// Every agent's effective policy and reported time zone, read for the whole fleet in a few queries.
    private struct FleetSchedules {
        let policies: PolicyResolver
        let zones: [String: String]

        init(_ schedules: ScheduleService) throws {
            policies = try schedules.resolver()
            zones = try schedules.store.timeZones()
        }
    }

    /// A scheduled run missed by more than this (the controller was down) is not queued any more.
    static let catchUpSeconds: Int64 = 6 * 3600
    static let scheduleRefreshSeconds: Int64 = 30

    public init(jobs: any JobStore, schedules: ScheduleService, agents: ControllerService, defaults: JobDefaults = JobDefaults(),
                clock: @escaping @Sendable () -> Int64 = FleetkeepClock.now) {
        self.jobs = jobs
        self.schedules = schedules
        self.agents = agents
        self.defaults = defaults
        self.clock = clock
    }

    public func register(in router: inout Router) {
        router.addDeferred("POST", APIPath.jobsPoll) { [self] request, responder in try poll(request, responder) }
        router.add("POST", APIPath.jobsProgress) { [self] in try progress($0) }
        router.add("POST", APIPath.jobsResult) { [self] in try result($0) }
        // A large server's result names thousands of accounts and snapshots.
        router.setBodyLimit(JobLimits.largestResultBody, for: APIPath.jobsResult)
    }

    /// Runs the dispatcher: every `period` seconds it answers polls whose agent has due work or whose wait is over,
    /// expires jobs past their timeout and queues scheduled runs. Jobs queued by another process (`job run`) are
    /// seen here, so they start within about `period` plus the agent's round trip.
    public func start(period: Double = 0.25) {
        Thread.detachNewThread { [self] in
            while true {
                tick()
                Thread.sleep(forTimeInterval: period)
            }
        }
    }

    /// One pass of the dispatcher (tests call it directly).
    public func tick() {
        let now = clock()
        do {
            try queueScheduledRuns(now: now)
            _ = try jobs.expireOverdue(now: now, retryJitter: Double.random(in: 0.5..<1))
            let due = try jobs.agentsWithDueJobs(now: now).union(try jobs.agentsWithCancelRequests())
            let ready = waiters.withLock { waiting -> [(String, Waiter)] in
                let chosen = waiting.filter { due.contains($0.key) || $0.value.deadline <= now }
                for (agent, _) in chosen { waiting.removeValue(forKey: agent) }
                return Array(chosen)
            }
            answer(ready, now: now)
        } catch {
            // The next pass tries again; a failing database also fails the polls themselves, which agents see.
        }
    }

    /// Answers waiting polls: their jobs are dispatched in one transaction, so a fleet whose jobs were queued together
    /// costs one commit, not one per agent.
    private func answer(_ ready: [(String, Waiter)], now: Int64) {
        guard !ready.isEmpty else { return }
        let assigned: [String: [JobRecord]]
        do {
            assigned = try jobs.dispatch(agents: ready.map { (agentID: $0.0, holding: $0.1.holding) }, now: now)
        } catch {
            for (_, waiter) in ready { waiter.responder.respond(.error(Self.httpError(error).status, Self.httpError(error).message)) }
            return
        }
        for (agent, waiter) in ready {
            do {
                let cancel = try jobs.cancelRequests(agentID: agent, holding: waiter.holding)
                waiter.responder.respond(.json(JobPollResponse(jobs: (assigned[agent] ?? []).map(\.assignment), cancel: cancel, policy: waiter.policy)))
            } catch {
                waiter.responder.respond(.error(Self.httpError(error).status, Self.httpError(error).message))
            }
        }
    }

    func poll(_ request: HTTPRequest, _ responder: HTTPResponder) throws -> HTTPResponse? {
        let agentID = try agents.authenticate(request)
        let body = try agents.decode(JobPollRequest.self, request)
        guard body.holding.count <= JobLimits.mostHeld else { throw HTTPError(400, "holding lists more than \(JobLimits.mostHeld) jobs") }
        let now = clock()
        do {
            if let zone = body.timeZone {
                guard ScheduleService.validTimeZone(zone) else { throw HTTPError(400, "timeZone is not a known time zone name") }
                try schedules.store.setTimeZone(zone, of: agentID, now: now)
            }
            let policy = try schedules.effectivePolicy(agentID: agentID)
            let holding = Set(body.holding)
            let assigned = try jobs.dispatch(agentID: agentID, holding: holding, now: now)
            let cancel = try jobs.cancelRequests(agentID: agentID, holding: holding)
            let wait = Int64(min(max(body.waitSeconds, 0), JobLimits.longestPollWait))
            if !assigned.isEmpty || !cancel.isEmpty || wait == 0 {
                return .json(JobPollResponse(jobs: assigned.map(\.assignment), cancel: cancel, policy: policy))
            }
            let replaced = waiters.withLock { waiting in
                let old = waiting[agentID]
                waiting[agentID] = Waiter(responder: responder, holding: holding, deadline: now + wait, policy: policy)
                return old
            }
            // A newer poll from the same agent: the older one is over.
            replaced?.responder.respond(.json(JobPollResponse(jobs: [], cancel: [], policy: policy)))
            return nil
        } catch {
            throw Self.httpError(error)
        }
    }

    func progress(_ request: HTTPRequest) throws -> HTTPResponse {
        let agentID = try agents.authenticate(request)
        let body = try agents.decode(JobProgressRequest.self, request)
        guard body.bytes >= 0, body.files >= 0, body.percent.map({ $0.isFinite && (0...100).contains($0) }) ?? true else {
            throw HTTPError(400, "progress needs bytes and files of 0 or more and a percent from 0 to 100")
        }
        do {
            let now = clock()
            let (known, cancel) = try jobs.recordProgress(agentID: agentID, jobID: body.jobID,
                                                          progress: JobProgress(bytes: body.bytes, files: body.files, percent: body.percent, at: now), now: now)
            guard known else { throw JobStoreError.unknownJob(body.jobID) }
            return .json(JobProgressResponse(cancel: cancel))
        } catch {
            throw Self.httpError(error)
        }
    }

    /// Records a job's end. The answer goes out only after the transaction committed (synchronous=FULL), so an agent
    /// that got a 200 may drop its spooled copy; a retry of a result already recorded is answered `duplicate`.
    func result(_ request: HTTPRequest) throws -> HTTPResponse {
        let agentID = try agents.authenticate(request)
        let body = try agents.decode(JobResultRequest.self, request)
        guard (body.jobID == nil) != (body.localID == nil) else { throw HTTPError(400, "a result names exactly one of jobID and localID") }
        if let local = body.localID {
            guard (1...JobLimits.longestLocalID).contains(local.utf8.count), local.allSatisfy({ $0.isASCII && ($0.isLetter || $0.isNumber || $0 == "-") }) else {
                throw HTTPError(400, "localID must be 1 to \(JobLimits.longestLocalID) letters, digits or '-'")
            }
        }
        guard body.snapshots.count <= JobLimits.mostSnapshots, body.snapshots.allSatisfy({ $0.utf8.count <= 128 }),
              (body.error?.utf8.count ?? 0) <= JobLimits.longestError, body.bytesAdded >= 0, body.files >= 0, (body.repositoryBytes ?? 0) >= 0 else {
            throw HTTPError(400, "result fields out of range: at most \(JobLimits.mostSnapshots) snapshot ids of 128 bytes, an error of at most \(JobLimits.longestError) bytes, counts of 0 or more")
        }
        if let items = body.items {
            guard items.count <= JobLimits.mostItems else { throw HTTPError(400, "items lists more than \(JobLimits.mostItems) accounts and kinds") }
            if let violation = items.lazy.compactMap(\.violation).first { throw HTTPError(400, violation) }
        }
        do {
            switch try jobs.recordResult(agentID: agentID, result: body, now: clock(), retryJitter: Double.random(in: 0.5..<1)) {
            case .recorded: return .json(JobResultResponse(status: "recorded"))
            case .duplicate: return .json(JobResultResponse(status: "duplicate"))
            }
        } catch {
            throw Self.httpError(error)
        }
    }

    /// The one place job and store errors become HTTP statuses.
    static func httpError(_ error: any Error) -> HTTPError {
        switch error {
        case let error as HTTPError: return error
        case let error as JobStoreError:
            switch error {
            case .unknownJob: return HTTPError(404, "\(error)")
            case .alreadyFinished: return HTTPError(409, "\(error)")
            case .noIdentity: return HTTPError(400, "\(error)")
            }
        case let error as ControllerError: return HTTPError(500, error.message)
        default: return HTTPError(503, "the controller could not store this right now; try again")
        }
    }

    // MARK: Scheduler

    /// Queues every scheduled run that is due, once per (agent, task, run): the store's unique index makes a second
    /// attempt a no-op, also across restarts and with another controller process.
    ///
    /// Due runs are queued with the policies and time zones read in this tick: the refresh's when one ran, else
    /// read once for all of them. Not the cached `ScheduleInputs`, which may be a refresh period old: a changed
    /// retention must reach the next scheduled prune's parameters at once.
    func queueScheduledRuns(now: Int64) throws {
        var readByRefresh: FleetSchedules?
        if now - scheduleRefreshedAt.load(ordering: .relaxed) >= Self.scheduleRefreshSeconds {
            readByRefresh = try refreshSchedules(now: now)
            scheduleRefreshedAt.store(now, ordering: .relaxed)
        }
        let due = nextRuns.withLock { runs -> [(String, ScheduledTask, Int64)] in
            var due: [(String, ScheduledTask, Int64)] = []
            for (agent, tasks) in runs { for (task, at) in tasks where at <= now { due.append((agent, task, at)) } }
            return due
        }
        guard !due.isEmpty else { return }
        let read = try readByRefresh ?? FleetSchedules(schedules)
        for (agent, task, slot) in due {
            let policy = read.policies.policy(agent)
            if now - slot <= Self.catchUpSeconds {
                _ = try jobs.enqueue(draft(agentID: agent, task: task, slot: slot, policy: policy, now: now), now: now)
            }
            let following = policy.timing(task).next(after: Date(timeIntervalSince1970: TimeInterval(slot)), fraction: Jitter.fraction(agentID: agent),
                                                      in: policy.calendar(agentTimeZone: read.zones[agent]))
            nextRuns.withLock { runs in runs[agent]?[task] = following.map { Int64($0.timeIntervalSince1970) } }
        }
    }

    /// Recomputes the next runs of each agent whose policy, time zone or enrolment changed (all of them at the first
    /// pass), starting from the catch-up horizon so that runs missed while the controller was down (and not yet
    /// queued) are found. Overrides and time zones are read once per pass, not per agent; they are returned for the
    /// due runs of the same tick.
    private func refreshSchedules(now: Int64) throws -> FleetSchedules {
        let read = try FleetSchedules(schedules)
        let (knownRuns, knownInputs) = (nextRuns.withLock { $0 }, scheduleInputs.withLock { $0 })
        var fresh: [String: [ScheduledTask: Int64]] = [:]
        var freshInputs: [String: ScheduleInputs] = [:]
        for agent in try agents.store.agents() where !agent.removed {
            let inputs = ScheduleInputs(policy: read.policies.policy(agent.agentID), zone: read.zones[agent.agentID], enrolledAt: agent.enrolledAt)
            freshInputs[agent.agentID] = inputs
            if knownInputs[agent.agentID] == inputs, let runs = knownRuns[agent.agentID] {
                fresh[agent.agentID] = runs
                continue
            }
            let calendar = inputs.policy.calendar(agentTimeZone: inputs.zone)
            let fraction = Jitter.fraction(agentID: agent.agentID)
            var tasks: [ScheduledTask: Int64] = [:]
            for task in ScheduledTask.allCases {
                // Never before the agent enrolled: a new agent does not catch up on runs from before it existed.
                var after = max(now - Self.catchUpSeconds, agent.enrolledAt) - 1
                while let next = inputs.policy.timing(task).next(after: Date(timeIntervalSince1970: TimeInterval(after)), fraction: fraction, in: calendar) {
                    let slot = Int64(next.timeIntervalSince1970)
                    if try slot > now || !jobs.hasJob(agentID: agent.agentID, task: task, slot: slot) {
                        tasks[task] = slot
                        break
                    }
                    after = slot
                }
            }
            fresh[agent.agentID] = tasks
        }
        nextRuns.withLock { $0 = fresh }
        scheduleInputs.withLock { $0 = freshInputs }
        return read
    }

    func draft(agentID: String, task: ScheduledTask, slot: Int64, policy: SchedulePolicy, now: Int64) -> JobDraft {
        var parameters = JobParameters()
        switch task {
        case .backup: break
        case .verify:
            let parts = max(1, policy.verifyRotation)
            parameters.verifyParts = parts
            parameters.verifyPart = Int((slot / 86_400) % Int64(parts))
        case .prune, .offsitePush: parameters.retention = policy.retention
        case .restoreDrill:
            parameters.drill = true
            parameters.drillIndex = Int(slot / (30 * 86_400))
        }
        return JobDraft(agentID: agentID, kind: task.jobKind, parameters: parameters, origin: .schedule, task: task, slot: slot,
                        maxAttempts: defaults.maxAttempts, retryBaseSeconds: defaults.retryBaseSeconds,
                        timeoutSeconds: defaults.timeout(for: task.jobKind), notBefore: now)
    }
}

/// Limits given to scheduled jobs (on-demand jobs take them from `job run`'s options).
public struct JobDefaults: Sendable {
    public var maxAttempts = 3
    public var retryBaseSeconds: Int64 = 300
    public var backupTimeoutSeconds: Int64 = 6 * 3600
    public var otherTimeoutSeconds: Int64 = 3 * 3600

    public init() {}

    public func timeout(for kind: JobKind) -> Int64 {
        kind == .backup || kind == .offsitePush ? backupTimeoutSeconds : otherTimeoutSeconds
    }
}
