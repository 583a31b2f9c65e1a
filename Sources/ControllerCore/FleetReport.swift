import FleetkeepProtocol
import Foundation

/// One line of the fleet report.
public struct FleetReportRow: Codable, Sendable {
    public let agentID: String
    public let host: String
    public let os: String
    public let kernel: String
    public let panel: String
    public let lastSeen: String
    public let secondsSinceSeen: Int64?
    public let status: String
    /// The licence the agent holds a seat on, if any.
    public var licence: String? = nil
    /// The agent key was seen on more than one machine (a copied state directory): the operator must decide.
    public var clone: Bool = false
    /// Backups, verification, failures and firing alerts (`BackupReport`).
    public var backup: AgentBackupReport? = nil
}

/// The fleet as operators read it: an agent is online until it misses three heartbeat intervals, then stale.
public enum FleetReport {
    public static func rows(store: ControllerStore, now: Int64 = FleetkeepClock.now()) throws -> [FleetReportRow] {
        let interval = Int64(try store.heartbeatInterval())
        let licensing = try AgentListing.licensing(store: store)
        return try store.agents().map { agent in
            let facts = agent.facts
            let age = agent.lastSeen.map { now - $0 }
            let status = agent.removed ? "removed" : (age.map { $0 <= 3 * interval } == true ? "online" : "stale")
            let panel = facts["panel"] ?? "unknown"
            var row = FleetReportRow(
                agentID: agent.agentID, host: agent.hostname,
                os: [facts["osName"], facts["osVersion"]].compactMap { $0 }.joined(separator: " "),
                kernel: facts["kernelRelease"] ?? "unknown",
                panel: panel == "none" ? "none" : "\(panel) \(facts["panelVersion"] ?? "")".trimmingCharacters(in: .whitespaces),
                lastSeen: agent.lastSeen.map { ISO8601DateFormatter().string(from: Date(timeIntervalSince1970: TimeInterval($0))) } ?? "never",
                secondsSinceSeen: age, status: status)
            row.licence = licensing.seats[agent.agentID]
            row.clone = licensing.cloned.contains(agent.agentID)
            return row
        }
    }

    /// A plain-text table for the terminal.
    public static func table(_ rows: [FleetReportRow]) -> String {
        let header = ["HOST", "OS", "KERNEL", "PANEL", "LAST SEEN", "STATUS", "LICENCE", "AGENT"]
        let lines = rows.map { [$0.host, $0.os, $0.kernel, $0.panel, $0.lastSeen, $0.status + ($0.clone ? " CLONE" : ""), $0.licence ?? "-", $0.agentID] }
        let widths = header.indices.map { column in ([header] + lines).map { $0[column].count }.max() ?? 0 }
        func render(_ cells: [String]) -> String {
            cells.enumerated().map { $1.padding(toLength: widths[$0], withPad: " ", startingAt: 0) }.joined(separator: "  ")
                .trimmingCharacters(in: .whitespaces)
        }
        let summary = "\(rows.count) agents: \(rows.filter { $0.status == "online" }.count) online, \(rows.filter { $0.status == "stale" }.count) stale"
        return ([render(header)] + lines.map(render) + [summary]).joined(separator: "\n")
    }
}
