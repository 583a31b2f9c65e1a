import CommandLineSupport
import Foundation
import FleetkeepProtocol

/// The `fleetkeep-controller` subcommands, kept in the library so tests can call them.
public enum ControllerCommands {
    public static let usage = """
    usage: fleetkeep-controller COMMAND [options]     (every command takes --data DIR, default \(ControllerPaths.defaultDirectory),
                                                      and explains itself with --help or -h)

      init   [--heartbeat-interval 5m]                 create database, signing key and TLS certificate; print the fingerprint
      serve  [--listen HOST:PORT] [--url URL]          serve the agent API over HTTPS (default listen 0.0.0.0:8443)
             [--heartbeat-interval 5m] [--threads N]   --plain-http: plain HTTP, loopback addresses only (tests, a local
             [--plain-http]                            TLS-terminating proxy)
      token create [--expires 24h] [--url URL] [--count N]   print single-use enrollment token(s)
      agents [--json]                                  list enrolled agents
      agents remove AGENT_ID                           revoke an agent: its requests are refused from then on
      report [--json]                                  the fleet: host, OS, kernel, panel, last seen, online/stale; per agent the
                                                       last backup of each kind with its age, overdue ones, off-site push,
                                                       last verified, recent failures, firing alerts
      recovery-key create --out FILE                   make the operator's recovery key pair (keep FILE offline)
      recovery-key set PUBLIC_KEY                      agents escrow their repository keys to this public key
      escrow open AGENT_ID --recovery-key FILE --out FILE   recover a dead server's repository key file
    \(LicenceCommands.usage)
    """ + "\n" + ScheduleCommands.usage + "\n" + JobCommands.usage + "\n" + PrivacyCommands.usage + "\n" + AlertCommands.usage + "\n" + OperatorCommands.usage

    public static func paths(_ arguments: Arguments) -> ControllerPaths {
        ControllerPaths(directory: arguments.value("data") ?? ControllerPaths.defaultDirectory)
    }

    public static func initialize(_ raw: [String]) throws -> Int32 {
        let arguments = try Arguments(raw, options: ["data", "heartbeat-interval"])
        try arguments.expectPositionals(atMost: 0)
        let interval = try arguments.value("heartbeat-interval").map(heartbeatInterval) ?? 300
        let pin = try ControllerSetup.initialize(paths: paths(arguments), heartbeatInterval: Int(interval))
        print("controller initialized in \(paths(arguments).directory)")
        print("certificate fingerprint (sha256 of public key): \(pin)")
        return 0
    }

    /// `--heartbeat-interval`, within the range agents accept (`HeartbeatTiming`).
    static func heartbeatInterval(_ text: String) throws -> Int64 {
        let seconds = try Arguments.parseDuration(text, option: "heartbeat-interval", maximum: HeartbeatTiming.longestInterval)
        guard seconds >= HeartbeatTiming.shortestInterval else {
            throw UsageError("--heartbeat-interval '\(text)' is shorter than \(HeartbeatTiming.shortestInterval)s, the shortest agents accept")
        }
        return seconds
    }

    public static func serve(_ raw: [String]) throws -> Int32 {
        let arguments = try Arguments(raw, options: ["data", "listen", "url", "heartbeat-interval", "threads"], flags: ["plain-http"])
        try arguments.expectPositionals(atMost: 0)
        let listen = arguments.value("listen") ?? "0.0.0.0:8443"
        guard let colon = listen.lastIndex(of: ":"), let port = UInt16(listen[listen.index(after: colon)...]) else {
            throw UsageError("--listen '\(listen)' must be HOST:PORT, e.g. 0.0.0.0:8443")
        }
        let host = String(listen[..<colon]).trimmingCharacters(in: CharacterSet(charactersIn: "[]"))
        // One MHD thread per core measured best (5,000 vs 4,500 heartbeats/s with 8 threads on 2 cores).
        let cores = ProcessInfo.processInfo.activeProcessorCount
        guard let threads = Int(arguments.value("threads") ?? String(cores)), (1...256).contains(threads) else {
            throw UsageError("--threads must be a number from 1 to 256")
        }
        let plainHTTP = arguments.flag("plain-http")
        if plainHTTP && !ControllerSetup.isLoopback(host) {
            throw UsageError("--plain-http is only allowed with a loopback --listen address (127.0.0.1, [::1], localhost), not '\(host)'")
        }
        let (store, _) = try ControllerSetup.open(paths: paths(arguments))
        // Block SIGINT/SIGTERM before the server's threads exist, so they inherit the mask and the signal reaches sigwait.
        SignalWaiter.blockTerminationSignals()
        if let text = arguments.value("heartbeat-interval") {
            try store.setSetting("heartbeat_interval", String(try heartbeatInterval(text)))
        }
        let (server, service) = try ControllerSetup.serve(paths: paths(arguments), host: host, port: port, threads: threads,
                                                           plainHTTP: plainHTTP, log: { print($0); fflush(nil) })
        let advertised = arguments.value("url") ?? "\(plainHTTP ? "http" : "https")://\(host == "0.0.0.0" || host == "::" ? ProcessInfo.processInfo.hostName : host):\(server.port)"
        try store.setSetting("url", advertised)
        print("fleetkeep-controller listening on \(host):\(server.port) (agents use \(advertised))")
        fflush(nil)
        SignalWaiter.waitForTermination()
        server.shutdown()
        try service.flushHeartbeats()
        print("fleetkeep-controller stopped")
        return 0
    }

    public static func token(_ raw: [String]) throws -> Int32 {
        let arguments = try Arguments(raw, options: ["data", "expires", "url", "count"])
        guard arguments.positionals == ["create"] else { throw UsageError("expected `token create`") }
        let expires = try Arguments.parseDuration(arguments.value("expires") ?? "24h", option: "expires")
        guard let count = Int(arguments.value("count") ?? "1"), (1...100_000).contains(count) else {
            throw UsageError("--count must be a number from 1 to 100000")
        }
        let (store, pin) = try ControllerSetup.open(paths: paths(arguments))
        guard let url = try arguments.value("url") ?? store.setting("url") else {
            throw ControllerError("no controller URL known yet: start `fleetkeep-controller serve` once, or pass --url https://HOST:PORT")
        }
        for _ in 0..<count {
            let (id, secret) = try store.createToken(expiresIn: expires)
            print(EnrollmentToken(controllerURL: url, certificatePin: pin, id: id, secret: secret).text)
        }
        return 0
    }

    public static func agents(_ raw: [String]) throws -> Int32 {
        let arguments = try Arguments(raw, options: ["data", "reason"], flags: ["json"])
        let (store, pin) = try ControllerSetup.open(paths: paths(arguments))
        if arguments.positionals.first == "remove" {
            let agentID = try arguments.positional(1, "AGENT_ID")
            let service = ControllerService(store: store, certificatePin: pin, signingKey: try ControllerSetup.signingKey(paths: paths(arguments)))
            guard try service.removeAgent(agentID) else { throw ControllerError("no active agent \(agentID); see `fleetkeep-controller agents`") }
            print("agent \(agentID) removed")
            return 0
        }
        try arguments.expectPositionals(atMost: 0)
        // Host names are personal data: the listing is recorded in the audit log before it is read.
        try PrivacyService(controllerStore: store).audit(Access.currentOperator(reason: arguments.value("reason")), action: "agents", subject: "all agents")
        let agents = try AgentListing.all(store: store)
        if arguments.flag("json") {
            print(try jsonText(agents))
        } else {
            for agent in agents {
                print("\(agent.agentID)  \(agent.hostname)  enrolled \(agent.enrolledAt)\(agent.removed ? "  removed" : "")\(agent.licence.map { "  licence \($0)" } ?? "")\(agent.clone ? "  CLONE: this agent key was seen on \(agent.machines) machines; decide with `agents remove` or `licence deactivate-server`" : "")")
            }
            print("\(agents.count) agents")
        }
        return 0
    }

    public static func report(_ raw: [String]) throws -> Int32 {
        if raw.first == "aggregate" { return try PrivacyCommands.aggregate(raw) }
        let arguments = try Arguments(raw, options: ["data", "reason"], flags: ["json"])
        try arguments.expectPositionals(atMost: 0)
        let (store, _) = try ControllerSetup.open(paths: paths(arguments))
        try PrivacyService(controllerStore: store).audit(Access.currentOperator(reason: arguments.value("reason")), action: "report", subject: "all agents")
        let now = FleetkeepClock.now()
        let alerts = try AlertService.open(store: store, startedAt: now, controllerName: try ControllerSetup.name(store: store))
        let rows = try BackupReport.add(to: try FleetReport.rows(store: store, now: now), service: alerts, now: now)
        print(arguments.flag("json") ? try jsonText(rows) : FleetReport.table(rows) + "\n" + BackupReport.text(rows))
        return 0
    }

    static func jsonText<T: Encodable>(_ value: T) throws -> String {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
        return String(decoding: try encoder.encode(value), as: UTF8.self)
    }
}
