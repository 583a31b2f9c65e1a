import CommandLineSupport
import Crypto
import FleetkeepProtocol
import Foundation

/// `fleetkeep-agent licence activate KEY | status [--json] | install FILE`.
public enum AgentLicenceCommands {
    public static func run(_ raw: [String]) throws -> Int32 {
        let arguments = try Arguments(raw, options: ["state", "root"], flags: ["json"])
        let licence = AgentLicence(state: AgentCommands.state(arguments), root: arguments.value("root") ?? "/")
        switch arguments.positionals.first {
        case "activate":
            try arguments.expectPositionals(atMost: 2)
            return try activate(licence, keyText: try arguments.positional(1, "licence KEY (FK-XXXXX-...)"), json: arguments.flag("json"))
        case "status":
            try arguments.expectPositionals(atMost: 1)
            let report = licence.check()
            if arguments.flag("json") { print(String(decoding: try AgentState.encode(report), as: UTF8.self)) } else { printReport(report) }
            return 0
        case "install":
            // A lease file handed over by the operator (air-gapped servers); the same checks as a lease from a heartbeat.
            try arguments.expectPositionals(atMost: 2)
            let path = try arguments.positional(1, "lease FILE")
            guard let data = FileManager.default.contents(atPath: path), let signed = try? JSONDecoder().decode(SignedLease.self, from: data) else {
                throw AgentError("\(path) is not a lease file (JSON {payload, signature})")
            }
            try licence.accept(signed, controllerTime: nil)
            let report = licence.check()
            if arguments.flag("json") { print(String(decoding: try AgentState.encode(report), as: UTF8.self)) } else { printReport(report) }
            return 0
        default:
            throw UsageError("expected `licence activate KEY`, `licence status [--json]` or `licence install FILE`")
        }
    }

    static func activate(_ licence: AgentLicence, keyText: String, json: Bool) throws -> Int32 {
        // Checked here first: a typo is caught before any network call.
        let key: LicenceKey
        do { key = try LicenceKey(text: keyText) } catch { throw UsageError("\(error)") }
        var enrollment = try licence.state.loadEnrollment()
        guard let machine = licence.machineIdentity() else { throw AgentError("this agent is not enrolled; run `fleetkeep-agent enroll TOKEN` first") }
        let connection = try Enrollment.connection(state: licence.state)
        // The server's address goes in full only into the controller's encrypted activation record.
        let address = FactsCollector(root: licence.root).collect().primaryIP
        let answer = try connection.post(APIPath.licenceActivate, ActivationRequest(key: key.text, machine: machine,
                                                                                    address: address == AgentFacts.unknown ? nil : address),
                                         as: ActivationResponse.self)
        if let pinned = enrollment.controllerSigningKey {
            guard pinned == answer.controllerSigningKey else {
                throw AgentError("the controller's signing key differs from the one pinned at enrollment; refusing its lease (was the controller replaced? enroll again)")
            }
        } else {
            // Enrolled before keys were handed out: pin it now, received over the pinned TLS connection.
            enrollment.controllerSigningKey = answer.controllerSigningKey
            try licence.state.save(enrollment)
        }
        try licence.accept(answer.lease, controllerTime: answer.controllerTime)
        let report = licence.check()
        if json { print(String(decoding: try AgentState.encode(report), as: UTF8.self)) } else {
            print("activated licence \(key.licenceID) on this server")
            printReport(report)
        }
        return report.status == "valid" ? 0 : 1
    }

    static func printReport(_ report: AgentLicence.Report) {
        print("licence:   \(report.status)\(report.licenceID.map { " (\($0), tier \(report.tier ?? "?"))" } ?? "")")
        print("reason:    \(report.reason)")
        print("next step: \(report.nextStep)")
        if !report.features.isEmpty { print("features:  \(report.features.joined(separator: ", "))") }
    }
}
