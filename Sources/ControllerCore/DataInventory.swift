import FleetkeepProtocol
import Foundation
import Scheduling

/// Why a field is held, in the three categories of the privacy rules.
public enum DataCategory: String, Codable, Sendable, CaseIterable {
    /// Needed to validate licences and run the fleet; collected without consent (legitimate interests or contract).
    case essential
    /// Product-improvement telemetry: collected only from agents whose customer consented.
    case improvement
    /// Identifies a person or a customer: stored encrypted (or cut down, for addresses), every read is audited.
    case personal
}

/// The form a value must have to be stored. Ingestion checks every value an agent sends against its field's shape.
public enum ValueShape: Sendable, Equatable {
    /// Printable UTF-8 without control characters, at most this many bytes.
    case text(maxBytes: Int)
    /// A host name: 1 to 253 letters, digits, `.`, `-`, `_`.
    case hostname
    /// An IPv4 or IPv6 address (parsed by `inet_pton`).
    case ipAddress
    /// Lowercase letters, digits, `-`, `_`, `.`, at most 64 bytes (a distribution id, a panel, a tier).
    case identifier
    /// A whole number from 0 to the maximum.
    case counter(max: Int64)
    /// Unix seconds.
    case unixTime
    /// Stored, never sent by agents: encrypted bytes, hashes, ids, JSON the controller writes itself.
    case internalValue(String)

    /// Facts an agent could not read arrive as "unknown"; every agent-sent text shape accepts it.
    static let unknown = "unknown"

    public var description: String {
        switch self {
        case .text(let maxBytes): return "printable text, at most \(maxBytes) bytes"
        case .hostname: return "host name (letters, digits, . - _; 1 to 253)"
        case .ipAddress: return "IPv4 or IPv6 address"
        case .identifier: return "identifier (a-z 0-9 . - _; at most 64)"
        case .counter(let max): return "whole number 0 to \(max)"
        case .unixTime: return "Unix seconds"
        case .internalValue(let what): return what
        }
    }

    /// Why `value` does not have this shape, or nil when it does.
    public func problem(with value: String) -> String? {
        switch self {
        case .text(let maxBytes):
            if value.utf8.count > maxBytes { return "is longer than \(maxBytes) bytes" }
            if value.unicodeScalars.contains(where: { $0.properties.generalCategory == .control }) { return "contains control characters" }
            return nil
        case .hostname:
            if value == Self.unknown { return nil }
            let allowed = value.utf8.allSatisfy { byte in
                (byte >= 0x30 && byte <= 0x39) || (byte >= 0x41 && byte <= 0x5A) || (byte >= 0x61 && byte <= 0x7A) || byte == 0x2E || byte == 0x2D || byte == 0x5F
            }
            return (1...253).contains(value.utf8.count) && allowed ? nil : "is not a host name (letters, digits, . - _; 1 to 253)"
        case .ipAddress:
            return value == Self.unknown || AddressPrivacy.isAddress(value) ? nil : "is not an IPv4 or IPv6 address"
        case .identifier:
            let allowed = value.utf8.allSatisfy { byte in
                (byte >= 0x30 && byte <= 0x39) || (byte >= 0x61 && byte <= 0x7A) || byte == 0x2E || byte == 0x2D || byte == 0x5F
            }
            return value.utf8.count <= 64 && allowed ? nil : "is not an identifier (a-z 0-9 . - _; at most 64)"
        case .counter, .unixTime, .internalValue:
            return nil
        }
    }

    /// Why a number does not have this shape, or nil when it does.
    public func problem(with number: Int64) -> String? {
        switch self {
        case .counter(let max): return (0...max).contains(number) ? nil : "must be a whole number from 0 to \(max)"
        case .unixTime: return (0...253_402_300_799).contains(number) ? nil : "must be Unix seconds between 1970 and 9999"
        default: return "is not a number field"
        }
    }
}

/// One field the controller stores: what it is, why it is held, on what legal basis, for how long, and where.
public struct DeclaredField: Sendable, Encodable {
    public let name: String
    public let category: DataCategory
    public let purpose: String
    public let legalBasis: String
    public let retention: String
    public let shape: ValueShape
    /// How it is kept: in clear, AES-256-GCM, cut down, keyed hash.
    public let protection: String
    /// The database columns (`table.column`) holding it.
    public let columns: [String]

    public var personal: Bool { category == .personal }

    init(_ name: String, _ category: DataCategory, purpose: String, basis: String, retention: String, shape: ValueShape,
         protection: String = "in clear", columns: [String]) {
        self.name = name
        self.category = category
        self.purpose = purpose
        legalBasis = basis
        self.retention = retention
        self.shape = shape
        self.protection = protection
        self.columns = columns
    }

    enum CodingKeys: String, CodingKey { case name, category, purpose, legalBasis, retention, shape, protection, columns }

    public func encode(to encoder: any Encoder) throws {
        var container = encoder.container(keyedBy: CodingKeys.self)
        try container.encode(name, forKey: .name)
        try container.encode(category, forKey: .category)
        try container.encode(purpose, forKey: .purpose)
        try container.encode(legalBasis, forKey: .legalBasis)
        try container.encode(retention, forKey: .retention)
        try container.encode(shape.description, forKey: .shape)
        try container.encode(protection, forKey: .protection)
        try container.encode(columns, forKey: .columns)
    }
}

/// A group of declared fields: one record kind the controller keeps.
public struct DeclaredRecord: Sendable, Encodable {
    public let name: String
    public let summary: String
    public let fields: [DeclaredField]
}

/// The controller's data inventory: every field it stores is declared here, once, with its category, purpose, legal
/// basis, retention, shape and columns. Ingestion refuses any field or value shape not declared here, the purge
/// deletes by the retention declared here, `docs/PRIVACY.md` is generated from it (`privacy inventory --markdown`),
/// and a test fails when a database column is not declared.
public enum DataInventory {
    static let licence = "validate the software and the licence status"
    static let operate = "operate the fleet: backups, schedules, health"
    static let improve = "monitor and improve the product"
    static let legitimate = "legitimate interests"
    static let contract = "contract"
    static let consent = "consent"
    static let legal = "legal obligation (accountability, GDPR art. 5(2) and 30)"

    static let whileCustomer = "while the customer has an active licence; deleted 90 days (configurable) after the last one ended, or on erasure"
    static let whileAgent = "while the agent is enrolled; deleted 90 days (configurable) after the agent was removed"
    static let improvementRaw = "raw records 90 days (configurable), then deleted; monthly totals that identify no one are kept"
    static let forever = "kept for the life of the controller"

    // MARK: Facts and problems (agent → controller, every heartbeat)

    public static let facts: [DeclaredField] = [
        DeclaredField("hostname", .personal, purpose: licence, basis: legitimate, retention: whileAgent, shape: .hostname,
                      protection: "AES-256-GCM", columns: ["agents.hostname_sealed"]),
        DeclaredField("primaryIP", .personal, purpose: licence, basis: legitimate, retention: whileAgent, shape: .ipAddress,
                      protection: "cut to /24 (IPv4) or /48 (IPv6) before storing; in full only in the encrypted activation record",
                      columns: ["agents.facts"]),
        DeclaredField("osID", .essential, purpose: operate, basis: legitimate, retention: whileAgent, shape: .identifier, columns: ["agents.facts"]),
        DeclaredField("osName", .essential, purpose: operate, basis: legitimate, retention: whileAgent, shape: .text(maxBytes: 256), columns: ["agents.facts"]),
        DeclaredField("osVersion", .essential, purpose: operate, basis: legitimate, retention: whileAgent, shape: .text(maxBytes: 256), columns: ["agents.facts"]),
        DeclaredField("kernelRelease", .essential, purpose: operate, basis: legitimate, retention: whileAgent, shape: .text(maxBytes: 256), columns: ["agents.facts"]),
        DeclaredField("kernelVersion", .essential, purpose: operate, basis: legitimate, retention: whileAgent, shape: .text(maxBytes: 512), columns: ["agents.facts"]),
        DeclaredField("panel", .essential, purpose: licence, basis: legitimate, retention: whileAgent, shape: .identifier, columns: ["agents.facts"]),
        DeclaredField("panelVersion", .essential, purpose: licence, basis: legitimate, retention: whileAgent, shape: .text(maxBytes: 256), columns: ["agents.facts"]),
        DeclaredField("agentVersion", .essential, purpose: licence, basis: legitimate, retention: whileAgent, shape: .text(maxBytes: 64), columns: ["agents.facts"]),
        DeclaredField("agentTier", .essential, purpose: licence, basis: legitimate, retention: whileAgent, shape: .identifier, columns: ["agents.facts"]),
    ]

    /// The longest value stored for one fact or problem; agents send short strings (an OS name, a kernel version).
    public static let longestValue = 1024

    /// `problems`: why a fact could not be read, keyed by the fact's name.
    public static let problems: [DeclaredField] = facts.map { fact in
        DeclaredField("problems.\(fact.name)", .essential, purpose: "explain why the fact '\(fact.name)' could not be read",
                      basis: legitimate, retention: whileAgent, shape: .text(maxBytes: longestValue), columns: ["agents.problems"])
    }

    public static let declaredFactNames: Set<String> = Set(facts.map(\.name))
    static let factShapes: [String: ValueShape] = Dictionary(uniqueKeysWithValues: facts.map { ($0.name, $0.shape) })

    // MARK: Improvement telemetry (agent → controller, only with consent)

    /// Counters per job kind: runs, failures, seconds spent, bytes added (feature use is the runs of each kind).
    public static let telemetry: [DeclaredField] = JobKind.allCases.flatMap { kind in
        TelemetryUpload.counterNames(for: kind).map { name in
            DeclaredField("telemetry.\(name)", .improvement, purpose: improve, basis: consent, retention: improvementRaw,
                          shape: .counter(max: name.hasSuffix(".bytes") ? 1 << 50 : 1 << 40),
                          columns: ["telemetry_records.body", "telemetry_totals.total"])
        }
    } + [
        DeclaredField("telemetry.from, telemetry.to", .improvement, purpose: "the period an upload covers", basis: consent,
                      retention: improvementRaw, shape: .unixTime, columns: ["telemetry_records.body"]),
        DeclaredField("telemetry.schema", .improvement, purpose: "the upload format", basis: consent, retention: improvementRaw,
                      shape: .counter(max: Int64(TelemetryUpload.currentSchema)), columns: ["telemetry_records.body"]),
        DeclaredField("telemetry record", .improvement, purpose: "which agent and licence sent an upload, and when (consent is checked per licence)",
                      basis: consent, retention: improvementRaw, shape: .internalValue("ids and Unix seconds"),
                      columns: ["telemetry_records.id", "telemetry_records.agent_id", "telemetry_records.licence_id", "telemetry_records.received_at"]),
        DeclaredField("telemetry monthly totals", .improvement, purpose: "product statistics that identify no one", basis: legitimate,
                      retention: forever, shape: .internalValue("month, counter name, sum, number of uploads"),
                      columns: ["telemetry_totals.month", "telemetry_totals.counter", "telemetry_totals.uploads"]),
    ]

    static let telemetryShapes: [String: ValueShape] = Dictionary(uniqueKeysWithValues: JobKind.allCases.flatMap { kind in
        TelemetryUpload.counterNames(for: kind).map { ($0, ValueShape.counter(max: $0.hasSuffix(".bytes") ? 1 << 50 : 1 << 40)) }
    })

    // MARK: Licences and customers

    /// What the licence system stores (tables of `LicenceSchema`). Customer name and email live behind
    /// `CustomerStore` only, encrypted.
    public static let licensing: [DeclaredField] = [
        DeclaredField("customer.name", .personal, purpose: licence + "; contact the customer (breach notification)", basis: contract,
                      retention: whileCustomer, shape: .text(maxBytes: 200), protection: "AES-256-GCM",
                      columns: ["customers.name", "customers.name_sealed"]),
        DeclaredField("customer.email", .personal, purpose: "contact the customer about their licence and breaches", basis: contract,
                      retention: whileCustomer, shape: .text(maxBytes: 254), protection: "AES-256-GCM",
                      columns: ["customers.email", "customers.email_sealed"]),
        DeclaredField("customer.id, uid, created, erased", .essential, purpose: "refer to a customer without personal data; the uid keys the erasure ledger",
                      basis: contract, retention: forever, shape: .internalValue("integer id, random 128-bit uid, Unix seconds"),
                      columns: ["customers.id", "customers.uid", "customers.created_at", "customers.erased_at"]),
        DeclaredField("licence", .essential, purpose: licence, basis: contract, retention: forever,
                      shape: .internalValue("id, hash of the key's secret part, tier, seats, times, state"),
                      protection: "the key only as a hash of its secret part",
                      columns: ["licences.id", "licences.verifier_hash", "licences.customer_id", "licences.tier", "licences.max_servers",
                                "licences.issued_at", "licences.expires_at", "licences.state"]),
        DeclaredField("licence tier", .essential, purpose: licence, basis: contract, retention: forever,
                      shape: .internalValue("name, features, description"),
                      columns: ["licence_tiers.name", "licence_tiers.features", "licence_tiers.description"]),
        DeclaredField("licence seat", .essential, purpose: licence, basis: contract, retention: forever,
                      shape: .internalValue("licence, agent, machine hash, times, lease serial"),
                      columns: ["licence_seats.licence_id", "licence_seats.agent_id", "licence_seats.machine_hash", "licence_seats.activated_at",
                                "licence_seats.released_at", "licence_seats.lease_serial", "licence_seats.lease_expires_at", "lease_serial.id", "lease_serial.value"]),
        DeclaredField("licence history", .essential, purpose: licence, basis: contract, retention: forever,
                      shape: .internalValue("event kind, time, agent id, detail without personal data"),
                      columns: ["licence_events.id", "licence_events.licence_id", "licence_events.at", "licence_events.kind",
                                "licence_events.agent_id", "licence_events.detail"]),
        DeclaredField("machine.machineIDHash, machine.rootFilesystemHash", .essential,
                      purpose: "validate the licence, detect cloned servers (keyed HMAC; raw values never leave the server)",
                      basis: legitimate, retention: whileAgent, shape: .internalValue("64 hex characters"), protection: "keyed hash",
                      columns: ["agent_machines.agent_id", "agent_machines.machine_hash", "agent_machines.first_seen"]),
        DeclaredField("activation record", .personal, purpose: "evidence of where a licence was activated (abuse and fraud)",
                      basis: legitimate, retention: whileCustomer, shape: .internalValue("full IP address of the request and of the server, host name"),
                      protection: "AES-256-GCM (the only place a full IP address is kept)",
                      columns: ["activation_records.id", "activation_records.licence_id", "activation_records.agent_id",
                                "activation_records.at", "activation_records.sealed"]),
    ]

    // MARK: Consent, audit, erasure

    public static let privacyRecords: [DeclaredField] = [
        DeclaredField("consent record", .essential, purpose: "prove that improvement telemetry is collected only with consent",
                      basis: legal, retention: whileCustomer + " (the record of who consented, when, stays as ids)",
                      shape: .internalValue("licence, granted or withdrawn, time, source"),
                      columns: ["consent_records.id", "consent_records.licence_id", "consent_records.state", "consent_records.at",
                                "consent_records.source"]),
        DeclaredField("consent.by", .personal, purpose: "who gave or withdrew consent", basis: legal, retention: whileCustomer,
                      shape: .text(maxBytes: 200), protection: "AES-256-GCM", columns: ["consent_records.by_sealed"]),
        DeclaredField("audit entry", .essential, purpose: "record every read of personal data: who, when, what, why",
                      basis: legal, retention: forever + " (entries name customers by id only)",
                      shape: .internalValue("time, operator account, action, subject id, reason"),
                      protection: "hash chain keyed with the privacy key (an edited row breaks it)",
                      columns: ["audit_log.id", "audit_log.at", "audit_log.actor", "audit_log.action", "audit_log.subject",
                                "audit_log.reason", "audit_log.previous", "audit_log.mac"]),
        DeclaredField("erasure ledger", .essential, purpose: "keep erasures effective after a database restore",
                      basis: legal, retention: forever, shape: .internalValue("keyed hash of the customer uid, time"),
                      protection: "keyed hash; in the file erasure.ledger beside the database, not in it",
                      columns: []),
    ]

    // MARK: Fleet operation

    public static let operation: [DeclaredField] = [
        DeclaredField("agent", .essential, purpose: "authenticate agents and show their health", basis: legitimate, retention: whileAgent,
                      shape: .internalValue("id, Ed25519 public key, times, replay floor"),
                      columns: ["agents.id", "agents.public_key", "agents.hostname", "agents.enrolled_at", "agents.removed_at",
                                "agents.last_seen", "agents.last_request_at"]),
        DeclaredField("enrollment token", .essential, purpose: "enroll agents once", basis: legitimate,
                      retention: "deleted 90 days (configurable) after it expired", shape: .internalValue("id, SHA-256 of the secret, times, agent id"),
                      protection: "the secret only as a hash",
                      columns: ["tokens.id", "tokens.secret_hash", "tokens.created_at", "tokens.expires_at", "tokens.used_at", "tokens.used_by"]),
        DeclaredField("request nonce", .essential, purpose: "refuse replayed requests", basis: legitimate,
                      retention: "the signature clock window (minutes)", shape: .internalValue("agent id, nonce, time"),
                      columns: ["signed_nonces.agent_id", "signed_nonces.nonce", "signed_nonces.signed_at"]),
        DeclaredField("escrowed repository key", .essential, purpose: "restore a dead server (disaster recovery)", basis: contract,
                      retention: "until the operator deletes it; the controller cannot open it",
                      shape: .internalValue("sealed box to the operator's recovery key"), protection: "sealed to the operator's X25519 key",
                      columns: ["escrow.agent_id", "escrow.created_at", "escrow.recovery_public_key", "escrow.sealed_key"]),
        DeclaredField("schedule and group", .essential, purpose: operate, basis: contract, retention: whileAgent,
                      shape: .internalValue("policies, group names, the agent's time zone name"),
                      columns: ["schedule_policies.scope", "schedule_policies.policy", "schedule_policies.updated_at",
                                "agent_groups.name", "agent_groups.created_at", "agent_group_members.agent_id", "agent_group_members.group_name",
                                "agent_time_zones.agent_id", "agent_time_zones.time_zone", "agent_time_zones.updated_at"]),
        DeclaredField("job record", .essential, purpose: operate, basis: contract, retention: whileAgent,
                      shape: .internalValue("kind, parameters (account names, snapshot ids), state changes, progress, outcome (bytes, files, errors)"),
                      columns: ["jobs.id", "jobs.agent_id", "jobs.kind", "jobs.state", "jobs.parameters", "jobs.origin", "jobs.task", "jobs.slot",
                                "jobs.attempt", "jobs.max_attempts", "jobs.retry_base", "jobs.retry_of", "jobs.timeout_seconds", "jobs.not_before",
                                "jobs.queued_at", "jobs.dispatched_at", "jobs.started_at", "jobs.finished_at", "jobs.cancel_requested",
                                "jobs.progress", "jobs.outcome", "jobs.local_id", "job_events.job_id", "job_events.at", "job_events.state",
                                "job_events.detail"]),
        DeclaredField("backup coverage", .essential, purpose: operate, basis: contract, retention: whileAgent,
                      shape: .internalValue("per agent, account and kind: first seen, last success and failure, the job, the last error"),
                      columns: ["backup_coverage.agent_id", "backup_coverage.account", "backup_coverage.kind", "backup_coverage.first_seen_at",
                                "backup_coverage.last_success_at", "backup_coverage.last_failure_at", "backup_coverage.last_job_id",
                                "backup_coverage.last_error"]),
        DeclaredField("alerts", .essential, purpose: operate, basis: contract, retention: whileAgent,
                      shape: .internalValue("condition, agent, subject (an account and kind), detail, when it fired and resolved"),
                      columns: ["alerts.id", "alerts.key", "alerts.condition", "alerts.agent_id", "alerts.subject", "alerts.detail", "alerts.since",
                                "alerts.fired_at", "alerts.resolved_at", "alert_job_conditions.key", "alert_job_conditions.condition",
                                "alert_job_conditions.agent_id", "alert_job_conditions.subject", "alert_job_conditions.detail",
                                "alert_job_conditions.since", "alert_state.name", "alert_state.value"]),
        DeclaredField("alert channels and deliveries", .personal, purpose: "deliver alerts to the operators' webhook and mailboxes",
                      basis: legitimate, retention: "until the operator removes the channel; deliveries while the alerts they carry are kept",
                      shape: .internalValue("channel name, kind, settings (URL or SMTP server and recipient addresses), secret, delivery attempts"),
                      protection: "the database is 0600; secrets are listed only as a fingerprint",
                      columns: ["alert_channels.name", "alert_channels.kind", "alert_channels.settings", "alert_channels.secret",
                                "alert_channels.created_at", "alert_deliveries.id", "alert_deliveries.channel", "alert_deliveries.events",
                                "alert_deliveries.created_at", "alert_deliveries.attempts", "alert_deliveries.next_attempt_at",
                                "alert_deliveries.delivered_at", "alert_deliveries.failed_at", "alert_deliveries.last_error"]),
        DeclaredField("dashboard operator", .personal, purpose: "sign operators in to the dashboard and keep their roles", basis: legitimate,
                      retention: "until the operator is removed; sessions end after 30 minutes idle or 12 hours",
                      shape: .internalValue("name, role, scrypt password hash and parameters, one-time link hash, times; session token hashes and CSRF tokens"),
                      protection: "passwords and link and session secrets stored only as hashes",
                      columns: ["operators.id", "operators.name", "operators.role", "operators.created_at", "operators.password_salt",
                                "operators.password_hash", "operators.password_n", "operators.password_r", "operators.password_p",
                                "operators.password_set_at", "operators.last_login_at", "operators.setup_hash", "operators.setup_expires_at",
                                "operator_sessions.token_hash", "operator_sessions.operator_id", "operator_sessions.csrf",
                                "operator_sessions.created_at", "operator_sessions.last_used_at"]),
        DeclaredField("controller settings", .essential, purpose: "the controller's own configuration (URL, intervals, policies, key ids)",
                      basis: legitimate, retention: forever, shape: .internalValue("name and value"),
                      columns: ["settings.key", "settings.value", "schema_version.version", "schema_version.applied_at",
                                "sqlite_sequence.name", "sqlite_sequence.seq"]),
    ]

    /// Every record kind, in the order `docs/PRIVACY.md` shows them.
    public static let records: [DeclaredRecord] = [
        DeclaredRecord(name: "Facts", summary: "What each agent reports in every heartbeat (the vendor's technical information list plus the host name).", fields: facts),
        DeclaredRecord(name: "Problems", summary: "Why a fact could not be read; keys must be declared fact names.", fields: problems),
        DeclaredRecord(name: "Improvement telemetry", summary: "Counters uploaded only by agents in mode `on` whose customer consented.", fields: telemetry),
        DeclaredRecord(name: "Licences and customers", summary: "Customers, licences, seats and the encrypted activation record.", fields: licensing),
        DeclaredRecord(name: "Consent, audit and erasure", summary: "The records that make the privacy rules checkable.", fields: privacyRecords),
        DeclaredRecord(name: "Fleet operation", summary: "Agents, tokens, schedules, jobs and the controller's settings.", fields: operation),
    ]

    public static var allFields: [DeclaredField] { records.flatMap(\.fields) }

    /// Every `table.column` some declaration covers.
    public static var declaredColumns: Set<String> { Set(allFields.flatMap(\.columns)) }

    // MARK: Ingestion checks

    /// Why a report of facts and problems must not be stored, or nil when every field is declared and every value
    /// has its declared shape. `problems` explain why a fact could not be read, so their keys must be declared facts.
    public static func violation(facts: [String: String], problems: [String: String]) -> String? {
        if let field = undeclared(facts.keys) { return "fact '\(field.prefix(64))' is not in the controller's data inventory; nothing was stored" }
        if let field = undeclared(problems.keys) {
            return "problem key '\(field.prefix(64))' is not a fact in the controller's data inventory; nothing was stored"
        }
        // On every heartbeat: checked unsorted, and the failing field with the smallest name is reported, so the
        // error is stable without sorting each time.
        var failure: (name: String, message: String)?
        func note(_ name: String, _ message: String) { if failure.map({ name < $0.name }) ?? true { failure = (name, message) } }
        for (name, value) in facts {
            if value.utf8.count > longestValue { note(name, "fact '\(name)' is longer than \(longestValue) bytes; nothing was stored") }
            else if let problem = (factShapes[name] ?? .text(maxBytes: longestValue)).problem(with: value) {
                note(name, "fact '\(name)' \(problem); nothing was stored")
            }
        }
        if let failure { return failure.message }
        for (name, value) in problems {
            if value.utf8.count > longestValue { note(name, "problem '\(name)' is longer than \(longestValue) bytes; nothing was stored") }
            else if let problem = ValueShape.text(maxBytes: longestValue).problem(with: value) { note(name, "problem '\(name)' \(problem); nothing was stored") }
        }
        return failure?.message
    }

    /// The first undeclared fact name, if any, in sorted order so the error is stable.
    public static func undeclared(_ names: some Collection<String>) -> String? {
        names.filter { !declaredFactNames.contains($0) }.sorted().first
    }

    /// Why a telemetry upload must not be stored, or nil when every counter is declared and in range.
    public static func violation(telemetry upload: TelemetryUpload) -> String? {
        guard upload.schema == TelemetryUpload.currentSchema else {
            return "telemetry schema \(upload.schema) is not known (this controller reads schema \(TelemetryUpload.currentSchema)); nothing was stored"
        }
        for (name, value) in [("from", upload.from), ("to", upload.to)] {
            if let problem = ValueShape.unixTime.problem(with: value) { return "telemetry field '\(name)' \(problem); nothing was stored" }
        }
        guard upload.from <= upload.to else { return "telemetry field 'from' is after 'to'; nothing was stored" }
        guard (1...200).contains(upload.counters.count) else { return "telemetry upload must carry 1 to 200 counters; nothing was stored" }
        for (name, value) in upload.counters.sorted(by: { $0.key < $1.key }) {
            guard let shape = telemetryShapes[name] else {
                return "telemetry counter '\(name.prefix(64))' is not in the controller's data inventory; nothing was stored"
            }
            if let problem = shape.problem(with: value) { return "telemetry counter '\(name)' \(problem); nothing was stored" }
        }
        return nil
    }
}
