import CommandLineSupport
import FleetkeepProtocol
import Foundation

/// The fleet-side `fleetkeep-agent` subcommands: enroll, facts, run, status.
public enum AgentCommands {
    public static let usage = """
    usage: fleetkeep-agent COMMAND [options]        (every command and subcommand explains itself with --help or -h)

    fleet:
      enroll TOKEN [--state DIR]                 join a controller (state default \(AgentState.defaultDirectory))
      facts [--root DIR] [--json]                 what the agent reports about this server
      run [--state DIR] [--root DIR] [--interval 5m] [--config FILE] [--offline-grace 10m] [--no-jobs]
                                                  the daemon: heartbeats, and the controller's jobs (run as child
                                                  commands); its schedule runs here while the controller is away
      status [--state DIR] [--json]               enrollment, last heartbeat, licence
      licence activate KEY [--state DIR] [--root DIR]   bind this server to a licence; the lease is checked offline
      licence status [--state DIR] [--json]       valid|grace|expired|suspended|revoked|over-limit|invalid|unlicensed|clock-rollback
      licence install FILE                        install a lease file from the operator (same checks)
      escrow [--state DIR] [--key-file FILE]      escrow the repository key, sealed to the operator's recovery key
      telemetry [off|local|on|status] [--state DIR] [--config FILE] [--json]
                                                  improvement telemetry: off, local (default: counters stay here) or on
                                                  (uploaded once the customer consented on the controller); agent.conf
                                                  `telemetry = off` or DO_NOT_TRACK=1 turn it off whatever is chosen
      telemetry preview [--json] [--state DIR] [--config FILE]   the exact bytes of the next upload

    backup (every command takes --config FILE, default /etc/fleetkeep/agent.conf, and --key-file FILE):
      repo init [--repo DIR]
      backup [--root DIR] [--repo DIR] [--account USER]... [--kind files,databases,email]
      snapshots [--json] [--account USER] [--kind KIND]
      restore latest|SNAPSHOT [--account USER] [--kind KIND] [--path P] --target DIR
      restore latest --all --target ROOT [--account USER]... [--kind files,email]   (exit 3: partly restored)
      verify [--read-data | --read-data-part P/N]
      prune [--dry-run]
      repair index                                rebuild the index from the packs' own headers
      repair snapshots [--read-data]              drop lost files from the snapshots (each one named)
      offsite push|snapshots|verify|prune|trust [--target sftp://user@host:port/path] [--host-key SHA256] [--identity KEY]
      offsite restore latest|SNAPSHOT|--all --to DIR [--account U] [--kind K] [--load-databases]
      offsite repair index|snapshots [--read-data]
    """

    static func state(_ arguments: Arguments) -> AgentState {
        AgentState(directory: arguments.value("state") ?? AgentState.defaultDirectory)
    }

    public static func enroll(_ raw: [String]) throws -> Int32 {
        let arguments = try Arguments(raw, options: ["state", "root"])
        let token = try arguments.positional(0, "TOKEN (from `fleetkeep-controller token create`)")
        try arguments.expectPositionals(atMost: 1)
        let facts = FactsCollector(root: arguments.value("root") ?? "/").collect()
        let enrollment = try Enrollment.enroll(tokenText: token, state: state(arguments), facts: facts)
        print("enrolled as \(enrollment.agentID) with \(enrollment.controllerURL)")
        return 0
    }

    public static func facts(_ raw: [String]) throws -> Int32 {
        let arguments = try Arguments(raw, options: ["root"], flags: ["json"])
        try arguments.expectPositionals(atMost: 0)
        let facts = FactsCollector(root: arguments.value("root") ?? "/").collect()
        if arguments.flag("json") {
            print(String(decoding: try AgentState.encode(facts), as: UTF8.self))
        } else {
            for (name, value) in facts.fields.sorted(by: { $0.key < $1.key }) {
                let reason = facts.problems[name].map { "  (\($0))" } ?? ""
                print("\(name): \(value)\(reason)")
            }
        }
        return 0
    }

    public static func run(_ raw: [String]) throws -> Int32 {
        let arguments = try Arguments(raw, options: ["state", "root", "interval", "tier", "config", "offline-grace"], flags: ["no-jobs"])
        try arguments.expectPositionals(atMost: 0)
        SignalWaiter.blockTerminationSignals()
        // Every option is checked before anything starts, so a bad value is a usage error whatever the state.
        let interval = try arguments.value("interval").map { Double(try Arguments.parseDuration($0, option: "interval", maximum: HeartbeatTiming.longestInterval)) }
        let grace = try arguments.value("offline-grace").map { Double(try Arguments.parseDuration($0, option: "offline-grace", maximum: 7 * 86_400)) } ?? 600
        if !arguments.flag("no-jobs") {
            try JobAgent(state: state(arguments), configPath: arguments.value("config"), offlineGrace: grace,
                         log: { print($0); fflush(nil) }).start()
        }
        let daemon = HeartbeatDaemon(state: state(arguments),
                                     collector: FactsCollector(root: arguments.value("root") ?? "/", tier: arguments.value("tier") ?? "standard"),
                                     intervalOverride: interval, configPath: arguments.value("config"))
        try daemon.run()
        return 0
    }

    public static func status(_ raw: [String]) throws -> Int32 {
        let arguments = try Arguments(raw, options: ["state", "root"], flags: ["json"])
        try arguments.expectPositionals(atMost: 0)
        let state = state(arguments)
        let enrollment = try state.loadEnrollment()
        _ = try state.loadKey()
        let status = try state.loadStatus()
        let licence = AgentLicence(state: state, root: arguments.value("root") ?? "/").check()
        if arguments.flag("json") {
            struct Combined: Encodable {
                let enrollment: AgentState.Enrollment; let status: AgentState.Status; let version: String; let licence: AgentLicence.Report
            }
            print(String(decoding: try AgentState.encode(Combined(enrollment: enrollment, status: status, version: FleetkeepVersion.agent, licence: licence)), as: UTF8.self))
            return 0
        }
        let formatter = ISO8601DateFormatter()
        print("agent:          \(enrollment.agentID) (version \(FleetkeepVersion.agent))")
        print("controller:     \(enrollment.controllerURL)")
        print("last heartbeat: \(status.lastSuccessAt.map { formatter.string(from: $0) } ?? "never")")
        if let error = status.lastError { print("last error:     \(error)") }
        print("licence:        \(licence.status)\(licence.licenceID.map { " (\($0), tier \(licence.tier ?? "?"))" } ?? "") (checked offline)")
        print("  reason:       \(licence.reason)")
        print("  next step:    \(licence.nextStep)")
        if let seen = status.licence {
            print("  controller:   \(seen.status)\(seen.reason.map { ": \($0)" } ?? "") (at the last heartbeat)")
        }
        return 0
    }
}
