import FleetkeepProtocol
import Foundation
import Scheduling
import Synchronization

/// When a condition becomes an alert.
public struct AlertThresholds: Sendable {
    /// No successful backup of an account and kind for this long.
    public var backupOverdueSeconds: Int64 = 26 * 3600
    /// No successful off-site push for this long.
    public var offsiteOverdueSeconds: Int64 = 8 * 86_400
    /// Missed heartbeat intervals before an agent is stale (as in `report`).
    public var staleIntervals: Int64 = 3
    /// Delivery attempts before a notification is given up (3 to 5 hours of backoff, see `AlertService.backoff`).
    public var deliveryAttempts = 12

    public init() {}
}

/// Alerts: finds the conditions that hold (from agents, backup coverage, jobs and schedules), turns them into alerts
/// that fire once and resolve once (`AlertStore.apply`), and delivers the notifications with retries.
public final class AlertService: Sendable {
    public let alerts: any AlertStore
    let status: any BackupStatusStore
    let controller: ControllerStore
    let schedules: ScheduleService
    let thresholds: AlertThresholds
    let clock: @Sendable () -> Int64
    /// Until `startedAt` plus 3 heartbeat intervals nothing is evaluated: after a controller outage every agent looks
    /// stale and spooled results are still on their way.
    let startedAt: Int64
    let controllerName: String
    let log: @Sendable (String) -> Void
    /// Builds the sender of a channel (tests may point it elsewhere; serving uses `AlertChannels.sender`).
    let makeSender: @Sendable (AlertChannel, String) throws -> any AlertSender

    public init(alerts: any AlertStore, status: any BackupStatusStore, controller: ControllerStore, schedules: ScheduleService,
                thresholds: AlertThresholds = AlertThresholds(), startedAt: Int64, controllerName: String,
                clock: @escaping @Sendable () -> Int64 = FleetkeepClock.now, log: @escaping @Sendable (String) -> Void = { _ in },
                makeSender: @escaping @Sendable (AlertChannel, String) throws -> any AlertSender = AlertChannels.sender) {
        self.alerts = alerts
        self.status = status
        self.controller = controller
        self.schedules = schedules
        self.thresholds = thresholds
        self.startedAt = startedAt
        self.controllerName = controllerName
        self.clock = clock
        self.log = log
        self.makeSender = makeSender
    }

    /// The service on a controller's database (SQLite stores).
    public static func open(store: ControllerStore, startedAt: Int64, controllerName: String,
                            clock: @escaping @Sendable () -> Int64 = FleetkeepClock.now, log: @escaping @Sendable (String) -> Void = { _ in },
                            makeSender: @escaping @Sendable (AlertChannel, String) throws -> any AlertSender = AlertChannels.sender) throws -> AlertService {
        AlertService(alerts: try SQLiteAlertStore(database: store.database), status: try SQLiteBackupStatusStore(database: store.database),
                     controller: store, schedules: ScheduleService(store: try SQLiteScheduleStore(database: store.database)),
                     startedAt: startedAt, controllerName: controllerName, clock: clock, log: log, makeSender: makeSender)
    }

    /// Evaluates every `evaluationPeriod` seconds and sends due notifications every `deliveryPeriod` seconds, on its
    /// own thread, so a slow mail server never delays jobs.
    public func start(evaluationPeriod: Double = 30, deliveryPeriod: Double = 2) {
        Thread.detachNewThread { [self] in
            var evaluatedAt = Int64.min
            while true {
                let now = clock()
                if now.subtractingReportingOverflow(evaluatedAt).partialValue >= Int64(evaluationPeriod) || evaluatedAt == .min {
                    evaluatedAt = now
                    do {
                        let changes = try evaluate(now: now)
                        for alert in changes.fired { log("alert firing: \(alert.subject)") }
                        for alert in changes.resolved { log("alert resolved: \(alert.subject)") }
                    } catch {
                        log("alert evaluation failed: \(error)")
                    }
                }
                deliverDue(now: now)
                Thread.sleep(forTimeInterval: deliveryPeriod)
            }
        }
    }

    // MARK: Evaluation

    /// One evaluation: job ends seen since the last one, the conditions that hold, the alert transitions.
    @discardableResult
    public func evaluate(now: Int64) throws -> AlertTransitions {
        try updateJobConditions()
        let interval = Int64(try controller.heartbeatInterval())
        guard now >= startedAt.addingReportingOverflow(thresholds.staleIntervals * interval).partialValue else { return AlertTransitions() }
        return try alerts.apply(held: try heldConditions(now: now), now: now)
    }

    /// Every condition that holds at `now`, for agents that are enrolled and not removed.
    public func heldConditions(now: Int64) throws -> [HeldCondition] {
        let agents = try controller.agents().filter { !$0.removed }
        let byID = Dictionary(agents.map { ($0.agentID, $0) }, uniquingKeysWith: { first, _ in first })
        let interval = Int64(try controller.heartbeatInterval())
        let policies = try schedules.resolver()
        func policy(_ agentID: String) -> SchedulePolicy { policies.policy(agentID) }
        func host(_ agentID: String) -> String { AlertText.printable(byID[agentID]?.hostname ?? agentID, limit: 128) }
        var held: [HeldCondition] = []

        let staleAfter = thresholds.staleIntervals * interval
        for agent in agents {
            let seen = agent.lastSeen ?? agent.enrolledAt
            guard now - seen > staleAfter else { continue }
            held.append(HeldCondition(key: "agent-stale/\(agent.agentID)", condition: .agentStale, agentID: agent.agentID,
                                      subject: "agent \(host(agent.agentID)) is stale: no heartbeat for \(AlertText.age(now - seen))",
                                      detail: "last heartbeat \(AlertText.time(seen)); agents beat every \(interval)s and count as stale after \(thresholds.staleIntervals) missed intervals",
                                      since: seen + staleAfter))
        }

        let backupCutoff = now - thresholds.backupOverdueSeconds
        for record in try status.coverage(notSucceededSince: backupCutoff) where byID[record.agentID] != nil {
            guard policy(record.agentID).timing(.backup) != .off else { continue }
            let reference = record.lastSuccessAt ?? record.firstSeenAt
            let account = AlertText.printable(record.account, limit: 128)
            let last = record.lastSuccessAt.map { "last success \(AlertText.time($0)), \(AlertText.age(now - $0)) ago" } ?? "never backed up successfully since \(AlertText.time(record.firstSeenAt))"
            let failure = record.lastError.map { "; last error: \(AlertText.printable($0, limit: 300))" } ?? ""
            held.append(HeldCondition(key: "backup-overdue/\(record.agentID)/\(record.account)/\(record.kind)", condition: .backupOverdue,
                                      agentID: record.agentID, subject: "backup overdue on \(host(record.agentID)): account \(account), \(record.kind)",
                                      detail: "no successful \(record.kind) backup of account \(account) within \(thresholds.backupOverdueSeconds / 3600) h (\(last))\(failure)",
                                      since: reference + thresholds.backupOverdueSeconds))
        }
        let covered = try status.agentsWithCoverage()
        let backups = try status.lastSucceeded(kind: .backup, drill: false)
        for agent in agents where !covered.contains(agent.agentID) {
            let last = backups[agent.agentID]
            let reference = last?.at ?? agent.enrolledAt
            guard reference < backupCutoff, policy(agent.agentID).timing(.backup) != .off else { continue }
            held.append(HeldCondition(key: "backup-overdue/\(agent.agentID)/*/*", condition: .backupOverdue, agentID: agent.agentID,
                                      subject: "backup overdue on \(host(agent.agentID)): no successful backup",
                                      detail: "no successful backup within \(thresholds.backupOverdueSeconds / 3600) h (\(last.map { "last success \(AlertText.time($0.at))" } ?? "none since enrollment at \(AlertText.time(agent.enrolledAt))"))",
                                      since: reference + thresholds.backupOverdueSeconds))
        }

        let pushes = try status.lastSucceeded(kind: .offsitePush, drill: false)
        let offsiteCutoff = now - thresholds.offsiteOverdueSeconds
        for agent in agents {
            let reference = pushes[agent.agentID]?.at ?? agent.enrolledAt
            guard reference < offsiteCutoff, policy(agent.agentID).timing(.offsitePush) != .off else { continue }
            held.append(HeldCondition(key: "offsite-overdue/\(agent.agentID)", condition: .offsiteOverdue, agentID: agent.agentID,
                                      subject: "off-site push overdue on \(host(agent.agentID))",
                                      detail: "no successful off-site push within \(thresholds.offsiteOverdueSeconds / 86_400) days (\(pushes[agent.agentID].map { "last \(AlertText.time($0.at))" } ?? "none since enrollment at \(AlertText.time(agent.enrolledAt))"))",
                                      since: reference + thresholds.offsiteOverdueSeconds))
        }

        held += try alerts.jobConditions().filter { byID[$0.agentID] != nil }
        return held
    }

    /// Reads the job ends recorded since the last call: a job that failed after all its retries starts a
    /// `job-failed` (or, for a verify or test restore, `verification-failed`) condition for its agent and kind; a
    /// later success of the same agent and kind ends it. Failures that will be retried change nothing.
    func updateJobConditions() throws {
        var cursor = try alerts.jobConditionCursor()
        var hosts: [String: String]?
        while true {
            let batch = try status.finishedJobs(after: cursor, limit: 5000)
            guard let last = batch.last else { return }
            if hosts == nil { hosts = Dictionary(try controller.agents().map { ($0.agentID, $0.hostname) }, uniquingKeysWith: { first, _ in first }) }
            enum Change: Equatable { case holds(HeldCondition), cleared }
            var changes: [String: Change] = [:]
            var order: [String] = []
            func note(_ key: String, _ change: Change) {
                if changes[key] == nil { order.append(key) }
                changes[key] = change
            }
            for finished in batch {
                let job = finished.job
                let drill = job.kind == .restore && job.parameters.drill == true
                let condition: AlertCondition = job.kind == .verify || drill ? .verificationFailed : .jobFailed
                let what = drill ? "restore-drill" : job.kind.rawValue
                let key = "\(condition.rawValue)/\(job.agentID)/\(what)"
                if job.state == .succeeded {
                    note(key, .cleared)
                } else if job.state == .failed || job.state == .expired, job.attempt >= job.maxAttempts {
                    let host = AlertText.printable(hosts?[job.agentID] ?? job.agentID, limit: 128)
                    let error = job.state == .expired ? "no result within its timeout of \(job.timeoutSeconds)s"
                        : AlertText.printable(job.outcome?.error ?? "failed", limit: 500)
                    let name = drill ? "test restore" : condition == .verificationFailed ? "verification" : "\(job.kind.rawValue) job"
                    let at = job.finishedAt ?? 0
                    note(key, .holds(HeldCondition(
                        key: key, condition: condition, agentID: job.agentID,
                        subject: "\(name) failed on \(host)\(job.maxAttempts > 1 ? " after \(job.attempt) attempts" : ""): \(AlertText.printable(error, limit: 120))",
                        detail: "job \(job.id) (\(job.kind.rawValue), attempt \(job.attempt) of \(job.maxAttempts)) ended \(job.state.rawValue) at \(AlertText.time(at)): \(error)",
                        since: at)))
                }
                // A failure with attempts left changes nothing: its retry decides.
            }
            let set = order.compactMap { key -> HeldCondition? in
                if case .holds(let condition) = changes[key] { return condition }
                return nil
            }
            let cleared = order.filter { changes[$0] == .cleared }
            try alerts.updateJobConditions(set: set, cleared: cleared, cursor: last.cursor)
            cursor = last.cursor
        }
    }

    // MARK: Delivery

    /// Sends every notification that is due; a failure is tried again after exponential backoff (30 s doubling,
    /// at most an hour, with jitter) until `thresholds.deliveryAttempts`. Returns how many were delivered.
    @discardableResult
    public func deliverDue(now: Int64, retryJitter: @Sendable () -> Double = { Double.random(in: 0.5...1) }) -> Int {
        let due: [AlertDelivery]
        do { due = try alerts.dueDeliveries(now: now, limit: 50) } catch {
            log("alert deliveries cannot be read: \(error)")
            return 0
        }
        var delivered = 0
        for delivery in due {
            do {
                guard let channel = try alerts.channel(delivery.channel) else {
                    try alerts.markFailed(delivery.id, error: "channel removed", retryAt: nil, now: now)
                    continue
                }
                do {
                    try makeSender(channel, controllerName).send(delivery.events, deliveryID: delivery.id, now: now)
                    try alerts.markDelivered(delivery.id, now: clock())
                    delivered += 1
                } catch {
                    let attempts = delivery.attempts + 1
                    let retryAt = attempts >= thresholds.deliveryAttempts ? nil : now + Self.backoff(attempt: attempts, jitter: retryJitter())
                    try alerts.markFailed(delivery.id, error: "\(error)", retryAt: retryAt, now: now)
                    log("alert delivery \(delivery.id) to \(channel.name) failed (attempt \(attempts)): \(error)\(retryAt == nil ? "; given up" : "")")
                }
            } catch {
                log("alert delivery \(delivery.id) cannot be recorded: \(error)")
            }
        }
        return delivered
    }

    /// Seconds before attempt `attempt + 1`: 30 × 2^(attempt−1), at most 3600, times `jitter` (0.5...1).
    static func backoff(attempt: Int, jitter: Double) -> Int64 {
        let ceiling = min(Int64(30) << Int64(min(max(attempt - 1, 0), 16)), 3600)
        return max(1, Int64((Double(ceiling) * min(max(jitter, 0.5), 1)).rounded(.up)))
    }

    /// Sends a test notification through one channel now and says whether it was accepted.
    public func sendTest(channel name: String, now: Int64) throws {
        guard let channel = try alerts.channel(name) else { throw AlertError("no alert channel '\(name)'; see `fleetkeep-controller alerts channel list`") }
        let event = AlertEvent(event: .test, alertID: 0, key: "test/\(name)", condition: "test", agentID: "-",
                               subject: "test of alert channel \(name)", detail: "sent by `fleetkeep-controller alerts test --channel \(name)`; no action needed",
                               since: now, firedAt: now, resolvedAt: nil)
        try makeSender(channel, controllerName).send([event], deliveryID: 0, now: now)
    }
}
