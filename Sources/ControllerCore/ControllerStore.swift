import Crypto
import FleetkeepProtocol
import Foundation
import SQLite

/// One enrolled agent as stored.
public struct AgentRecord: Codable, Sendable {
    public let agentID: String
    public let hostname: String
    public let enrolledAt: Int64
    public let lastSeen: Int64?
    public let removed: Bool
    public let facts: [String: String]
    public let problems: [String: String]
}

/// The controller's SQLite database: enrollment tokens, agents, their latest facts and settings.
public final class ControllerStore: Sendable {
    public let database: Database
    /// The privacy key beside the database (see `PrivacyKeys`): personal fields are sealed with it.
    public let keys: PrivacyKeys

    static let migrations = [
        Migration(version: 1, sql: """
            CREATE TABLE settings (key TEXT PRIMARY KEY, value TEXT NOT NULL);
            CREATE TABLE tokens (id TEXT PRIMARY KEY, secret_hash BLOB NOT NULL, created_at INTEGER NOT NULL,
                                 expires_at INTEGER NOT NULL, used_at INTEGER, used_by TEXT);
            CREATE TABLE agents (id TEXT PRIMARY KEY, public_key BLOB NOT NULL UNIQUE, hostname TEXT NOT NULL,
                                 enrolled_at INTEGER NOT NULL, removed_at INTEGER, last_seen INTEGER,
                                 facts TEXT NOT NULL DEFAULT '{}', problems TEXT NOT NULL DEFAULT '{}');
            """),
        Migration(version: 2, sql: """
            CREATE TABLE escrow (agent_id TEXT NOT NULL REFERENCES agents(id), created_at INTEGER NOT NULL,
                                 recovery_public_key TEXT NOT NULL, sealed_key BLOB NOT NULL);
            CREATE INDEX escrow_agent ON escrow (agent_id, created_at);
            """),
        // The signed timestamp of each agent's last stored heartbeat: the replay floor after a restart.
        Migration(version: 3, sql: "ALTER TABLE agents ADD COLUMN last_request_at INTEGER;"),
        // Nonces of Ed25519-signed requests (enrollment, sessions, escrow), kept for the clock window, so a captured
        // request cannot be replayed after a restart empties the in-memory nonce cache.
        Migration(version: 4, sql: """
            CREATE TABLE signed_nonces (agent_id TEXT NOT NULL, nonce TEXT NOT NULL, signed_at INTEGER NOT NULL,
                                        PRIMARY KEY (agent_id, nonce)) WITHOUT ROWID;
            CREATE INDEX signed_nonces_time ON signed_nonces (signed_at);
            """),
    ]

    /// The schema as it was before encryption at rest (for tests of the upgrade).
    public static var migrationsBeforePrivacy: [Migration] { migrations + LicenceSchema.migrations }

    public init(path: String) throws {
        database = try Database(path: path)
        // Deleted and overwritten cells are zeroed, so an erased or re-encrypted value does not linger in free pages.
        try database.execute("PRAGMA secure_delete=ON")
        try database.migrate(Self.migrations + LicenceSchema.migrations + PrivacySchema.migrations)
        keys = try PrivacyKeys.open(database: database)
        try PrivacySchema.sealPlaintext(database: database, keys: keys)
    }

    // MARK: Settings

    public func setting(_ key: String) throws -> String? {
        try database.query("SELECT value FROM settings WHERE key = ?", [.text(key)]).first?.string("value")
    }

    public func setSetting(_ key: String, _ value: String) throws {
        try database.run("INSERT INTO settings (key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                         [.text(key), .text(value)])
    }

    /// The interval agents are asked to beat at; a stored value outside the accepted range falls back to the default.
    public func heartbeatInterval() throws -> Int {
        guard let stored = Int(try setting("heartbeat_interval") ?? ""), HeartbeatTiming.accepted.contains(Int64(stored)) else { return 300 }
        return stored
    }

    // MARK: Tokens

    /// Creates a token and returns its id and secret. Only a hash of the secret is stored.
    /// `seconds` is bounded by the caller (`Arguments.parseDuration`); the sum is still checked so no value traps.
    public func createToken(expiresIn seconds: Int64, now: Date = Date()) throws -> (id: String, secret: String) {
        let id = Hex.encode(SecureRandom.bytes(8))
        let secret = Base64URL.encode(SecureRandom.bytes(24))
        let created = Int64(now.timeIntervalSince1970)
        let (expires, overflow) = created.addingReportingOverflow(seconds)
        guard !overflow, seconds > 0 else { throw ControllerError("token lifetime \(seconds)s is out of range") }
        try database.run("INSERT INTO tokens (id, secret_hash, created_at, expires_at) VALUES (?, ?, ?, ?)",
                         [.text(id), .blob(SHA256.hash(Array(secret.utf8))), .integer(created), .integer(expires)])
        return (id, secret)
    }

    /// Consumes a token and stores the agent in one transaction, so a refused enrollment changes nothing.
    func enroll(tokenID: String, secret: String, publicKey: Ed25519PublicKey, facts: [String: String],
                problems: [String: String], now: Int64) throws -> String {
        try database.transaction { db in
            guard let token = try db.query("SELECT secret_hash, expires_at, used_at FROM tokens WHERE id = ?", [.text(tokenID)]).first,
                  let hash = token.blob("secret_hash"), HMACSHA256.equal(hash, SHA256.hash(Array(secret.utf8))) else {
                throw RequestSigning.Rejection(status: 401, message: "enrollment token is not known to this controller; create one here with `fleetkeep-controller token create`")
            }
            if token.int("used_at") != nil {
                throw RequestSigning.Rejection(status: 401, message: "enrollment token was already used; tokens are single-use, create a new one")
            }
            if let expires = token.int("expires_at"), expires < now {
                throw RequestSigning.Rejection(status: 401, message: "enrollment token expired; create a new one with `fleetkeep-controller token create`")
            }
            let agentID = RequestSigning.agentID(for: publicKey)
            if try !db.query("SELECT id FROM agents WHERE id = ?", [.text(agentID)]).isEmpty {
                throw RequestSigning.Rejection(status: 409, message: "this agent key is already enrolled")
            }
            try db.run("UPDATE tokens SET used_at = ?, used_by = ? WHERE id = ?", [.integer(now), .text(agentID), .text(tokenID)])
            let stored = try storedForm(facts)
            try db.run("INSERT INTO agents (id, public_key, hostname, hostname_sealed, enrolled_at, last_seen, facts, problems) VALUES (?, ?, '', ?, ?, ?, ?, ?)",
                       [.text(agentID), .blob(publicKey.rawRepresentation), .blob(stored.hostname), .integer(now),
                        .integer(now), .text(stored.facts), .text(Self.json(problems))])
            return agentID
        }
    }

    // MARK: Key escrow

    func depositEscrow(agentID: String, recoveryPublicKey: String, sealedKey: [UInt8], now: Int64) throws {
        try database.run("INSERT INTO escrow (agent_id, created_at, recovery_public_key, sealed_key) VALUES (?, ?, ?, ?)",
                         [.text(agentID), .integer(now), .text(recoveryPublicKey), .blob(sealedKey)])
    }

    /// The newest escrowed repository key of an agent, still sealed to the operator's recovery key.
    public func latestEscrow(agentID: String) throws -> (sealedKey: [UInt8], createdAt: Int64)? {
        guard let row = try database.query("SELECT sealed_key, created_at FROM escrow WHERE agent_id = ? ORDER BY created_at DESC, rowid DESC LIMIT 1",
                                           [.text(agentID)]).first, let sealed = row.blob("sealed_key") else { return nil }
        return (sealed, row.int("created_at") ?? 0)
    }

    // MARK: Agents

    /// The public key of an agent that is enrolled and not removed.
    func activeKey(agentID: String) throws -> Ed25519PublicKey? {
        guard let row = try database.query("SELECT public_key, removed_at FROM agents WHERE id = ?", [.text(agentID)]).first,
              row.int("removed_at") == nil, let raw = row.blob("public_key") else { return nil }
        return try Ed25519PublicKey(rawRepresentation: raw)
    }

    /// Records a heartbeat. The replay floor (`last_request_at`) never passes the controller's own clock: a heartbeat
    /// signed by a clock running ahead must not make the agent's correct heartbeats look replayed after a restart.
    func recordHeartbeat(agentID: String, facts: [String: String], problems: [String: String], now: Int64, signedAt: Int64) throws {
        let stored = try storedForm(facts)
        try database.run("UPDATE agents SET last_seen = ?, last_request_at = MAX(COALESCE(last_request_at, 0), ?), hostname_sealed = ?, facts = ?, problems = ? WHERE id = ? AND removed_at IS NULL",
                         [.integer(now), .integer(min(signedAt, now)), .blob(stored.hostname), .text(stored.facts),
                          .text(Self.json(problems)), .text(agentID)])
    }

    /// Facts as the privacy rules allow them in the database: the host name sealed on its own, the primary address
    /// cut to its /24 or /48, everything else as sent (and already checked against the inventory).
    func storedForm(_ facts: [String: String]) throws -> (facts: String, hostname: [UInt8]) {
        var kept = facts
        let hostname = kept.removeValue(forKey: "hostname") ?? "unknown"
        if let address = kept["primaryIP"] { kept["primaryIP"] = AddressPrivacy.redacted(address) }
        return (Self.json(kept), try keys.seal(hostname, field: "agent.hostname"))
    }

    /// Signed timestamps of the last stored heartbeats at or after `since`, by agent.
    func lastSignedHeartbeats(since: Int64) throws -> [String: Int64] {
        var floors: [String: Int64] = [:]
        for row in try database.query("SELECT id, last_request_at FROM agents WHERE last_request_at >= ? AND removed_at IS NULL", [.integer(since)]) {
            if let id = row.string("id"), let at = row.int("last_request_at") { floors[id] = at }
        }
        return floors
    }

    /// Records the nonce of an Ed25519-signed request; false when it was already used (a replay). Nonces signed more
    /// than `window` seconds before `now` are dropped on the way: their requests are refused by their timestamp.
    func admitSignedNonce(agentID: String, nonce: String, signedAt: Int64, now: Int64, window: Int64) throws -> Bool {
        try database.transaction { database in
            _ = try database.run("DELETE FROM signed_nonces WHERE signed_at < ?", [.integer(now - 2 * window)])
            return try database.run("INSERT INTO signed_nonces (agent_id, nonce, signed_at) VALUES (?, ?, ?) ON CONFLICT DO NOTHING",
                                    [.text(agentID), .text(nonce), .integer(signedAt)]) == 1
        }
    }

    /// Marks an agent removed: its requests are refused from then on.
    public func removeAgent(_ agentID: String, now: Int64 = Int64(Date().timeIntervalSince1970)) throws -> Bool {
        try database.run("UPDATE agents SET removed_at = ? WHERE id = ? AND removed_at IS NULL", [.integer(now), .text(agentID)]) == 1
    }

    /// Agents removed at or after `since` (Unix seconds), so a running server can forget their keys.
    func removedAgents(since: Int64) throws -> [String] {
        try database.query("SELECT id FROM agents WHERE removed_at >= ?", [.integer(since)]).compactMap { $0.string("id") }
    }

    /// One agent's host name, opened.
    func hostname(agentID: String) throws -> String? {
        try keys.open(optional: try database.query("SELECT hostname_sealed FROM agents WHERE id = ?", [.text(agentID)]).first?.blob("hostname_sealed"),
                      field: "agent.hostname")
    }

    /// Every agent, host names opened (a read of personal data: callers that show them record it in the audit log).
    public func agents() throws -> [AgentRecord] {
        try database.query("SELECT * FROM agents ORDER BY id").map { row in
            let hostname = try keys.open(optional: row.blob("hostname_sealed"), field: "agent.hostname") ?? ""
            var facts = Self.decode(row.string("facts"))
            if !hostname.isEmpty { facts["hostname"] = hostname }
            return AgentRecord(agentID: row.string("id") ?? "", hostname: hostname, enrolledAt: row.int("enrolled_at") ?? 0,
                               lastSeen: row.int("last_seen"), removed: row.int("removed_at") != nil,
                               facts: facts, problems: Self.decode(row.string("problems")))
        }.sorted { ($0.hostname, $0.agentID) < ($1.hostname, $1.agentID) }
    }

    static func json(_ value: [String: String]) -> String {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        return String(decoding: (try? encoder.encode(value)) ?? Data("{}".utf8), as: UTF8.self)
    }

    static func decode(_ text: String?) -> [String: String] {
        guard let text, let value = try? JSONDecoder().decode([String: String].self, from: Data(text.utf8)) else { return [:] }
        return value
    }
}
