import FleetkeepProtocol
import Foundation

/// A moment and how long ago it was.
public struct AgeView: Codable, Sendable, Equatable {
    public let at: Int64
    public let time: String
    public let ageSeconds: Int64

    init(_ at: Int64, now: Int64) {
        self.at = at
        time = AlertText.time(at)
        ageSeconds = max(0, now - at)
    }
}

/// One kind of backup on one agent: the newest success (any account), the oldest of its accounts' latest
/// successes, and the accounts that are overdue.
public struct KindBackupView: Codable, Sendable {
    public let kind: String
    public let accounts: Int
    public let lastSuccess: AgeView?
    /// The account whose last success is oldest: how far behind the worst one is.
    public let oldestAccountSuccess: AgeView?
    public let overdueAccounts: [String]
}

/// One account and kind, as in `backup_coverage`.
public struct AccountBackupView: Codable, Sendable {
    public let account: String
    public let kind: String
    public let lastSuccess: AgeView?
    public let overdue: Bool
    public let lastFailure: AgeView?
    public let lastError: String?
}

/// A job that failed (its last attempt or one that is retried).
public struct FailureView: Codable, Sendable {
    public let jobID: Int64
    public let kind: String
    public let state: String
    public let finished: AgeView
    public let attempt: Int
    public let maxAttempts: Int
    public let error: String
}

/// The latest verification: when the repository was last verified successfully, and how the latest one ended.
public struct VerificationView: Codable, Sendable {
    public let lastVerified: AgeView?
    public let lastRun: AgeView?
    public let lastRunSucceeded: Bool?
    public let lastError: String?
    public let lastTestRestore: AgeView?
}

public struct FiringAlertView: Codable, Sendable {
    public let condition: String
    public let subject: String
    public let since: AgeView
}

/// The backup side of one agent's report line.
public struct AgentBackupReport: Codable, Sendable {
    public let kinds: [KindBackupView]
    public let accounts: [AccountBackupView]
    /// When no result named accounts yet (an agent that reports none): the last successful backup job.
    public let lastBackupJob: AgeView?
    public let overdue: [String]
    public let lastOffsitePush: AgeView?
    public let verification: VerificationView
    public let recentFailures: [FailureView]
    public let alerts: [FiringAlertView]
}

/// Builds the backup part of `report` from the same data and thresholds as the alerts.
public enum BackupReport {
    /// Failures of the last week, at most this many per agent.
    static let recentFailureWindow: Int64 = 7 * 86_400
    static let recentFailureCount = 5

    public static func add(to rows: [FleetReportRow], service: AlertService, now: Int64) throws -> [FleetReportRow] {
        let held = try service.heldConditions(now: now).filter { $0.condition == .backupOverdue }
        let firing = Dictionary(grouping: try service.alerts.firingAlerts(agentID: nil), by: \.agentID)
        let pushes = try service.status.lastSucceeded(kind: .offsitePush, drill: false)
        let cutoff = now - service.thresholds.backupOverdueSeconds
        return try rows.map { row in
            var row = row
            let agent = row.agentID
            let coverage = try service.status.coverage(agentID: agent)
            let accounts = coverage.map { record in
                AccountBackupView(account: AlertText.printable(record.account, limit: 128), kind: record.kind, lastSuccess: record.lastSuccessAt.map { AgeView($0, now: now) },
                                  overdue: (record.lastSuccessAt ?? record.firstSeenAt) < cutoff,
                                  lastFailure: record.lastFailureAt.map { AgeView($0, now: now) },
                                  lastError: record.lastError.map { AlertText.printable($0, limit: 300) })
            }
            let kinds = Dictionary(grouping: coverage, by: \.kind).sorted { $0.key < $1.key }.map { kind, records in
                let successes = records.compactMap(\.lastSuccessAt)
                let oldest: Int64? = records.contains { $0.lastSuccessAt == nil } ? nil : successes.min()
                return KindBackupView(kind: kind, accounts: records.count, lastSuccess: successes.max().map { AgeView($0, now: now) },
                                      oldestAccountSuccess: oldest.map { AgeView($0, now: now) },
                                      overdueAccounts: records.filter { ($0.lastSuccessAt ?? $0.firstSeenAt) < cutoff }
                                        .map { AlertText.printable($0.account, limit: 128) })
            }
            let verified = try service.status.lastSucceeded(agentID: agent, kind: .verify, drill: false)
            let lastVerify = try service.status.lastFinished(agentID: agent, kind: .verify, drill: false)
            let drill = try service.status.lastSucceeded(agentID: agent, kind: .restore, drill: true)
            let failures = try service.status.failures(agentID: agent, since: now - recentFailureWindow, limit: recentFailureCount).map { job in
                FailureView(jobID: job.id, kind: job.parameters.drill == true ? "restore-drill" : job.kind.rawValue, state: job.state.rawValue,
                            finished: AgeView(job.finishedAt ?? job.queuedAt, now: now), attempt: job.attempt, maxAttempts: job.maxAttempts,
                            error: AlertText.printable(job.state == .expired ? "no result within its timeout" : job.outcome?.error ?? "failed", limit: 300))
            }
            row.backup = AgentBackupReport(
                kinds: kinds, accounts: accounts,
                lastBackupJob: coverage.isEmpty ? try service.status.lastSucceeded(agentID: agent, kind: .backup, drill: false).map { AgeView($0.at, now: now) } : nil,
                overdue: held.filter { $0.agentID == agent }.map { condition in
                    condition.key.split(separator: "/").dropFirst(2).joined(separator: "/")
                },
                lastOffsitePush: pushes[agent].map { AgeView($0.at, now: now) },
                verification: VerificationView(lastVerified: verified.map { AgeView($0.at, now: now) }, lastRun: lastVerify.map { AgeView($0.at, now: now) },
                                               lastRunSucceeded: lastVerify?.succeeded,
                                               lastError: lastVerify?.error.map { AlertText.printable($0, limit: 300) },
                                               lastTestRestore: drill.map { AgeView($0.at, now: now) }),
                recentFailures: failures,
                alerts: (firing[agent] ?? []).map { FiringAlertView(condition: $0.condition.rawValue, subject: $0.subject, since: AgeView($0.since, now: now)) })
            return row
        }
    }

    /// The text after the fleet table: per agent, backups by kind, overdue ones, off-site, verification, failures,
    /// alerts.
    public static func text(_ rows: [FleetReportRow]) -> String {
        var lines: [String] = []
        for row in rows where row.status != "removed" {
            guard let backup = row.backup else { continue }
            lines.append("")
            lines.append("\(row.host) (\(row.agentID), \(row.status))")
            let kinds = backup.kinds.map { kind in
                "\(kind.kind) \(kind.lastSuccess.map { AlertText.age($0.ageSeconds) + " ago" } ?? "never")"
                    + (kind.accounts > 1 ? " (\(kind.accounts) accounts, oldest \(kind.oldestAccountSuccess.map { AlertText.age($0.ageSeconds) } ?? "never"))" : "")
            }
            if !kinds.isEmpty {
                lines.append("  last backup:      " + kinds.joined(separator: "; "))
            } else {
                lines.append("  last backup:      " + (backup.lastBackupJob.map { AlertText.age($0.ageSeconds) + " ago (" + $0.time + ")" } ?? "never"))
            }
            if !backup.overdue.isEmpty {
                lines.append("  OVERDUE:          " + backup.overdue.prefix(20).joined(separator: ", ") + (backup.overdue.count > 20 ? " and \(backup.overdue.count - 20) more" : ""))
            }
            lines.append("  off-site push:    " + (backup.lastOffsitePush.map { AlertText.age($0.ageSeconds) + " ago" } ?? "never"))
            let verification = backup.verification
            var verified = "last verified:    " + (verification.lastVerified.map { AlertText.age($0.ageSeconds) + " ago (" + $0.time + ")" } ?? "never")
            if verification.lastRunSucceeded == false {
                verified += "; the latest verify FAILED \(verification.lastRun.map { AlertText.age($0.ageSeconds) + " ago" } ?? ""): \(verification.lastError ?? "")"
            }
            lines.append("  " + verified)
            lines.append("  test restore:     " + (verification.lastTestRestore.map { AlertText.age($0.ageSeconds) + " ago" } ?? "never"))
            for failure in backup.recentFailures {
                lines.append("  failed:           job \(failure.jobID) \(failure.kind) \(AlertText.age(failure.finished.ageSeconds)) ago, attempt \(failure.attempt)/\(failure.maxAttempts): \(failure.error)")
            }
            for alert in backup.alerts {
                lines.append("  ALERT:            \(alert.condition): \(alert.subject)")
            }
        }
        return lines.joined(separator: "\n")
    }
}
