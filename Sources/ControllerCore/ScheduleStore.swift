import Foundation
import Scheduling
import SQLite

/// Where a policy override applies: the controller's default, a group of agents, or one agent.
public enum PolicyScope: Sendable, Equatable, CustomStringConvertible {
    case fleet
    case group(String)
    case agent(String)

    var key: String {
        switch self {
        case .fleet: "default"
        case .group(let name): "group:" + name
        case .agent(let id): "agent:" + id
        }
    }

    public var description: String {
        switch self {
        case .fleet: "the default policy"
        case .group(let name): "group \(name)"
        case .agent(let id): "agent \(id)"
        }
    }
}

/// A named group of agents; an agent belongs to at most one group.
public struct AgentGroup: Sendable, Codable, Equatable {
    public let name: String
    public let members: [String]
    public let policy: PolicyOverride?
}

/// Storage for schedule policies, groups and agents' time zones. SQLite today; another database can implement it.
public protocol ScheduleStore: Sendable {
    func policyOverride(_ scope: PolicyScope) throws -> PolicyOverride?
    /// Every agent's own override, by agent id: one read for a pass over the whole fleet.
    func agentPolicyOverrides() throws -> [String: PolicyOverride]
    func setPolicyOverride(_ policy: PolicyOverride, for scope: PolicyScope, now: Int64) throws
    func removePolicyOverride(_ scope: PolicyScope) throws -> Bool
    func createGroup(_ name: String, now: Int64) throws -> Bool
    func deleteGroup(_ name: String) throws -> Bool
    /// Moves the agent into `group` (out of any other); false when the group does not exist.
    func addMember(_ agentID: String, to group: String) throws -> Bool
    func removeMember(_ agentID: String, from group: String) throws -> Bool
    func group(of agentID: String) throws -> String?
    func groups() throws -> [AgentGroup]
    func timeZone(of agentID: String) throws -> String?
    /// Every reported time zone, by agent id.
    func timeZones() throws -> [String: String]
    func setTimeZone(_ zone: String, of agentID: String, now: Int64) throws
}

/// `ScheduleStore` in the controller's SQLite database (migrations from 200).
public final class SQLiteScheduleStore: ScheduleStore {
    let database: Database

    static let migrations = [
        Migration(version: 200, sql: """
            CREATE TABLE schedule_policies (scope TEXT PRIMARY KEY, policy TEXT NOT NULL, updated_at INTEGER NOT NULL);
            CREATE TABLE agent_groups (name TEXT PRIMARY KEY, created_at INTEGER NOT NULL);
            CREATE TABLE agent_group_members (agent_id TEXT PRIMARY KEY,
                                              group_name TEXT NOT NULL REFERENCES agent_groups(name) ON DELETE CASCADE);
            CREATE TABLE agent_time_zones (agent_id TEXT PRIMARY KEY, time_zone TEXT NOT NULL, updated_at INTEGER NOT NULL);
            """),
    ]

    public init(database: Database) throws {
        self.database = database
        try database.migrate(Self.migrations)
    }

    public func policyOverride(_ scope: PolicyScope) throws -> PolicyOverride? {
        guard let text = try database.query("SELECT policy FROM schedule_policies WHERE scope = ?", [.text(scope.key)]).first?.string("policy") else {
            return nil
        }
        return try Self.decodeOverride(text, of: scope)
    }

    public func agentPolicyOverrides() throws -> [String: PolicyOverride] {
        let prefix = PolicyScope.agent("").key
        var overrides: [String: PolicyOverride] = [:]
        // A range on the primary key, not LIKE: '_' in an agent id would be a wildcard.
        for row in try database.query("SELECT scope, policy FROM schedule_policies WHERE scope >= ? AND scope < ?",
                                      [.text(prefix), .text("agent;")]) {
            guard let scope = row.string("scope"), scope.hasPrefix(prefix), let text = row.string("policy") else { continue }
            let agentID = String(scope.dropFirst(prefix.count))
            overrides[agentID] = try Self.decodeOverride(text, of: .agent(agentID))
        }
        return overrides
    }

    private static func decodeOverride(_ text: String, of scope: PolicyScope) throws -> PolicyOverride {
        do {
            return try JSONDecoder().decode(PolicyOverride.self, from: Data(text.utf8))
        } catch {
            throw ControllerError("the stored schedule of \(scope) is damaged (\(error)); set it again with `fleetkeep-controller schedule set`")
        }
    }

    public func setPolicyOverride(_ policy: PolicyOverride, for scope: PolicyScope, now: Int64) throws {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        let text = String(decoding: try encoder.encode(policy), as: UTF8.self)
        try database.run("INSERT INTO schedule_policies (scope, policy, updated_at) VALUES (?, ?, ?) ON CONFLICT(scope) DO UPDATE SET policy = excluded.policy, updated_at = excluded.updated_at",
                         [.text(scope.key), .text(text), .integer(now)])
    }

    public func removePolicyOverride(_ scope: PolicyScope) throws -> Bool {
        try database.run("DELETE FROM schedule_policies WHERE scope = ?", [.text(scope.key)]) == 1
    }

    public func createGroup(_ name: String, now: Int64) throws -> Bool {
        try database.run("INSERT INTO agent_groups (name, created_at) VALUES (?, ?) ON CONFLICT DO NOTHING", [.text(name), .integer(now)]) == 1
    }

    public func deleteGroup(_ name: String) throws -> Bool {
        try database.transaction { db in
            _ = try db.run("DELETE FROM schedule_policies WHERE scope = ?", [.text(PolicyScope.group(name).key)])
            _ = try db.run("DELETE FROM agent_group_members WHERE group_name = ?", [.text(name)])
            return try db.run("DELETE FROM agent_groups WHERE name = ?", [.text(name)]) == 1
        }
    }

    public func addMember(_ agentID: String, to group: String) throws -> Bool {
        try database.transaction { db in
            guard try !db.query("SELECT 1 FROM agent_groups WHERE name = ?", [.text(group)]).isEmpty else { return false }
            try db.run("INSERT INTO agent_group_members (agent_id, group_name) VALUES (?, ?) ON CONFLICT(agent_id) DO UPDATE SET group_name = excluded.group_name",
                       [.text(agentID), .text(group)])
            return true
        }
    }

    public func removeMember(_ agentID: String, from group: String) throws -> Bool {
        try database.run("DELETE FROM agent_group_members WHERE agent_id = ? AND group_name = ?", [.text(agentID), .text(group)]) == 1
    }

    public func group(of agentID: String) throws -> String? {
        try database.query("SELECT group_name FROM agent_group_members WHERE agent_id = ?", [.text(agentID)]).first?.string("group_name")
    }

    public func groups() throws -> [AgentGroup] {
        var members: [String: [String]] = [:]
        for row in try database.query("SELECT agent_id, group_name FROM agent_group_members ORDER BY agent_id") {
            if let agent = row.string("agent_id"), let group = row.string("group_name") { members[group, default: []].append(agent) }
        }
        return try database.query("SELECT name FROM agent_groups ORDER BY name").compactMap { $0.string("name") }.map { name in
            AgentGroup(name: name, members: members[name] ?? [], policy: try policyOverride(.group(name)))
        }
    }

    public func timeZone(of agentID: String) throws -> String? {
        try database.query("SELECT time_zone FROM agent_time_zones WHERE agent_id = ?", [.text(agentID)]).first?.string("time_zone")
    }

    public func timeZones() throws -> [String: String] {
        var zones: [String: String] = [:]
        for row in try database.query("SELECT agent_id, time_zone FROM agent_time_zones") {
            if let agent = row.string("agent_id"), let zone = row.string("time_zone") { zones[agent] = zone }
        }
        return zones
    }

    public func setTimeZone(_ zone: String, of agentID: String, now: Int64) throws {
        try database.run("INSERT INTO agent_time_zones (agent_id, time_zone, updated_at) VALUES (?, ?, ?) ON CONFLICT(agent_id) DO UPDATE SET time_zone = excluded.time_zone, updated_at = excluded.updated_at WHERE time_zone != excluded.time_zone",
                         [.text(agentID), .text(zone), .integer(now)])
    }
}

/// Effective policies from overrides read once (see `ScheduleService.resolver`).
public struct PolicyResolver: Sendable {
    let fleet: SchedulePolicy
    /// The policy of each agent in a group, before the agent's own override.
    let groupPolicies: [String: SchedulePolicy]
    let agentOverrides: [String: PolicyOverride]

    init(fleet: SchedulePolicy, groupPolicies: [String: SchedulePolicy], agentOverrides: [String: PolicyOverride]) {
        self.fleet = fleet
        self.groupPolicies = groupPolicies
        self.agentOverrides = agentOverrides
    }

    public func policy(_ agentID: String) -> SchedulePolicy {
        (groupPolicies[agentID] ?? fleet).applying(agentOverrides[agentID])
    }
}

/// Effective schedules: the default hosting policy, then the controller-wide override, the agent's group's, and the
/// agent's own, in that order.
public struct ScheduleService: Sendable {
    public let store: any ScheduleStore

    public init(store: any ScheduleStore) { self.store = store }

    /// Resolves the policies of many agents with every override read once, for a pass over the whole fleet (four
    /// queries, instead of four per agent).
    public func resolver() throws -> PolicyResolver {
        let fleet = SchedulePolicy.hosting.applying(try store.policyOverride(.fleet))
        var byAgent: [String: SchedulePolicy] = [:]
        for group in try store.groups() {
            let policy = fleet.applying(group.policy)
            for member in group.members { byAgent[member] = policy }
        }
        return PolicyResolver(fleet: fleet, groupPolicies: byAgent, agentOverrides: try store.agentPolicyOverrides())
    }

    public func effectivePolicy(agentID: String) throws -> SchedulePolicy {
        var policy = SchedulePolicy.hosting.applying(try store.policyOverride(.fleet))
        if let group = try store.group(of: agentID) { policy = policy.applying(try store.policyOverride(.group(group))) }
        return policy.applying(try store.policyOverride(.agent(agentID)))
    }

    /// The effective time zone's name: the policy's, else the one the agent reported, else UTC.
    public func timeZoneName(agentID: String, policy: SchedulePolicy) throws -> String {
        policy.calendar(agentTimeZone: try store.timeZone(of: agentID)).timeZone.identifier
    }

    public func upcoming(agentID: String, after: Date, count: Int) throws -> (policy: SchedulePolicy, zone: String, runs: [Occurrence]) {
        let policy = try effectivePolicy(agentID: agentID)
        let zone = try store.timeZone(of: agentID)
        return (policy, try timeZoneName(agentID: agentID, policy: policy),
                policy.upcoming(agentID: agentID, after: after, count: count, agentTimeZone: zone))
    }

    /// Lays `change` over the override already stored for `scope`.
    public func update(_ scope: PolicyScope, with change: PolicyOverride, now: Int64) throws -> PolicyOverride {
        let merged = (try store.policyOverride(scope) ?? PolicyOverride()).merging(change)
        try store.setPolicyOverride(merged, for: scope, now: now)
        return merged
    }

    /// A time zone name from outside (an agent, an operator): known to the system's zone database, short, and
    /// within UTC-12..UTC+14 (`ZoneName`).
    public static func validTimeZone(_ name: String) -> Bool {
        ZoneName.zone(name) != nil
    }
}
