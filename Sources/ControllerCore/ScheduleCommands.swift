import FleetkeepProtocol
import CommandLineSupport
import Foundation
import Scheduling

/// `fleetkeep-controller schedule ...` and `group ...`.
public enum ScheduleCommands {
    public static let usage = """
      schedule show --agent ID [--count N] [--json]      the agent's next runs and its effective policy
      schedule set (--agent ID | --group NAME | --default) [--backup T] [--offsite-push T] [--offsite-day DAY]
                   [--verify T] [--prune T] [--restore-drill T] [--time-zone ZONE]
                   [--keep-files N] [--keep-databases N] [--keep-email N] [--keep-offsite N] [--json]
                   T is `daily 01:00-05:00`, `weekly sun 05:00-07:00`, `monthly 1 07:00-08:00`, `cron M H DOM MON DOW` or `off`
      schedule reset (--agent ID | --group NAME | --default)   drop that override
      group create NAME | delete NAME | add NAME AGENT_ID... | remove NAME AGENT_ID | list [--json]
    """

    static let timingOptions = ScheduledTask.allCases.map(\.rawValue)

    public static func schedule(_ raw: [String]) throws -> Int32 {
        let arguments = try Arguments(raw, options: Set(["data", "agent", "group", "count", "offsite-day", "time-zone",
                                                         "keep-files", "keep-databases", "keep-email", "keep-offsite"] + timingOptions),
                                      flags: ["json", "default"])
        let (store, _) = try ControllerSetup.open(paths: ControllerCommands.paths(arguments))
        let service = ScheduleService(store: try SQLiteScheduleStore(database: store.database))
        let now = FleetkeepClock.now()
        switch arguments.positionals.first {
        case "show":
            try arguments.expectPositionals(atMost: 1)
            guard let agentID = arguments.value("agent") else { throw UsageError("schedule show needs --agent ID (see `fleetkeep-controller agents`)") }
            try requireAgent(agentID, store: store)
            let count = try number(arguments.value("count") ?? "10", option: "count", range: 1...1000)
            let (policy, zone, runs) = try service.upcoming(agentID: agentID, after: Date(timeIntervalSince1970: TimeInterval(now)), count: count)
            let view = ScheduleView(agentID: agentID, timeZone: zone, group: try service.store.group(of: agentID), policy: policy,
                                    runs: runs.map { RunView($0, zone: zone) })
            if arguments.flag("json") { print(try ControllerCommands.jsonText(view)) } else { print(view.text) }
            return 0
        case "set":
            try arguments.expectPositionals(atMost: 1)
            let scope = try scope(arguments)
            if case .agent(let id) = scope { try requireAgent(id, store: store) }
            if case .group(let name) = scope, try !service.store.groups().contains(where: { $0.name == name }) {
                throw UsageError("no group '\(name)'; create it with `fleetkeep-controller group create \(name)`")
            }
            var change = PolicyOverride()
            var timings: [String: Timing] = [:]
            for task in ScheduledTask.allCases {
                if let text = arguments.value(task.rawValue) {
                    do { timings[task.rawValue] = try Timing(parsing: text) } catch let error as ScheduleError {
                        throw UsageError("--\(task.rawValue): \(error.message)")
                    }
                }
            }
            if let day = arguments.value("offsite-day") {
                guard let weekday = Timing.weekday(day) else { throw UsageError("--offsite-day '\(day.prefix(16))' is not a weekday (sun, mon, ... sat)") }
                let current = try timings["offsite-push"] ?? policy(at: scope, service: service).timing(.offsitePush)
                guard case .weekly(_, let window) = current else {
                    throw UsageError("--offsite-day needs a weekly off-site timing; the current one is `\(current)` (set --offsite-push 'weekly DAY HH:MM-HH:MM')")
                }
                timings["offsite-push"] = .weekly(weekday: weekday, window)
            }
            if !timings.isEmpty { change.timings = timings }
            if let zone = arguments.value("time-zone") {
                guard ScheduleService.validTimeZone(zone) else { throw UsageError("--time-zone '\(zone.prefix(64))' is not a known time zone (e.g. Europe/Berlin, UTC)") }
                change.timeZone = zone
            }
            change.filesDays = try arguments.value("keep-files").map { try number($0, option: "keep-files", range: 0...3660) }
            change.databasesDays = try arguments.value("keep-databases").map { try number($0, option: "keep-databases", range: 0...3660) }
            change.emailDays = try arguments.value("keep-email").map { try number($0, option: "keep-email", range: 0...3660) }
            change.offsiteWeeks = try arguments.value("keep-offsite").map { try number($0, option: "keep-offsite", range: 0...520) }
            guard change != PolicyOverride() else { throw UsageError("schedule set needs at least one change (see `fleetkeep-controller --help`)") }
            let stored = try service.update(scope, with: change, now: now)
            if arguments.flag("json") { print(try ControllerCommands.jsonText(stored)) } else { print("schedule of \(scope) updated") }
            return 0
        case "reset":
            try arguments.expectPositionals(atMost: 1)
            let scope = try scope(arguments)
            let removed = try service.store.removePolicyOverride(scope)
            print(removed ? "schedule override of \(scope) removed" : "\(scope) had no override")
            return 0
        default:
            throw UsageError("expected `schedule show|set|reset`")
        }
    }

    public static func group(_ raw: [String]) throws -> Int32 {
        let arguments = try Arguments(raw, options: ["data"], flags: ["json"])
        let (store, _) = try ControllerSetup.open(paths: ControllerCommands.paths(arguments))
        let schedules = try SQLiteScheduleStore(database: store.database)
        let now = FleetkeepClock.now()
        switch arguments.positionals.first {
        case "create":
            let name = try groupName(arguments.positional(1, "group NAME"))
            try arguments.expectPositionals(atMost: 2)
            guard try schedules.createGroup(name, now: now) else { throw ControllerError("group \(name) already exists") }
            print("group \(name) created")
        case "delete":
            let name = try groupName(arguments.positional(1, "group NAME"))
            try arguments.expectPositionals(atMost: 2)
            guard try schedules.deleteGroup(name) else { throw ControllerError("no group \(name); see `fleetkeep-controller group list`") }
            print("group \(name) deleted; its agents follow the default policy")
        case "add":
            let name = try groupName(arguments.positional(1, "group NAME"))
            let agents = Array(arguments.positionals.dropFirst(2))
            guard !agents.isEmpty else { throw UsageError("missing AGENT_ID (one or more)") }
            for agentID in agents {
                try requireAgent(agentID, store: store)
                guard try schedules.addMember(agentID, to: name) else { throw ControllerError("no group \(name); create it with `fleetkeep-controller group create \(name)`") }
            }
            print("\(agents.count) agents in group \(name)")
        case "remove":
            let name = try groupName(arguments.positional(1, "group NAME"))
            let agentID = try arguments.positional(2, "AGENT_ID")
            try arguments.expectPositionals(atMost: 3)
            guard try schedules.removeMember(agentID, from: name) else { throw ControllerError("agent \(agentID) is not in group \(name)") }
            print("agent \(agentID) left group \(name)")
        case "list", nil:
            let groups = try schedules.groups()
            if arguments.flag("json") { print(try ControllerCommands.jsonText(groups)) } else {
                for group in groups { print("\(group.name)  \(group.members.count) agents\(group.policy == nil ? "" : "  (own schedule)")") }
                print("\(groups.count) groups")
            }
        default:
            throw UsageError("expected `group create|delete|add|remove|list`")
        }
        return 0
    }

    static func scope(_ arguments: Arguments) throws -> PolicyScope {
        let chosen = [arguments.value("agent").map(PolicyScope.agent), try arguments.value("group").map { .group(try groupName($0)) },
                      arguments.flag("default") ? .fleet : nil].compactMap { $0 }
        guard chosen.count == 1, let scope = chosen.first else { throw UsageError("name exactly one of --agent ID, --group NAME or --default") }
        return scope
    }

    static func policy(at scope: PolicyScope, service: ScheduleService) throws -> SchedulePolicy {
        switch scope {
        case .agent(let id): return try service.effectivePolicy(agentID: id)
        case .group(let name): return SchedulePolicy.hosting.applying(try service.store.policyOverride(.fleet)).applying(try service.store.policyOverride(.group(name)))
        case .fleet: return SchedulePolicy.hosting.applying(try service.store.policyOverride(.fleet))
        }
    }

    static func groupName(_ text: String) throws -> String {
        guard (1...64).contains(text.utf8.count), text.allSatisfy({ $0.isASCII && ($0.isLetter || $0.isNumber || "-_.".contains($0)) }) else {
            throw UsageError("group name '\(text.prefix(64))' must be 1 to 64 letters, digits, '-', '_' or '.'")
        }
        return text
    }

    static func number(_ text: String, option: String, range: ClosedRange<Int>) throws -> Int {
        guard text.utf8.count <= 12, let value = Int(text), range.contains(value) else {
            throw UsageError("--\(option) '\(text.prefix(32))' must be a whole number from \(range.lowerBound) to \(range.upperBound)")
        }
        return value
    }

    static func requireAgent(_ agentID: String, store: ControllerStore) throws {
        guard try store.activeKey(agentID: agentID) != nil else {
            throw ControllerError("no active agent \(agentID.prefix(80)); see `fleetkeep-controller agents`")
        }
    }
}

/// One run as shown by `schedule show`.
struct RunView: Encodable {
    let task: String
    let kind: String
    let at: String
    let local: String
    let unix: Int64

    init(_ occurrence: Occurrence, zone: String) {
        task = occurrence.task.rawValue
        kind = occurrence.task.jobKind.rawValue
        at = ISO8601DateFormatter().string(from: occurrence.at)
        let formatter = ISO8601DateFormatter()
        // A zone stored before names were checked may still be out of range: UTC then, not a trap.
        formatter.timeZone = ZoneName.zoneOrUTC(zone)
        local = formatter.string(from: occurrence.at)
        unix = Int64(occurrence.at.timeIntervalSince1970)
    }
}

struct ScheduleView: Encodable {
    let agentID: String
    let timeZone: String
    let group: String?
    let policy: SchedulePolicy
    let runs: [RunView]

    var text: String {
        var lines = ["agent \(agentID)\(group.map { " (group \($0))" } ?? ""), time zone \(timeZone)"]
        for task in ScheduledTask.allCases { lines.append("  \(task.rawValue.padding(toLength: 14, withPad: " ", startingAt: 0)) \(policy.timing(task))") }
        let keep = policy.retention
        lines.append("  retention      files \(keep.filesDays)d, databases \(keep.databasesDays)d, email \(keep.emailDays)d, off-site \(keep.offsiteWeeks)w")
        lines.append("next runs:")
        for run in runs { lines.append("  \(run.local)  \(run.task)") }
        return lines.joined(separator: "\n")
    }
}
