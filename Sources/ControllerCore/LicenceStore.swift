import Crypto
import Foundation
import SQLite

/// Where customers' personal data lives. Everything else refers to a customer by id only, so storing these two
/// fields encrypted (the privacy issue) changes this one implementation.
public protocol CustomerStore: Sendable {
    func addCustomer(_ customer: Customer, now: Int64) throws -> Int64
    func customer(_ id: Int64) throws -> Customer?
}

/// Storage of licences, tiers, seats, machine sightings and history. `transaction` runs its body atomically and
/// serialized with every other caller (SQLite now; a PostgreSQL implementation would use SERIALIZABLE).
public protocol LicenceStore: Sendable {
    func transaction<T>(_ body: () throws -> T) throws -> T

    func tiers() throws -> [LicenceTier]
    func tier(_ name: String) throws -> LicenceTier?
    func saveTier(_ tier: LicenceTier) throws

    /// Inserts a licence; false when the id is taken (the caller draws another).
    func insertLicence(_ licence: Licence) throws -> Bool
    func licence(id: String) throws -> Licence?
    func licences() throws -> [Licence]
    func setState(licenceID: String, _ state: LicenceState) throws

    func activeSeats(licenceID: String) throws -> [Seat]
    func activeSeatCount(licenceID: String) throws -> Int
    func allSeats(licenceID: String) throws -> [Seat]
    func activeSeat(agentID: String) throws -> Seat?
    func insertSeat(_ seat: Seat) throws
    /// Releases the agent's active seat on `licenceID` (any licence when nil); true if one was released.
    func releaseSeat(agentID: String, licenceID: String?, now: Int64) throws -> [String]
    func recordLease(agentID: String, serial: Int64, expiresAt: Int64) throws
    /// The next lease serial of this controller: strictly greater than every one before.
    func nextLeaseSerial() throws -> Int64

    func addEvent(licenceID: String, _ event: LicenceEvent) throws
    func events(licenceID: String) throws -> [LicenceEvent]
    func eventTimes(licenceID: String, kind: String, since: Int64) throws -> [Int64]
    /// Events after `afterID` except renewals, for a running server to notice changes made by operator commands.
    func changes(afterID: Int64) throws -> (lastID: Int64, licenceIDs: Set<String>, agentIDs: Set<String>)
    func latestEventID() throws -> Int64

    /// Records that `agentID` was seen on `machineHash`; true when that pair is new.
    func recordMachine(agentID: String, machineHash: String, now: Int64) throws -> Bool
    func machines(agentID: String) throws -> [String]
    func forgetMachines(agentID: String) throws
    /// Agents seen on more than one machine.
    func clonedAgents() throws -> Set<String>

    func setting(_ name: String) throws -> String?
    func setSetting(_ name: String, _ value: String) throws
}

/// The licence schema, applied by `ControllerStore` with its own migrations (versions 100+ so the two lists never collide).
public enum LicenceSchema {
    public static let migrations = [
        Migration(version: 100, sql: """
            CREATE TABLE licence_tiers (name TEXT PRIMARY KEY, features TEXT NOT NULL, description TEXT NOT NULL DEFAULT '');
            INSERT INTO licence_tiers (name, features, description) VALUES
              ('basic', '["max-accounts:10"]', 'local backups only, up to 10 accounts'),
              ('standard', '["offsite","max-accounts:100"]', 'local and weekly off-site backups, up to 100 accounts'),
              ('unlimited', '["offsite","max-accounts:1000000"]', 'local and off-site backups, any number of accounts');
            CREATE TABLE customers (id INTEGER PRIMARY KEY, created_at INTEGER NOT NULL, name TEXT NOT NULL, email TEXT NOT NULL);
            CREATE TABLE licences (id TEXT PRIMARY KEY, verifier_hash BLOB NOT NULL, customer_id INTEGER NOT NULL REFERENCES customers(id),
                                   tier TEXT NOT NULL REFERENCES licence_tiers(name), max_servers INTEGER NOT NULL CHECK (max_servers > 0),
                                   issued_at INTEGER NOT NULL, expires_at INTEGER,
                                   state TEXT NOT NULL CHECK (state IN ('active', 'suspended', 'revoked')));
            CREATE TABLE licence_seats (licence_id TEXT NOT NULL REFERENCES licences(id), agent_id TEXT NOT NULL,
                                        machine_hash TEXT NOT NULL, activated_at INTEGER NOT NULL, released_at INTEGER,
                                        lease_serial INTEGER, lease_expires_at INTEGER);
            CREATE UNIQUE INDEX licence_seats_active_agent ON licence_seats (agent_id) WHERE released_at IS NULL;
            CREATE INDEX licence_seats_licence ON licence_seats (licence_id, released_at);
            CREATE TABLE licence_events (id INTEGER PRIMARY KEY, licence_id TEXT NOT NULL, at INTEGER NOT NULL, kind TEXT NOT NULL,
                                         agent_id TEXT, detail TEXT NOT NULL DEFAULT '');
            CREATE INDEX licence_events_licence ON licence_events (licence_id, kind, at);
            CREATE TABLE agent_machines (agent_id TEXT NOT NULL, machine_hash TEXT NOT NULL, first_seen INTEGER NOT NULL,
                                         PRIMARY KEY (agent_id, machine_hash));
            CREATE TABLE lease_serial (id INTEGER PRIMARY KEY CHECK (id = 1), value INTEGER NOT NULL);
            INSERT INTO lease_serial (id, value) VALUES (1, 0);
            """),
    ]
}

/// `LicenceStore` and `CustomerStore` on the controller's SQLite database.
public final class SQLiteLicenceStore: LicenceStore, CustomerStore {
    let database: Database
    /// Seals customers' names and emails (AES-256-GCM, see `PrivacyKeys`).
    let keys: PrivacyKeys

    /// `database` must have the licence schema: `ControllerStore` applies `LicenceSchema.migrations` on open.
    public init(database: Database, keys: PrivacyKeys) {
        self.database = database
        self.keys = keys
    }

    /// For a database opened by `ControllerStore`, which loaded its privacy key. Any other database gets a key
    /// that lives only as long as this process: its customers stay sealed, never in clear.
    public convenience init(database: Database) {
        self.init(database: database, keys: PrivacyKeys.registered(for: database) ?? .ephemeral())
    }

    public func transaction<T>(_ body: () throws -> T) throws -> T { try database.transaction { _ in try body() } }

    // MARK: Customers (personal data: sealed with the privacy key)

    /// Name and email are stored only sealed; the random uid keys the erasure ledger.
    public func addCustomer(_ customer: Customer, now: Int64) throws -> Int64 {
        try database.query("INSERT INTO customers (created_at, name, email, name_sealed, email_sealed, uid) VALUES (?, '', '', ?, ?, ?) RETURNING id",
                           [.integer(now), .blob(try keys.seal(customer.name, field: "customer.name")),
                            .blob(try keys.seal(customer.email, field: "customer.email")), .text(Hex.encode(SecureRandom.bytes(16)))])
            .first?.int("id") ?? 0
    }

    /// The customer's opened name and email; an erased customer reads as "(erased)".
    public func customer(_ id: Int64) throws -> Customer? {
        guard let row = try database.query("SELECT name_sealed, email_sealed, erased_at FROM customers WHERE id = ?", [.integer(id)]).first else { return nil }
        guard row.int("erased_at") == nil, let name = row.blob("name_sealed"), let email = row.blob("email_sealed") else {
            return Customer(name: "(erased)", email: "(erased)")
        }
        return Customer(name: try keys.open(name, field: "customer.name"), email: try keys.open(email, field: "customer.email"))
    }

    // MARK: Tiers

    public func tiers() throws -> [LicenceTier] {
        try database.query("SELECT * FROM licence_tiers ORDER BY name").map(Self.tier)
    }

    public func tier(_ name: String) throws -> LicenceTier? {
        try database.query("SELECT * FROM licence_tiers WHERE name = ?", [.text(name)]).first.map(Self.tier)
    }

    public func saveTier(_ tier: LicenceTier) throws {
        try database.run("""
            INSERT INTO licence_tiers (name, features, description) VALUES (?, ?, ?)
            ON CONFLICT(name) DO UPDATE SET features = excluded.features, description = excluded.description
            """, [.text(tier.name), .text(Self.jsonList(tier.features)), .text(tier.description)])
    }

    static func tier(_ row: Row) -> LicenceTier {
        let features = (try? JSONDecoder().decode([String].self, from: Data((row.string("features") ?? "[]").utf8))) ?? []
        return LicenceTier(name: row.string("name") ?? "", features: features, description: row.string("description") ?? "")
    }

    static func jsonList(_ list: [String]) -> String {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.withoutEscapingSlashes]
        return String(decoding: (try? encoder.encode(list)) ?? Data("[]".utf8), as: UTF8.self)
    }

    // MARK: Licences

    public func insertLicence(_ licence: Licence) throws -> Bool {
        guard try database.query("SELECT 1 FROM licences WHERE id = ?", [.text(licence.id)]).isEmpty else { return false }
        try database.run("""
            INSERT INTO licences (id, verifier_hash, customer_id, tier, max_servers, issued_at, expires_at, state)
            VALUES (?, ?, ?, ?, ?, ?, ?, ?)
            """, [.text(licence.id), .blob(licence.verifierHash), .integer(licence.customerID), .text(licence.tier),
                  .int(licence.maxServers), .integer(licence.issuedAt), .optional(licence.expiresAt), .text(licence.state.rawValue)])
        return true
    }

    public func licence(id: String) throws -> Licence? {
        try database.query("SELECT * FROM licences WHERE id = ?", [.text(id)]).first.map(Self.licence)
    }

    public func licences() throws -> [Licence] {
        try database.query("SELECT * FROM licences ORDER BY issued_at, id").map(Self.licence)
    }

    public func setState(licenceID: String, _ state: LicenceState) throws {
        _ = try database.run("UPDATE licences SET state = ? WHERE id = ?", [.text(state.rawValue), .text(licenceID)])
    }

    static func licence(_ row: Row) -> Licence {
        Licence(id: row.string("id") ?? "", verifierHash: row.blob("verifier_hash") ?? [], customerID: row.int("customer_id") ?? 0,
                tier: row.string("tier") ?? "", maxServers: Int(clamping: row.int("max_servers") ?? 0), issuedAt: row.int("issued_at") ?? 0,
                expiresAt: row.int("expires_at"), state: LicenceState(rawValue: row.string("state") ?? "") ?? .suspended)
    }

    // MARK: Seats

    public func activeSeats(licenceID: String) throws -> [Seat] {
        try database.query("SELECT * FROM licence_seats WHERE licence_id = ? AND released_at IS NULL ORDER BY activated_at",
                           [.text(licenceID)]).map(Self.seat)
    }

    public func activeSeatCount(licenceID: String) throws -> Int {
        Int(clamping: try database.query("SELECT count(*) AS n FROM licence_seats WHERE licence_id = ? AND released_at IS NULL",
                                         [.text(licenceID)]).first?.int("n") ?? 0)
    }

    public func allSeats(licenceID: String) throws -> [Seat] {
        try database.query("SELECT * FROM licence_seats WHERE licence_id = ? ORDER BY activated_at, rowid", [.text(licenceID)]).map(Self.seat)
    }

    public func activeSeat(agentID: String) throws -> Seat? {
        try database.query("SELECT * FROM licence_seats WHERE agent_id = ? AND released_at IS NULL", [.text(agentID)]).first.map(Self.seat)
    }

    public func insertSeat(_ seat: Seat) throws {
        try database.run("INSERT INTO licence_seats (licence_id, agent_id, machine_hash, activated_at) VALUES (?, ?, ?, ?)",
                         [.text(seat.licenceID), .text(seat.agentID), .text(seat.machineHash), .integer(seat.activatedAt)])
    }

    public func releaseSeat(agentID: String, licenceID: String?, now: Int64) throws -> [String] {
        let rows = try database.query("""
            UPDATE licence_seats SET released_at = ? WHERE agent_id = ? AND released_at IS NULL AND (? IS NULL OR licence_id = ?)
            RETURNING licence_id
            """, [.integer(now), .text(agentID), .optional(licenceID), .optional(licenceID)])
        return rows.compactMap { $0.string("licence_id") }
    }

    public func recordLease(agentID: String, serial: Int64, expiresAt: Int64) throws {
        _ = try database.run("UPDATE licence_seats SET lease_serial = ?, lease_expires_at = ? WHERE agent_id = ? AND released_at IS NULL",
                             [.integer(serial), .integer(expiresAt), .text(agentID)])
    }

    public func nextLeaseSerial() throws -> Int64 {
        guard let value = try database.query("UPDATE lease_serial SET value = value + 1 WHERE id = 1 RETURNING value").first?.int("value") else {
            throw ControllerError("lease serial counter is missing from the controller database")
        }
        return value
    }

    static func seat(_ row: Row) -> Seat {
        Seat(licenceID: row.string("licence_id") ?? "", agentID: row.string("agent_id") ?? "", machineHash: row.string("machine_hash") ?? "",
             activatedAt: row.int("activated_at") ?? 0, releasedAt: row.int("released_at"), leaseSerial: row.int("lease_serial"),
             leaseExpiresAt: row.int("lease_expires_at"))
    }

    // MARK: History

    public func addEvent(licenceID: String, _ event: LicenceEvent) throws {
        try database.run("INSERT INTO licence_events (licence_id, at, kind, agent_id, detail) VALUES (?, ?, ?, ?, ?)",
                         [.text(licenceID), .integer(event.at), .text(event.kind), .optional(event.agentID), .text(event.detail)])
    }

    public func events(licenceID: String) throws -> [LicenceEvent] {
        try database.query("SELECT * FROM licence_events WHERE licence_id = ? ORDER BY id", [.text(licenceID)]).map { row in
            LicenceEvent(at: row.int("at") ?? 0, kind: row.string("kind") ?? "", agentID: row.string("agent_id"), detail: row.string("detail") ?? "")
        }
    }

    public func eventTimes(licenceID: String, kind: String, since: Int64) throws -> [Int64] {
        try database.query("SELECT at FROM licence_events WHERE licence_id = ? AND kind = ? AND at >= ? ORDER BY at",
                           [.text(licenceID), .text(kind), .integer(since)]).compactMap { $0.int("at") }
    }

    public func changes(afterID: Int64) throws -> (lastID: Int64, licenceIDs: Set<String>, agentIDs: Set<String>) {
        var last = afterID
        var licences = Set<String>(), agents = Set<String>()
        for row in try database.query("SELECT id, licence_id, agent_id, kind FROM licence_events WHERE id > ? ORDER BY id", [.integer(afterID)]) {
            last = max(last, row.int("id") ?? last)
            guard row.string("kind") != "renewed" else { continue }
            if let licence = row.string("licence_id"), !licence.isEmpty { licences.insert(licence) }
            if let agent = row.string("agent_id") { agents.insert(agent) }
        }
        return (last, licences, agents)
    }

    public func latestEventID() throws -> Int64 {
        try database.query("SELECT max(id) AS id FROM licence_events").first?.int("id") ?? 0
    }

    // MARK: Machines

    public func recordMachine(agentID: String, machineHash: String, now: Int64) throws -> Bool {
        try database.run("INSERT INTO agent_machines (agent_id, machine_hash, first_seen) VALUES (?, ?, ?) ON CONFLICT DO NOTHING",
                         [.text(agentID), .text(machineHash), .integer(now)]) == 1
    }

    public func machines(agentID: String) throws -> [String] {
        try database.query("SELECT machine_hash FROM agent_machines WHERE agent_id = ? ORDER BY first_seen, rowid", [.text(agentID)])
            .compactMap { $0.string("machine_hash") }
    }

    public func forgetMachines(agentID: String) throws {
        _ = try database.run("DELETE FROM agent_machines WHERE agent_id = ?", [.text(agentID)])
    }

    public func clonedAgents() throws -> Set<String> {
        Set(try database.query("SELECT agent_id FROM agent_machines GROUP BY agent_id HAVING count(*) > 1").compactMap { $0.string("agent_id") })
    }

    // MARK: Settings

    public func setting(_ name: String) throws -> String? {
        try database.query("SELECT value FROM settings WHERE key = ?", [.text(name)]).first?.string("value")
    }

    public func setSetting(_ name: String, _ value: String) throws {
        try database.run("INSERT INTO settings (key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                         [.text(name), .text(value)])
    }
}

/// One agent as `agents` lists it: its stored record plus the licence seat it holds and whether it is a flagged clone.
/// Encoded flat (the record's fields beside these), as `agents --json` prints it.
@dynamicMemberLookup
public struct AgentListing: Codable, Sendable {
    public let record: AgentRecord
    public let licence: String?
    /// Seen on more than one machine (keyed machine-id and root file system hashes differ).
    public let clone: Bool
    public let machines: Int

    public subscript<Value>(dynamicMember field: KeyPath<AgentRecord, Value>) -> Value { record[keyPath: field] }

    private enum CodingKeys: String, CodingKey { case licence, clone, machines }

    init(record: AgentRecord, licence: String?, clone: Bool, machines: Int) {
        self.record = record
        self.licence = licence
        self.clone = clone
        self.machines = machines
    }

    public init(from decoder: any Decoder) throws {
        record = try AgentRecord(from: decoder)
        let container = try decoder.container(keyedBy: CodingKeys.self)
        licence = try container.decodeIfPresent(String.self, forKey: .licence)
        clone = try container.decode(Bool.self, forKey: .clone)
        machines = try container.decode(Int.self, forKey: .machines)
    }

    public func encode(to encoder: any Encoder) throws {
        try record.encode(to: encoder)
        var container = encoder.container(keyedBy: CodingKeys.self)
        try container.encodeIfPresent(licence, forKey: .licence)
        try container.encode(clone, forKey: .clone)
        try container.encode(machines, forKey: .machines)
    }
}

extension AgentListing {
    static func licensing(store: ControllerStore) throws -> (seats: [String: String], cloned: Set<String>, machines: [String: Int]) {
        var seats: [String: String] = [:], machines: [String: Int] = [:]
        for row in try store.database.query("SELECT agent_id, licence_id FROM licence_seats WHERE released_at IS NULL") {
            if let agent = row.string("agent_id"), let licence = row.string("licence_id") { seats[agent] = licence }
        }
        for row in try store.database.query("SELECT agent_id, count(*) AS n FROM agent_machines GROUP BY agent_id") {
            if let agent = row.string("agent_id") { machines[agent] = Int(clamping: row.int("n") ?? 0) }
        }
        return (seats, Set(machines.filter { $0.value > 1 }.keys), machines)
    }

    public static func all(store: ControllerStore) throws -> [AgentListing] {
        let licensing = try licensing(store: store)
        return try store.agents().map { agent in
            AgentListing(record: agent, licence: licensing.seats[agent.agentID], clone: licensing.cloned.contains(agent.agentID),
                         machines: licensing.machines[agent.agentID] ?? 0)
        }
    }
}
