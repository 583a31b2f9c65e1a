import Crypto
import FleetkeepProtocol
import Foundation
import SQLite

/// The privacy schema (migrations 300+), applied by `ControllerStore` with the others.
public enum PrivacySchema {
    public static let migrations = [
        Migration(version: 300, sql: """
            ALTER TABLE customers ADD COLUMN name_sealed BLOB;
            ALTER TABLE customers ADD COLUMN email_sealed BLOB;
            ALTER TABLE customers ADD COLUMN uid TEXT;
            ALTER TABLE customers ADD COLUMN erased_at INTEGER;
            UPDATE customers SET uid = lower(hex(randomblob(16))) WHERE uid IS NULL;
            CREATE UNIQUE INDEX customers_uid ON customers (uid);
            ALTER TABLE agents ADD COLUMN hostname_sealed BLOB;
            CREATE TABLE activation_records (id INTEGER PRIMARY KEY, licence_id TEXT NOT NULL, agent_id TEXT NOT NULL,
                                             at INTEGER NOT NULL, sealed BLOB NOT NULL);
            CREATE INDEX activation_records_licence ON activation_records (licence_id);
            CREATE TABLE consent_records (id INTEGER PRIMARY KEY, licence_id TEXT NOT NULL,
                                          state TEXT NOT NULL CHECK (state IN ('granted', 'withdrawn')), at INTEGER NOT NULL,
                                          by_sealed BLOB, source TEXT NOT NULL);
            CREATE INDEX consent_records_licence ON consent_records (licence_id, id);
            CREATE TABLE audit_log (id INTEGER PRIMARY KEY, at INTEGER NOT NULL, actor TEXT NOT NULL, action TEXT NOT NULL,
                                    subject TEXT NOT NULL, reason TEXT NOT NULL, previous BLOB NOT NULL, mac BLOB NOT NULL);
            CREATE INDEX audit_log_time ON audit_log (at);
            CREATE TABLE telemetry_records (id INTEGER PRIMARY KEY, agent_id TEXT NOT NULL, licence_id TEXT NOT NULL,
                                            received_at INTEGER NOT NULL, body TEXT NOT NULL);
            CREATE INDEX telemetry_records_time ON telemetry_records (received_at);
            CREATE INDEX telemetry_records_agent ON telemetry_records (agent_id, id);
            CREATE TABLE telemetry_totals (month TEXT NOT NULL, counter TEXT NOT NULL, total INTEGER NOT NULL, uploads INTEGER NOT NULL,
                                           PRIMARY KEY (month, counter)) WITHOUT ROWID;
            """),
    ]

    /// Seals personal data written in clear by a controller from before encryption at rest (customers' names and
    /// emails, agents' host names) and cuts stored addresses down; then checkpoints the WAL so no old frame keeps them.
    static func sealPlaintext(database: Database, keys: PrivacyKeys) throws {
        // Checked without the write lock first: every command opens the store, and there is nearly always nothing to do.
        let pending = try database.query("""
            SELECT EXISTS (SELECT 1 FROM customers WHERE name != '' OR email != '')
                OR EXISTS (SELECT 1 FROM agents WHERE hostname != '' OR facts LIKE '%"hostname"%') AS pending
            """).first?.int("pending") ?? 0
        guard pending != 0 else { return }
        let changed = try database.transaction { db -> Int in
            var changed = 0
            for row in try db.query("SELECT id, name, email FROM customers WHERE name != '' OR email != ''") {
                guard let id = row.int("id") else { continue }
                try db.run("UPDATE customers SET name = '', email = '', name_sealed = ?, email_sealed = ? WHERE id = ?",
                           [.blob(try keys.seal(row.string("name") ?? "", field: "customer.name")),
                            .blob(try keys.seal(row.string("email") ?? "", field: "customer.email")), .integer(id)])
                changed += 1
            }
            for row in try db.query("SELECT id, hostname, facts FROM agents WHERE hostname != '' OR facts LIKE '%\"hostname\"%'") {
                guard let id = row.string("id") else { continue }
                var facts = ControllerStore.decode(row.string("facts"))
                let hostname = facts.removeValue(forKey: "hostname") ?? row.string("hostname") ?? "unknown"
                if let address = facts["primaryIP"] { facts["primaryIP"] = AddressPrivacy.redacted(address) }
                try db.run("UPDATE agents SET hostname = '', hostname_sealed = ?, facts = ? WHERE id = ?",
                           [.blob(try keys.seal(hostname, field: "agent.hostname")), .text(ControllerStore.json(facts)), .text(id)])
                changed += 1
            }
            return changed
        }
        if changed > 0 { _ = try database.query("PRAGMA wal_checkpoint(TRUNCATE)") }
    }
}

/// One customer as the privacy functions see it: ids, times and (unless erased) the opened personal fields.
public struct CustomerRecord: Codable, Sendable {
    public var id: Int64
    public var uid: String
    public var createdAt: Int64
    public var erasedAt: Int64?
    public var customer: Customer?
}

/// The encrypted activation record, opened: the one place a full IP address is kept.
public struct ActivationRecord: Codable, Sendable, Equatable {
    public var licenceID: String
    public var agentID: String
    public var at: Int64
    /// The address the activation request came from, in full.
    public var requestAddress: String
    /// The server's primary address as its agent reported it, in full.
    public var serverAddress: String?
    public var hostname: String?
}

public struct ConsentRecord: Codable, Sendable, Equatable {
    public var id: Int64
    public var licenceID: String
    public var granted: Bool
    public var at: Int64
    public var by: String?
    public var source: String
}

public struct AuditEntry: Codable, Sendable, Equatable {
    public var id: Int64
    public var at: Int64
    public var actor: String
    public var action: String
    public var subject: String
    public var reason: String
}

public struct TelemetryRecord: Codable, Sendable {
    public var id: Int64
    public var agentID: String
    public var licenceID: String
    public var receivedAt: Int64
    /// The upload exactly as received.
    public var body: String
}

public struct TelemetryTotal: Codable, Sendable {
    public var month: String
    public var counter: String
    public var total: Int64
    public var uploads: Int64
}

/// One agent as the aggregate report and the export see it.
public struct AgentPrivacyView: Sendable {
    public var agentID: String
    public var removedAt: Int64?
    public var enrolledAt: Int64
    public var lastSeen: Int64?
    public var facts: [String: String]
    public var problems: [String: String]
    public var hostname: String?
    /// The licence it holds a seat on, its tier and customer id.
    public var licenceID: String?
    public var tier: String?
    public var customerID: Int64?
}

/// What a purge removed (or, in a dry run, would remove).
public struct PurgeReport: Codable, Sendable, Equatable {
    public var dryRun: Bool
    public var customersErased: [Int64] = []
    public var agentsCleared: [String] = []
    public var telemetryRecords = 0
    public var tokens = 0
    public init(dryRun: Bool) { self.dryRun = dryRun }
}

/// Storage of consent, the audit log, telemetry, activation records, and the reads and deletions the privacy rules
/// need across the controller's tables. `PrivacyService` works over this protocol and knows no SQL.
public protocol PrivacyStore: Sendable {
    func transaction<T>(_ body: () throws -> T) throws -> T

    func addConsent(licenceID: String, granted: Bool, by: String?, source: String, at: Int64) throws -> Int64
    func consents(licenceID: String) throws -> [ConsentRecord]
    /// The latest consent state of the licence the agent holds an active seat on; nil without a seat or record.
    func consentGranted(agentID: String) throws -> (licenceID: String, granted: Bool)?
    func licenceOfAgent(_ agentID: String) throws -> String?
    /// Changes a cached consent answer depends on (consent records and licence events).
    func consentGeneration() throws -> Int64

    func appendAudit(at: Int64, actor: String, action: String, subject: String, reason: String) throws -> AuditEntry
    func auditEntries(since: Int64) throws -> [AuditEntry]
    /// Checks the chain from the first entry; the id of the first entry that does not verify, and why.
    func verifyAudit() throws -> (entries: Int, broken: (id: Int64, reason: String)?)

    func addTelemetry(agentID: String, licenceID: String, receivedAt: Int64, body: String, counters: [String: Int64]) throws -> Int64
    func telemetry(agentIDs: [String]?) throws -> [TelemetryRecord]
    func telemetryTotals() throws -> [TelemetryTotal]

    func addActivation(_ record: ActivationRecord) throws
    func activations(licenceIDs: [String]) throws -> [ActivationRecord]

    func customerRecords() throws -> [CustomerRecord]
    func customerRecord(_ id: Int64) throws -> CustomerRecord?
    func rectify(customerID: Int64, customer: Customer) throws
    /// Removes a customer's personal data: see `SQLitePrivacyStore.erase`.
    func erase(customerID: Int64, at: Int64) throws
    func licences(customerID: Int64) throws -> [Licence]
    /// Seconds at which the licence stopped being active (expiry, revocation, suspension), or nil while it is.
    func licenceEnded(_ licence: Licence, now: Int64) throws -> Int64?
    func agents() throws -> [AgentPrivacyView]
    func agentsOfLicences(_ licenceIDs: [String]) throws -> [String]
    func clearAgent(_ agentID: String) throws
    func removedAgents(before: Int64) throws -> [String]
    func deleteTelemetry(before: Int64, dryRun: Bool) throws -> Int
    func deleteTokens(expiredBefore: Int64, dryRun: Bool) throws -> Int

    func setting(_ name: String) throws -> String?
    func setSetting(_ name: String, _ value: String) throws
}

/// `PrivacyStore` on the controller's SQLite database.
public final class SQLitePrivacyStore: PrivacyStore {
    let database: Database
    let keys: PrivacyKeys

    public init(database: Database, keys: PrivacyKeys) {
        self.database = database
        self.keys = keys
    }

    public convenience init(store: ControllerStore) { self.init(database: store.database, keys: store.keys) }

    public func transaction<T>(_ body: () throws -> T) throws -> T { try database.transaction { _ in try body() } }

    // MARK: Consent

    public func addConsent(licenceID: String, granted: Bool, by: String?, source: String, at: Int64) throws -> Int64 {
        try database.query("INSERT INTO consent_records (licence_id, state, at, by_sealed, source) VALUES (?, ?, ?, ?, ?) RETURNING id",
                           [.text(licenceID), .text(granted ? "granted" : "withdrawn"), .integer(at),
                            .optional(try keys.seal(optional: by, field: "consent.by")), .text(source)]).first?.int("id") ?? 0
    }

    public func consents(licenceID: String) throws -> [ConsentRecord] {
        try database.query("SELECT * FROM consent_records WHERE licence_id = ? ORDER BY id", [.text(licenceID)]).map { row in
            ConsentRecord(id: row.int("id") ?? 0, licenceID: row.string("licence_id") ?? "", granted: row.string("state") == "granted",
                          at: row.int("at") ?? 0, by: try keys.open(optional: row.blob("by_sealed"), field: "consent.by"),
                          source: row.string("source") ?? "")
        }
    }

    public func consentGranted(agentID: String) throws -> (licenceID: String, granted: Bool)? {
        guard let licenceID = try licenceOfAgent(agentID) else { return nil }
        let state = try database.query("SELECT state FROM consent_records WHERE licence_id = ? ORDER BY id DESC LIMIT 1",
                                        [.text(licenceID)]).first?.string("state")
        return (licenceID, state == "granted")
    }

    public func licenceOfAgent(_ agentID: String) throws -> String? {
        try database.query("SELECT licence_id FROM licence_seats WHERE agent_id = ? AND released_at IS NULL", [.text(agentID)])
            .first?.string("licence_id")
    }

    public func consentGeneration() throws -> Int64 {
        let row = try database.query("""
            SELECT (SELECT COALESCE(max(id), 0) FROM consent_records) AS consent, (SELECT COALESCE(max(id), 0) FROM licence_events) AS events
            """).first
        return (row?.int("consent") ?? 0) &* 1_000_003 &+ (row?.int("events") ?? 0)
    }

    // MARK: Audit

    static func auditFields(_ entry: AuditEntry) -> [String] {
        [String(entry.id), String(entry.at), entry.actor, entry.action, entry.subject, entry.reason]
    }

    public func appendAudit(at: Int64, actor: String, action: String, subject: String, reason: String) throws -> AuditEntry {
        try database.transaction { db in
            let last = try db.query("SELECT id, mac FROM audit_log ORDER BY id DESC LIMIT 1").first
            let previous = last?.blob("mac") ?? []
            let entry = AuditEntry(id: (last?.int("id") ?? 0) + 1, at: at, actor: actor, action: action, subject: subject, reason: reason)
            let mac = keys.auditMAC(previous: previous, fields: Self.auditFields(entry))
            try db.run("INSERT INTO audit_log (id, at, actor, action, subject, reason, previous, mac) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                       [.integer(entry.id), .integer(at), .text(actor), .text(action), .text(subject), .text(reason), .blob(previous), .blob(mac)])
            return entry
        }
    }

    public func auditEntries(since: Int64) throws -> [AuditEntry] {
        try database.query("SELECT * FROM audit_log WHERE at >= ? ORDER BY id", [.integer(since)]).map(Self.auditEntry)
    }

    static func auditEntry(_ row: Row) -> AuditEntry {
        AuditEntry(id: row.int("id") ?? 0, at: row.int("at") ?? 0, actor: row.string("actor") ?? "", action: row.string("action") ?? "",
                   subject: row.string("subject") ?? "", reason: row.string("reason") ?? "")
    }

    public func verifyAudit() throws -> (entries: Int, broken: (id: Int64, reason: String)?) {
        var previous: [UInt8] = []
        var expectedID: Int64 = 1
        var count = 0
        for row in try database.query("SELECT * FROM audit_log ORDER BY id") {
            let entry = Self.auditEntry(row)
            count += 1
            if entry.id != expectedID { return (count, (entry.id, "entry \(expectedID) is missing (deleted?)")) }
            if row.blob("previous") ?? [] != previous { return (count, (entry.id, "its link to entry \(entry.id - 1) was changed")) }
            let mac = keys.auditMAC(previous: previous, fields: Self.auditFields(entry))
            guard HMACSHA256.equal(mac, row.blob("mac") ?? []) else { return (count, (entry.id, "its contents were changed after it was written")) }
            previous = mac
            expectedID += 1
        }
        return (count, nil)
    }

    // MARK: Telemetry

    public func addTelemetry(agentID: String, licenceID: String, receivedAt: Int64, body: String, counters: [String: Int64]) throws -> Int64 {
        let month = Self.month(receivedAt)
        return try database.transaction { db in
            let id = try db.query("INSERT INTO telemetry_records (agent_id, licence_id, received_at, body) VALUES (?, ?, ?, ?) RETURNING id",
                                  [.text(agentID), .text(licenceID), .integer(receivedAt), .text(body)]).first?.int("id") ?? 0
            for (counter, value) in counters {
                // Totals saturate rather than overflow: they are statistics, and no input may trap.
                try db.run("""
                    INSERT INTO telemetry_totals (month, counter, total, uploads) VALUES (?, ?, ?, 1)
                    ON CONFLICT(month, counter) DO UPDATE SET total = min(total + excluded.total, 9000000000000000000), uploads = uploads + 1
                    """, [.text(month), .text(counter), .integer(value)])
            }
            return id
        }
    }

    static func month(_ seconds: Int64) -> String {
        let formatter = ISO8601DateFormatter()
        formatter.formatOptions = [.withYear, .withMonth, .withDashSeparatorInDate]
        return formatter.string(from: Date(timeIntervalSince1970: TimeInterval(seconds)))
    }

    public func telemetry(agentIDs: [String]?) throws -> [TelemetryRecord] {
        let rows: [Row]
        if let agentIDs {
            rows = try agentIDs.flatMap { try database.query("SELECT * FROM telemetry_records WHERE agent_id = ? ORDER BY id", [.text($0)]) }
        } else {
            rows = try database.query("SELECT * FROM telemetry_records ORDER BY id")
        }
        return rows.map { row in
            TelemetryRecord(id: row.int("id") ?? 0, agentID: row.string("agent_id") ?? "", licenceID: row.string("licence_id") ?? "",
                            receivedAt: row.int("received_at") ?? 0, body: row.string("body") ?? "")
        }
    }

    public func telemetryTotals() throws -> [TelemetryTotal] {
        try database.query("SELECT * FROM telemetry_totals ORDER BY month, counter").map { row in
            TelemetryTotal(month: row.string("month") ?? "", counter: row.string("counter") ?? "", total: row.int("total") ?? 0,
                           uploads: row.int("uploads") ?? 0)
        }
    }

    // MARK: Activation records

    public func addActivation(_ record: ActivationRecord) throws {
        let sealed = try keys.seal(String(decoding: try JSONEncoder().encode(record), as: UTF8.self), field: "activation")
        try database.run("INSERT INTO activation_records (licence_id, agent_id, at, sealed) VALUES (?, ?, ?, ?)",
                         [.text(record.licenceID), .text(record.agentID), .integer(record.at), .blob(sealed)])
    }

    public func activations(licenceIDs: [String]) throws -> [ActivationRecord] {
        try licenceIDs.flatMap { id in
            try database.query("SELECT sealed FROM activation_records WHERE licence_id = ? ORDER BY id", [.text(id)]).compactMap { row in
                guard let sealed = row.blob("sealed") else { return nil }
                return try JSONDecoder().decode(ActivationRecord.self, from: Data(try keys.open(sealed, field: "activation").utf8))
            }
        }
    }

    // MARK: Customers

    func customerRecord(_ row: Row) throws -> CustomerRecord {
        let erased = row.int("erased_at")
        var customer: Customer?
        if erased == nil, let name = row.blob("name_sealed"), let email = row.blob("email_sealed") {
            customer = Customer(name: try keys.open(name, field: "customer.name"), email: try keys.open(email, field: "customer.email"))
        }
        return CustomerRecord(id: row.int("id") ?? 0, uid: row.string("uid") ?? "", createdAt: row.int("created_at") ?? 0,
                              erasedAt: erased, customer: customer)
    }

    public func customerRecords() throws -> [CustomerRecord] {
        try database.query("SELECT * FROM customers ORDER BY id").map(customerRecord)
    }

    public func customerRecord(_ id: Int64) throws -> CustomerRecord? {
        try database.query("SELECT * FROM customers WHERE id = ?", [.integer(id)]).first.map(customerRecord)
    }

    public func rectify(customerID: Int64, customer: Customer) throws {
        try database.run("UPDATE customers SET name_sealed = ?, email_sealed = ? WHERE id = ? AND erased_at IS NULL",
                         [.blob(try keys.seal(customer.name, field: "customer.name")), .blob(try keys.seal(customer.email, field: "customer.email")),
                          .integer(customerID)])
        try checkpoint()
    }

    /// Erases a customer: their name and email, and everything personal about their servers (host names, full
    /// addresses in activation records, who consented, raw telemetry). Their active licences are revoked and the
    /// agents bound to them removed, so nothing personal comes back with the next heartbeat. Ids, licence history and
    /// aggregates stay: they identify no one once the personal fields are gone. Then the WAL is checkpointed and
    /// truncated, so no old frame keeps what was erased.
    public func erase(customerID: Int64, at: Int64) throws {
        try database.transaction { db in
            try db.run("UPDATE customers SET name = '', email = '', name_sealed = NULL, email_sealed = NULL, erased_at = COALESCE(erased_at, ?) WHERE id = ?",
                       [.integer(at), .integer(customerID)])
            let licenceIDs = try db.query("SELECT id FROM licences WHERE customer_id = ?", [.integer(customerID)]).compactMap { $0.string("id") }
            for licenceID in licenceIDs {
                if try db.run("UPDATE licences SET state = 'revoked' WHERE id = ? AND state != 'revoked'", [.text(licenceID)]) == 1 {
                    try db.run("INSERT INTO licence_events (licence_id, at, kind, agent_id, detail) VALUES (?, ?, 'revoked', NULL, 'customer erased')",
                               [.text(licenceID), .integer(at)])
                }
                for agentID in try agentsOfLicences([licenceID]) {
                    try db.run("UPDATE agents SET removed_at = COALESCE(removed_at, ?) WHERE id = ?", [.integer(at), .text(agentID)])
                    try db.run("UPDATE licence_seats SET released_at = ? WHERE agent_id = ? AND released_at IS NULL", [.integer(at), .text(agentID)])
                    try clearAgent(agentID)
                }
                try db.run("DELETE FROM activation_records WHERE licence_id = ?", [.text(licenceID)])
                try db.run("UPDATE consent_records SET by_sealed = NULL WHERE licence_id = ?", [.text(licenceID)])
                try db.run("DELETE FROM telemetry_records WHERE licence_id = ?", [.text(licenceID)])
            }
        }
        try checkpoint()
    }

    func checkpoint() throws { _ = try database.query("PRAGMA wal_checkpoint(TRUNCATE)") }

    public func licences(customerID: Int64) throws -> [Licence] {
        try database.query("SELECT * FROM licences WHERE customer_id = ? ORDER BY issued_at, id", [.integer(customerID)]).map(SQLiteLicenceStore.licence)
    }

    public func licenceEnded(_ licence: Licence, now: Int64) throws -> Int64? {
        switch licence.effectiveStatus(now: now) {
        case "valid": return nil
        case "expired": return licence.expiresAt ?? now
        default:
            return try database.query("SELECT max(at) AS at FROM licence_events WHERE licence_id = ? AND kind IN ('revoked', 'suspended')",
                                      [.text(licence.id)]).first?.int("at") ?? licence.issuedAt
        }
    }

    // MARK: Agents

    public func agents() throws -> [AgentPrivacyView] {
        var seats: [String: (licence: String, tier: String, customer: Int64)] = [:]
        for row in try database.query("""
            SELECT s.agent_id, s.licence_id, l.tier, l.customer_id FROM licence_seats s JOIN licences l ON l.id = s.licence_id
            WHERE s.released_at IS NULL
            """) {
            if let agent = row.string("agent_id"), let licence = row.string("licence_id") {
                seats[agent] = (licence, row.string("tier") ?? "", row.int("customer_id") ?? 0)
            }
        }
        return try database.query("SELECT * FROM agents ORDER BY id").map { row in
            let id = row.string("id") ?? ""
            return AgentPrivacyView(agentID: id, removedAt: row.int("removed_at"), enrolledAt: row.int("enrolled_at") ?? 0,
                                    lastSeen: row.int("last_seen"), facts: ControllerStore.decode(row.string("facts")),
                                    problems: ControllerStore.decode(row.string("problems")),
                                    hostname: try keys.open(optional: row.blob("hostname_sealed"), field: "agent.hostname"),
                                    licenceID: seats[id]?.licence, tier: seats[id]?.tier, customerID: seats[id]?.customer)
        }
    }

    /// Agents that ever held a seat on one of the licences.
    public func agentsOfLicences(_ licenceIDs: [String]) throws -> [String] {
        var agents: [String] = []
        for id in licenceIDs {
            for row in try database.query("SELECT DISTINCT agent_id FROM licence_seats WHERE licence_id = ? ORDER BY agent_id", [.text(id)]) {
                if let agent = row.string("agent_id"), !agents.contains(agent) { agents.append(agent) }
            }
        }
        return agents
    }

    /// Deletes what an agent reported (facts, problems, host name), its machine hashes, time zone, group membership,
    /// job history and raw telemetry. The row (id and public key) stays, so the key cannot enroll again unnoticed.
    public func clearAgent(_ agentID: String) throws {
        try database.transaction { db in
            try db.run("UPDATE agents SET facts = '{}', problems = '{}', hostname = '', hostname_sealed = NULL WHERE id = ?", [.text(agentID)])
            try db.run("DELETE FROM agent_machines WHERE agent_id = ?", [.text(agentID)])
            try db.run("DELETE FROM telemetry_records WHERE agent_id = ?", [.text(agentID)])
            for table in ["agent_time_zones", "agent_group_members"] {
                if try tableExists(table, db) { try db.run("DELETE FROM \(table) WHERE agent_id = ?", [.text(agentID)]) }
            }
            if try tableExists("jobs", db) {
                try db.run("DELETE FROM job_events WHERE job_id IN (SELECT id FROM jobs WHERE agent_id = ?)", [.text(agentID)])
                try db.run("DELETE FROM jobs WHERE agent_id = ?", [.text(agentID)])
            }
        }
    }

    func tableExists(_ name: String, _ db: Database) throws -> Bool {
        try !db.query("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", [.text(name)]).isEmpty
    }

    /// Removed agents whose removal is older than `before` and that still hold reported data.
    public func removedAgents(before: Int64) throws -> [String] {
        try database.query("""
            SELECT id FROM agents WHERE removed_at IS NOT NULL AND removed_at <= ?
            AND (facts != '{}' OR problems != '{}' OR hostname_sealed IS NOT NULL OR id IN (SELECT agent_id FROM agent_machines))
            ORDER BY id
            """, [.integer(before)]).compactMap { $0.string("id") }
    }

    public func deleteTelemetry(before: Int64, dryRun: Bool) throws -> Int {
        if dryRun {
            return Int(clamping: try database.query("SELECT count(*) AS n FROM telemetry_records WHERE received_at <= ?", [.integer(before)]).first?.int("n") ?? 0)
        }
        return try database.run("DELETE FROM telemetry_records WHERE received_at <= ?", [.integer(before)])
    }

    public func deleteTokens(expiredBefore: Int64, dryRun: Bool) throws -> Int {
        if dryRun {
            return Int(clamping: try database.query("SELECT count(*) AS n FROM tokens WHERE expires_at <= ?", [.integer(expiredBefore)]).first?.int("n") ?? 0)
        }
        return try database.run("DELETE FROM tokens WHERE expires_at <= ?", [.integer(expiredBefore)])
    }

    public func setting(_ name: String) throws -> String? {
        try database.query("SELECT value FROM settings WHERE key = ?", [.text(name)]).first?.string("value")
    }

    public func setSetting(_ name: String, _ value: String) throws {
        try database.run("INSERT INTO settings (key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                         [.text(name), .text(value)])
    }
}
