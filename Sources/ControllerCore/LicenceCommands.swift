import CommandLineSupport
import Crypto
import FleetkeepProtocol
import Foundation

/// `fleetkeep-controller licence …`: the operator's verbs. Every verb takes `--json`.
public enum LicenceCommands {
    public static let usage = """
      licence issue --customer NAME --email EMAIL --tier TIER --max-servers N [--expires YYYY-MM-DD]   prints the key
      licence list | show ID|KEY | suspend ID | resume ID | revoke ID
      licence deactivate-server ID --agent AGENT_ID     free a seat (also the decision on a cloned agent)
      licence tiers [set NAME --features offsite,max-accounts:100 [--description TEXT]]
      licence policy [--move-limit 3] [--move-window 30d] [--lease-duration 30d] [--lease-grace 7d]
                     [--validate-rate 5] [--validate-burst 20] [--key-rate 2] [--key-burst 10]
      licence signing-key                               the Ed25519 key that signs leases and validation answers
    """

    public static func run(_ raw: [String]) throws -> Int32 {
        let arguments = try Arguments(raw, options: ["data", "customer", "email", "tier", "max-servers", "expires", "agent", "features",
                                                     "description", "move-limit", "move-window", "lease-duration", "lease-grace",
                                                     "validate-rate", "validate-burst", "key-rate", "key-burst", "reason"], flags: ["json"])
        let (store, _) = try ControllerSetup.open(paths: ControllerCommands.paths(arguments))
        let paths = ControllerCommands.paths(arguments)
        let service = LicenceService(store: SQLiteLicenceStore(database: store.database, keys: store.keys), signingKey: try ControllerSetup.signingKey(paths: paths))
        // Customer names and emails are personal data: `list` and `show` are recorded in the audit log first.
        let privacy = PrivacyService(controllerStore: store)
        let access = Access.currentOperator(reason: arguments.value("reason"))
        let json = arguments.flag("json")
        do {
            switch arguments.positionals.first {
            case "issue": return try issue(service, arguments, json: json)
            case "list":
                try arguments.expectPositionals(atMost: 1)
                try privacy.audit(access, action: "licence list", subject: "all customers")
                let rows = try service.list()
                if json { print(try ControllerCommands.jsonText(rows)) } else {
                    for row in rows {
                        print("\(row.id)  \(row.status)  \(row.tier)  servers \(row.servers.used)/\(row.servers.max)  expires \(row.expiresAt.map(UTCText.format) ?? "never")  \(row.customer)")
                    }
                    print("\(rows.count) licences")
                }
                return 0
            case "show":
                try arguments.expectPositionals(atMost: 2)
                let licence = try service.find(try arguments.positional(1, "licence ID or KEY"))
                try privacy.audit(access, action: "licence show", subject: "customer \(licence.customerID)")
                let detail = try service.detail(licence)
                if json { print(try ControllerCommands.jsonText(detail)) } else { printDetail(detail) }
                return 0
            case "suspend", "resume", "revoke":
                try arguments.expectPositionals(atMost: 2)
                let verb = arguments.positionals[0]
                let state: LicenceState = verb == "suspend" ? .suspended : verb == "resume" ? .active : .revoked
                let licence = try service.change(try arguments.positional(1, "licence ID"), to: state)
                if json { print(try ControllerCommands.jsonText(["id": licence.id, "state": licence.state.rawValue])) } else {
                    print("licence \(licence.id) is now \(licence.state.rawValue); online agents learn it at their next heartbeat")
                }
                return 0
            case "deactivate-server":
                try arguments.expectPositionals(atMost: 2)
                let id = try arguments.positional(1, "licence ID")
                guard let agent = arguments.value("agent") else { throw UsageError("--agent AGENT_ID is required (see `licence show \(id)`)") }
                try service.deactivateServer(id, agentID: agent)
                if json { print(try ControllerCommands.jsonText(["licence": id, "agent": agent, "seat": "freed"])) } else {
                    print("agent \(agent) no longer holds a seat on licence \(id)")
                }
                return 0
            case "tiers": return try tiers(service, arguments, json: json)
            case "policy": return try policy(service, arguments, json: json)
            case "signing-key":
                if json { print(try ControllerCommands.jsonText(SigningKeyResponse(signingKey: service.signingPublicKey))) } else {
                    print(service.signingPublicKey)
                }
                return 0
            default:
                throw UsageError("expected one of:\n\(usage)")
            }
        } catch let error as LicenceError {
            // Bad input is a usage mistake (exit 2); a refusal (not found, wrong state) is exit 1.
            if error.httpStatus == 400 { throw UsageError(error.description) }
            throw ControllerError(error.description)
        }
    }

    static func issue(_ service: LicenceService, _ arguments: Arguments, json: Bool) throws -> Int32 {
        try arguments.expectPositionals(atMost: 1)
        guard let name = arguments.value("customer"), let email = arguments.value("email"), let tier = arguments.value("tier"),
              let maxText = arguments.value("max-servers") else {
            throw UsageError("licence issue needs --customer NAME --email EMAIL --tier TIER --max-servers N")
        }
        guard let maxServers = Int(maxText) else { throw UsageError("--max-servers '\(maxText)' must be a whole number from 1 to 100000") }
        let expires = try arguments.value("expires").map(parseExpiry)
        let (licence, key) = try service.issue(customer: Customer(name: name, email: email), tier: tier, maxServers: maxServers, expiresAt: expires)
        if json {
            struct Issued: Encodable { let id: String; let key: String; let tier: String; let maxServers: Int; let expiresAt: Int64? }
            print(try ControllerCommands.jsonText(Issued(id: licence.id, key: key.text, tier: licence.tier, maxServers: licence.maxServers, expiresAt: licence.expiresAt)))
        } else {
            print(key.text)
            Console.error("licence \(licence.id) issued (tier \(tier), \(maxServers) servers). The key above is shown once: the controller keeps only a hash of it.")
        }
        return 0
    }

    /// `YYYY-MM-DD` (UTC): the licence is valid through the end of that day.
    static func parseExpiry(_ text: String) throws -> Int64 {
        let formatter = ISO8601DateFormatter()
        formatter.formatOptions = [.withFullDate]
        guard text.utf8.count == 10, let date = formatter.date(from: text) else {
            throw UsageError("--expires '\(text)' must be a date YYYY-MM-DD (the licence is valid through the end of that day, UTC)")
        }
        let start = date.timeIntervalSince1970
        guard start.isFinite, abs(start) < 1e11 else { throw UsageError("--expires '\(text)' is out of range") }
        return Int64(start) + 86400
    }

    static func tiers(_ service: LicenceService, _ arguments: Arguments, json: Bool) throws -> Int32 {
        if arguments.positionals.count > 1 {
            guard arguments.positionals[1] == "set" else { throw UsageError("expected `licence tiers` or `licence tiers set NAME --features LIST`") }
            try arguments.expectPositionals(atMost: 3)
            let name = try arguments.positional(2, "tier NAME")
            guard arguments.value("features") != nil else { throw UsageError("--features is required, e.g. offsite,max-accounts:100") }
            try service.saveTier(name: name, features: arguments.list("features"), description: arguments.value("description") ?? "")
        }
        let tiers = try service.store.tiers()
        if json { print(try ControllerCommands.jsonText(tiers)) } else {
            for tier in tiers { print("\(tier.name)  \(tier.features.joined(separator: ","))  \(tier.description)") }
        }
        return 0
    }

    static func policy(_ service: LicenceService, _ arguments: Arguments, json: Bool) throws -> Int32 {
        try arguments.expectPositionals(atMost: 1)
        var policy = try service.policy()
        var changed = false
        if let text = arguments.value("move-limit") {
            guard let value = Int(text), (0...10_000).contains(value) else { throw UsageError("--move-limit '\(text)' must be a whole number from 0 to 10000") }
            policy.moveLimit = value
            changed = true
        }
        for (option, path) in [("move-window", \LicencePolicy.moveWindowSeconds), ("lease-duration", \.leaseSeconds), ("lease-grace", \.graceSeconds)] {
            guard let text = arguments.value(option) else { continue }
            policy[keyPath: path] = try Arguments.parseDuration(text, option: option)
            changed = true
        }
        for (option, path) in [("validate-rate", \LicencePolicy.validateRate), ("validate-burst", \.validateBurst),
                               ("key-rate", \.keyRate), ("key-burst", \.keyBurst)] {
            guard let text = arguments.value(option) else { continue }
            guard let value = Double(text), value.isFinite, value > 0, value <= 1_000_000 else {
                throw UsageError("--\(option) '\(text)' must be a number above 0 and at most 1000000")
            }
            policy[keyPath: path] = value
            changed = true
        }
        if changed { try service.setPolicy(policy) }
        if json { print(try ControllerCommands.jsonText(policy)) } else {
            print("moves: at most \(policy.moveLimit) per \(policy.moveWindowSeconds / 86400) days (\(policy.moveWindowSeconds) s)")
            print("leases: \(policy.leaseSeconds) s, grace \(policy.graceSeconds) s, renewed after \(policy.renewAfterSeconds) s")
            print("validation API: \(policy.validateRate)/s per client address (burst \(policy.validateBurst)), \(policy.keyRate)/s per key (burst \(policy.keyBurst))")
            if changed { print("saved; a running server applies lease and move rules at once, rate limits when it next starts") }
        }
        return 0
    }

    static func printDetail(_ detail: LicenceService.Detail) {
        print("licence:   \(detail.id) (\(detail.status); state \(detail.state))")
        print("customer:  \(detail.customer.map { "\($0.name) <\($0.email)>" } ?? "?") (customer \(detail.customerID))")
        print("tier:      \(detail.tier) (\(detail.features.joined(separator: ", ")))")
        print("issued:    \(UTCText.format(detail.issuedAt)); expires \(detail.expiresAt.map(UTCText.format) ?? "never")")
        print("servers:   \(detail.servers.count) of \(detail.maxServers)")
        for seat in detail.servers {
            print("  \(seat.agentID)  machine \(seat.machineHash.prefix(12))…  since \(UTCText.format(seat.activatedAt))  lease \(seat.leaseSerial.map(String.init) ?? "-") until \(seat.leaseExpiresAt.map(UTCText.format) ?? "-")")
        }
        print("history:")
        for event in detail.history {
            print("  \(UTCText.format(event.at))  \(event.kind)\(event.agentID.map { "  \($0)" } ?? "")  \(event.detail)")
        }
    }
}
