import CommandLineSupport
import FleetkeepProtocol
import Foundation

/// `fleetkeep-agent telemetry [off|local|on|status|preview]`.
public enum TelemetryCommands {
    public static func run(_ raw: [String]) throws -> Int32 {
        let arguments = try Arguments(raw, options: ["state", "config"], flags: ["json"])
        try arguments.expectPositionals(atMost: 1)
        let telemetry = AgentTelemetry(state: AgentState(directory: arguments.value("state") ?? AgentState.defaultDirectory),
                                       configPath: arguments.value("config"))
        let verb = arguments.positionals.first ?? "status"
        switch verb {
        case "off", "local", "on":
            guard let mode = TelemetryMode(rawValue: verb) else { throw UsageError("expected off, local or on") }
            try telemetry.setMode(mode)
            let decision = telemetry.decision()
            print("telemetry mode set to \(mode.rawValue)\(mode == .off ? "; local counters deleted" : mode == .local ? "; counters stay on this server" : "; counters are uploaded once the customer has consented on the controller")")
            if decision.effective != mode { print("note: the effective mode is \(decision.effective.rawValue) because \(decision.reason)") }
            return 0
        case "status":
            let decision = telemetry.decision()
            let consent = (try? telemetry.state.loadStatus())?.telemetryConsent
            if arguments.flag("json") {
                struct Status: Encodable {
                    let decision: AgentTelemetry.Decision; let consent: Bool?; let local: AgentTelemetry.Counters?; let pending: AgentTelemetry.Counters?
                }
                print(String(decoding: try AgentState.encode(Status(decision: decision, consent: consent, local: telemetry.localCounters(),
                                                                      pending: telemetry.pendingCounters())), as: UTF8.self))
                return 0
            }
            print("mode:      \(decision.effective.rawValue) (chosen \(decision.chosen.rawValue); \(decision.reason))")
            print("consent:   \(consent.map { $0 ? "granted (as of the last heartbeat)" : "not granted (as of the last heartbeat)" } ?? "not known yet")")
            for (title, counters) in [("local", telemetry.localCounters()), ("to upload", telemetry.pendingCounters())] {
                print("\(title):\(String(repeating: " ", count: max(1, 10 - title.count)))\(counters.map { "\($0.counters.count) counters" } ?? "none")")
                for (name, value) in (counters?.counters ?? [:]).sorted(by: { $0.key < $1.key }) { print("  \(name) \(value)") }
            }
            return 0
        case "preview":
            guard let upload = telemetry.nextUpload() else {
                Console.error("nothing would be uploaded: \(telemetry.reasonNotToUpload() ?? "no counters are waiting for upload")")
                return 0
            }
            let bytes = try upload.encoded()
            if arguments.flag("json") {
                // Exactly the request body, byte for byte, with nothing added.
                FileHandle.standardOutput.write(Data(bytes))
            } else {
                print("next upload (POST \(APIPath.telemetry), \(bytes.count) bytes), after the next heartbeat:")
                for (name, value) in upload.counters.sorted(by: { $0.key < $1.key }) { print("  \(name) \(value)") }
                print(String(decoding: bytes, as: UTF8.self))
            }
            return 0
        default:
            throw UsageError("expected `telemetry off|local|on|status` or `telemetry preview [--json]`")
        }
    }
}
