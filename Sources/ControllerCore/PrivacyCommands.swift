import CommandLineSupport
import Foundation

/// `fleetkeep-controller privacy …` and `report aggregate`: the operator's privacy verbs.
public enum PrivacyCommands {
    public static let usage = """
      privacy inventory [--markdown|--json]               every field the controller stores: category, purpose, legal basis, retention
      privacy consent --licence ID [--granted|--withdrawn] [--by NAME] [--json]   record (or show) consent to improvement telemetry
      privacy audit [--since DATE] [--verify] [--json]    reads of personal data; --verify checks the hash chain
      privacy customers [--json]                          customer ids, licences, erased or not (no personal data)
      privacy export --customer ID [--out FILE] [--reason TEXT]   everything held about a customer, as JSON
      privacy rectify --customer ID [--name NAME] [--email EMAIL] [--reason TEXT]
      privacy erase --customer ID [--reason TEXT]         delete the personal data (ledger entry survives restores)
      privacy purge [--dry-run] [--json]                  apply the retention periods now (serve runs it daily)
      privacy retention [--personal 90d] [--telemetry 90d] [--json]
      privacy telemetry [--agent ID] [--totals] [--json]  improvement records as received, or monthly totals
      privacy breach-report --since DATE [--discovered DATE] [--json] [--reason TEXT]   who to notify, by when
      report aggregate [--k 10] [--json]                  servers by OS, kernel, panel, tier, version; small groups suppressed
    """

    static let options: Set<String> = ["data", "licence", "license", "by", "since", "customer", "out", "reason", "name", "email",
                                       "personal", "telemetry", "agent", "discovered"]
    static let flags: Set<String> = ["markdown", "json", "granted", "withdrawn", "verify", "dry-run", "totals"]

    public static func run(_ raw: [String]) throws -> Int32 {
        let arguments = try Arguments(raw, options: options, flags: flags)
        let json = arguments.flag("json")
        let verb = arguments.positionals.first
        if verb == "inventory" {
            try arguments.expectPositionals(atMost: 1)
            if arguments.flag("markdown") { print(PrivacyDocument.markdown(), terminator: "") }
            else if json { print(try ControllerCommands.jsonText(DataInventory.records)) }
            else { print(PrivacyDocument.plain()) }
            return 0
        }
        let (store, _) = try ControllerSetup.open(paths: ControllerCommands.paths(arguments))
        let service = PrivacyService(controllerStore: store)
        let access = Access.currentOperator(reason: arguments.value("reason"))
        do {
            switch verb {
            case "consent": return try consent(service, arguments, json: json)
            case "audit":
                try arguments.expectPositionals(atMost: 1)
                let since = try arguments.value("since").map { Int64(try parseDate($0, option: "since").timeIntervalSince1970) } ?? 0
                let entries = try service.store.auditEntries(since: since)
                var broken: (id: Int64, reason: String)?
                var count = entries.count
                if arguments.flag("verify") { (count, broken) = try service.store.verifyAudit() }
                if json {
                    struct Listing: Encodable { let entries: [AuditEntry]; let verified: Bool?; let brokenAt: Int64?; let problem: String? }
                    print(try ControllerCommands.jsonText(Listing(entries: entries, verified: arguments.flag("verify") ? broken == nil : nil,
                                                                  brokenAt: broken?.id, problem: broken?.reason)))
                } else {
                    for entry in entries {
                        print("\(entry.id)  \(UTCText.format(entry.at))  \(entry.actor)  \(entry.action)  \(entry.subject)  why: \(entry.reason)")
                    }
                    if arguments.flag("verify") {
                        print(broken.map { "audit chain BROKEN at entry \($0.id): \($0.reason)" } ?? "audit chain verified: \(count) entries")
                    }
                }
                return broken == nil ? 0 : 1
            case "customers":
                try arguments.expectPositionals(atMost: 1)
                struct Row: Encodable { let id: Int64; let createdAt: Int64; let erasedAt: Int64?; let licences: [String] }
                let rows = try service.store.customerRecords().map { record in
                    Row(id: record.id, createdAt: record.createdAt, erasedAt: record.erasedAt, licences: try service.store.licences(customerID: record.id).map(\.id))
                }
                if json { print(try ControllerCommands.jsonText(rows)) } else {
                    for row in rows {
                        print("customer \(row.id)  since \(UTCText.format(row.createdAt))  licences \(row.licences.joined(separator: ","))\(row.erasedAt.map { "  erased \(UTCText.format($0))" } ?? "")")
                    }
                }
                return 0
            case "export":
                try arguments.expectPositionals(atMost: 1)
                let export = try service.export(customerID: try customerID(arguments), access: access)
                let text = try ControllerCommands.jsonText(export) + "\n"
                if let out = arguments.value("out") {
                    try writePrivateFile(out, Array(text.utf8))
                    Console.error("wrote \(out) (0600): everything held about customer \(export.customer.id); the export is recorded in the audit log")
                } else {
                    print(text, terminator: "")
                }
                return 0
            case "rectify":
                try arguments.expectPositionals(atMost: 1)
                let id = try customerID(arguments)
                let customer = try service.rectify(customerID: id, name: arguments.value("name"), email: arguments.value("email"), access: access)
                if json { print(try ControllerCommands.jsonText(customer)) } else { print("customer \(id) corrected: \(customer.name) <\(customer.email)>") }
                return 0
            case "erase":
                try arguments.expectPositionals(atMost: 1)
                let id = try customerID(arguments)
                try service.erase(customerID: id, access: access)
                print("customer \(id) erased: personal data deleted, licences revoked, their agents removed; the erasure ledger keeps it erased after a restore")
                return 0
            case "purge":
                try arguments.expectPositionals(atMost: 1)
                let report = try service.purge(dryRun: arguments.flag("dry-run"))
                if json { print(try ControllerCommands.jsonText(report)) } else {
                    let verb = report.dryRun ? "would erase" : "erased"
                    print("\(verb) \(report.customersErased.count) customers\(report.customersErased.isEmpty ? "" : " (" + report.customersErased.map(String.init).joined(separator: ", ") + ")")")
                    print("\(report.dryRun ? "would clear" : "cleared") \(report.agentsCleared.count) removed agents\(report.agentsCleared.isEmpty ? "" : " (" + report.agentsCleared.joined(separator: ", ") + ")")")
                    print("\(report.dryRun ? "would delete" : "deleted") \(report.telemetryRecords) raw telemetry records and \(report.tokens) expired tokens")
                }
                return 0
            case "retention":
                try arguments.expectPositionals(atMost: 1)
                var retention = try service.retention()
                var changed = false
                if let text = arguments.value("personal") { retention.personalSeconds = try Arguments.parseDuration(text, option: "personal"); changed = true }
                if let text = arguments.value("telemetry") { retention.telemetrySeconds = try Arguments.parseDuration(text, option: "telemetry"); changed = true }
                if changed { try service.setRetention(retention) }
                if json { print(try ControllerCommands.jsonText(retention)) } else {
                    print("personal data after the last licence ended, and removed agents' data: \(retention.personalSeconds / 86400) days")
                    print("raw improvement telemetry: \(retention.telemetrySeconds / 86400) days (monthly totals are kept)")
                }
                return 0
            case "telemetry":
                try arguments.expectPositionals(atMost: 1)
                if arguments.flag("totals") {
                    let totals = try service.store.telemetryTotals()
                    if json { print(try ControllerCommands.jsonText(totals)) } else {
                        for total in totals { print("\(total.month)  \(total.counter)  \(total.total)  (\(total.uploads) uploads)") }
                    }
                } else {
                    let records = try service.store.telemetry(agentIDs: arguments.value("agent").map { [$0] })
                    if json { print(try ControllerCommands.jsonText(records)) } else {
                        for record in records { print("\(record.id)  \(UTCText.format(record.receivedAt))  \(record.agentID)  licence \(record.licenceID)  \(record.body)") }
                        print("\(records.count) records")
                    }
                }
                return 0
            case "breach-report":
                try arguments.expectPositionals(atMost: 1)
                guard let sinceText = arguments.value("since") else { throw UsageError("--since DATE is required (when the breach began, e.g. 2026-03-01)") }
                let since = try parseDate(sinceText, option: "since")
                let discovered = try arguments.value("discovered").map { try parseDate($0, option: "discovered") }
                    ?? Date(timeIntervalSince1970: TimeInterval(service.clock()))
                let report = try service.breachReport(since: since, discovered: discovered, access: access)
                print(json ? try ControllerCommands.jsonText(report) : report.table)
                return 0
            default:
                throw UsageError("expected one of:\n\(usage)")
            }
        } catch let error as PrivacyError {
            if error.httpStatus == 400 { throw UsageError(error.description) }
            throw ControllerError(error.description)
        }
    }

    static func consent(_ service: PrivacyService, _ arguments: Arguments, json: Bool) throws -> Int32 {
        try arguments.expectPositionals(atMost: 1)
        guard let licenceID = arguments.value("licence") ?? arguments.value("license") else {
            throw UsageError("--licence ID is required (see `fleetkeep-controller licence list`)")
        }
        let granted = arguments.flag("granted"), withdrawn = arguments.flag("withdrawn")
        guard !(granted && withdrawn) else { throw UsageError("give --granted or --withdrawn, not both") }
        if granted || withdrawn {
            let by = arguments.value("by") ?? Access.currentOperator(reason: nil).actor + " (operator)"
            let record = try service.setConsent(licenceID: licenceID, granted: granted, by: by, source: "privacy consent command")
            if json { print(try ControllerCommands.jsonText(record)) } else {
                print("licence \(licenceID): consent to improvement telemetry \(granted ? "granted" : "withdrawn") by \(record.by ?? "?") at \(UTCText.format(record.at)); agents learn it at their next heartbeat")
            }
            return 0
        }
        let records = try service.store.consents(licenceID: licenceID)
        if json { print(try ControllerCommands.jsonText(records)) } else {
            for record in records {
                print("\(UTCText.format(record.at))  \(record.granted ? "granted" : "withdrawn")  by \(record.by ?? "(erased)")  via \(record.source)")
            }
            print("consent now: \(records.last?.granted == true ? "granted" : "not granted")")
        }
        return 0
    }

    public static func aggregate(_ raw: [String]) throws -> Int32 {
        let arguments = try Arguments(raw, options: ["data", "k"], flags: ["json"])
        try arguments.expectPositionals(atMost: 1)
        let text = arguments.value("k") ?? "10"
        guard let k = Int(text), (2...1_000_000).contains(k) else { throw UsageError("--k '\(text)' must be a whole number from 2 to 1000000") }
        let (store, _) = try ControllerSetup.open(paths: ControllerCommands.paths(arguments))
        let report = try PrivacyService(controllerStore: store).aggregate(k: k)
        print(arguments.flag("json") ? try ControllerCommands.jsonText(report) : report.table)
        return 0
    }

    static func customerID(_ arguments: Arguments) throws -> Int64 {
        guard let text = arguments.value("customer") else { throw UsageError("--customer ID is required (see `fleetkeep-controller privacy customers`)") }
        guard let id = Int64(text), id > 0 else { throw UsageError("--customer '\(text)' must be a customer id (a positive whole number)") }
        return id
    }

    /// `2026-03-01` (midnight UTC) or an ISO 8601 time such as `2026-03-01T14:30:00Z`, parsed by Foundation.
    static func parseDate(_ text: String, option: String) throws -> Date {
        let formatter = ISO8601DateFormatter()
        formatter.formatOptions = [.withInternetDateTime]
        var date = formatter.date(from: text)
        if date == nil && text.utf8.count == 10 {
            formatter.formatOptions = [.withFullDate]
            date = formatter.date(from: text)
        }
        guard let date, date.timeIntervalSince1970.isFinite, (0...253_402_300_799).contains(date.timeIntervalSince1970) else {
            throw UsageError("--\(option) '\(text)' is not a date: use YYYY-MM-DD or an ISO 8601 time like 2026-03-01T14:30:00Z")
        }
        return date
    }
}
