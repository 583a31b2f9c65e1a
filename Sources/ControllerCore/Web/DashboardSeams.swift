import FleetkeepProtocol
import Foundation
import SQLite

/// Records a read of personal data before it is shown: when the record cannot be written, the page fails and
/// shows nothing. The privacy audit log implements this (`PrivacyAuditReads`).
public protocol PersonalDataAudit: Sendable {
    func recordRead(actor: String, action: String, subject: String, reason: String) throws
}

/// `PersonalDataAudit` in the privacy work's hash-chained audit log (`privacy audit` lists and verifies it).
public final class PrivacyAuditReads: PersonalDataAudit {
    let privacy: PrivacyService

    public init(privacy: PrivacyService) { self.privacy = privacy }

    public func recordRead(actor: String, action: String, subject: String, reason: String) throws {
        _ = try privacy.audit(Access(actor: actor, reason: reason), action: action, subject: subject)
    }
}

/// One alert that fires now.
public struct FiringAlert: Sendable, Equatable {
    /// `agent-stale`, `backup-overdue`, `job-failed`, ... (the alert engine's condition names).
    public let condition: String
    public let agentID: String
    public let hostname: String
    public let detail: String
    public let since: Int64?
}

/// The alerts that fire. The alert engine (issue 16, step 5) implements this over its alert table; until it is
/// merged, `FleetConditionAlerts` reports the conditions the fleet's own state shows.
public protocol FiringAlertSource: Sendable {
    /// How many fire, by condition.
    func firingCounts(_ thresholds: FleetThresholds) throws -> [String: Int]
    /// Up to `limit` firing alerts (of one agent when `agentID` is given), worst first.
    func firing(agentID: String?, limit: Int, _ thresholds: FleetThresholds) throws -> [FiringAlert]
}

/// Alerts from the fleet's state as the dashboard grades it: a stale agent, a backup overdue (none succeeded
/// within 26 h) and a failed backup (the latest finished backup failed).
public final class FleetConditionAlerts: FiringAlertSource {
    let fleet: any FleetStore

    public init(fleet: any FleetStore) { self.fleet = fleet }

    public func firingCounts(_ thresholds: FleetThresholds) throws -> [String: Int] {
        let summary = try fleet.summary(thresholds)
        return ["agent-stale": summary.liveness[.stale] ?? 0, "backup-overdue": summary.backups[.overdue] ?? 0,
                "job-failed": summary.backups[.failed] ?? 0]
    }

    public func firing(agentID: String?, limit: Int, _ thresholds: FleetThresholds) throws -> [FiringAlert] {
        let rows: [AgentRow]
        if let agentID { rows = try fleet.agentRow(agentID, thresholds).map { [$0] } ?? [] } else { rows = try fleet.troubled(thresholds, limit: limit) }
        var alerts: [FiringAlert] = []
        for row in rows {
            switch row.backup {
            case .failed: alerts.append(FiringAlert(condition: "job-failed", agentID: row.agentID, hostname: row.hostname,
                                                    detail: "the latest backup failed", since: nil))
            case .overdue: alerts.append(FiringAlert(condition: "backup-overdue", agentID: row.agentID, hostname: row.hostname,
                                                     detail: "no successful backup within 26 h", since: row.lastBackupAt.map { $0 + FleetThresholds.backupFreshSeconds }))
            case .ok, .pending: break
            }
            if row.liveness == .stale {
                alerts.append(FiringAlert(condition: "agent-stale", agentID: row.agentID, hostname: row.hostname,
                                          detail: "no heartbeat for 3 intervals", since: row.lastSeen))
            }
        }
        return Array(alerts.prefix(max(0, limit)))
    }
}

