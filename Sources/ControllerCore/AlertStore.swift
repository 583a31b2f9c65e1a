import Foundation
import SQLite

/// What an alert is about.
public enum AlertCondition: String, Codable, Sendable, CaseIterable {
    /// No successful backup of an account and kind within 26 hours.
    case backupOverdue = "backup-overdue"
    /// No successful off-site push within 8 days.
    case offsiteOverdue = "offsite-overdue"
    /// A job failed after all its retries (any kind but verifications).
    case jobFailed = "job-failed"
    /// The agent missed 3 heartbeat intervals.
    case agentStale = "agent-stale"
    /// A verify or a test restore failed after all its retries.
    case verificationFailed = "verification-failed"
}

/// A condition that holds now. `key` names it exactly (condition, agent and what it is about): an alert fires
/// once per key while it holds.
public struct HeldCondition: Sendable, Equatable {
    public let key: String
    public let condition: AlertCondition
    public let agentID: String
    public let subject: String
    public let detail: String
    public let since: Int64

    public init(key: String, condition: AlertCondition, agentID: String, subject: String, detail: String, since: Int64) {
        self.key = key
        self.condition = condition
        self.agentID = agentID
        self.subject = subject
        self.detail = detail
        self.since = since
    }
}

/// One alert: from when its condition was first seen holding until it cleared.
public struct AlertRecord: Codable, Sendable, Equatable {
    public let id: Int64
    public let key: String
    public let condition: AlertCondition
    public let agentID: String
    public let subject: String
    public let detail: String
    /// When the condition started to hold (e.g. the last successful backup plus 26 hours).
    public let since: Int64
    public let firedAt: Int64
    public let resolvedAt: Int64?
    public var firing: Bool { resolvedAt == nil }
}

/// What a channel is told: an alert fired or resolved (or a test).
public struct AlertEvent: Codable, Sendable, Equatable {
    public enum Kind: String, Codable, Sendable { case firing, resolved, test }
    public let event: Kind
    public let alertID: Int64
    public let key: String
    public let condition: String
    public let agentID: String
    public let subject: String
    public let detail: String
    public let since: Int64
    public let firedAt: Int64
    public let resolvedAt: Int64?

    public init(event: Kind, alert: AlertRecord) {
        self.event = event
        alertID = alert.id
        key = alert.key
        condition = alert.condition.rawValue
        agentID = alert.agentID
        subject = alert.subject
        detail = alert.detail
        since = alert.since
        firedAt = alert.firedAt
        resolvedAt = alert.resolvedAt
    }

    public init(event: Kind, alertID: Int64, key: String, condition: String, agentID: String, subject: String, detail: String, since: Int64,
                firedAt: Int64, resolvedAt: Int64?) {
        self.event = event
        self.alertID = alertID
        self.key = key
        self.condition = condition
        self.agentID = agentID
        self.subject = subject
        self.detail = detail
        self.since = since
        self.firedAt = firedAt
        self.resolvedAt = resolvedAt
    }
}

/// A configured channel. `secret` is the webhook's signing secret or the SMTP password: stored in the database
/// (0600), shown only as a fingerprint.
public struct AlertChannel: Sendable, Equatable {
    public enum Kind: String, Codable, Sendable { case webhook, email }
    public let name: String
    public let kind: Kind
    public let settings: ChannelSettings
    public let secret: String?
    public let createdAt: Int64

    public init(name: String, kind: Kind, settings: ChannelSettings, secret: String?, createdAt: Int64) {
        self.name = name
        self.kind = kind
        self.settings = settings
        self.secret = secret
        self.createdAt = createdAt
    }
}

/// A channel's settings (no secrets).
public struct ChannelSettings: Codable, Sendable, Equatable {
    /// webhook: the URL; email: the SMTP server URL.
    public var url: String
    public var from: String?
    public var to: [String]?
    public var username: String?
    /// `try` (STARTTLS where offered) or `required`.
    public var tls: String?
    public var caFile: String?

    public init(url: String, from: String? = nil, to: [String]? = nil, username: String? = nil, tls: String? = nil, caFile: String? = nil) {
        self.url = url
        self.from = from
        self.to = to
        self.username = username
        self.tls = tls
        self.caFile = caFile
    }
}

/// A notification waiting for (or done with) one channel: the events of one evaluation, sent together.
public struct AlertDelivery: Codable, Sendable {
    public let id: Int64
    public let channel: String
    public let events: [AlertEvent]
    public let createdAt: Int64
    public let attempts: Int
    public let nextAttemptAt: Int64
    public let deliveredAt: Int64?
    public let failedAt: Int64?
    public let lastError: String?
}

/// The alert transitions of one evaluation.
public struct AlertTransitions: Sendable {
    public var fired: [AlertRecord] = []
    public var resolved: [AlertRecord] = []
    public var isEmpty: Bool { fired.isEmpty && resolved.isEmpty }
}

/// Alert state, channels and the delivery queue. SQLite today; another database can implement it.
public protocol AlertStore: Sendable {
    /// Compares the conditions that hold now with the firing alerts, in one transaction: a condition without a
    /// firing alert fires, a firing alert whose condition is gone resolves, and each channel gets one delivery with
    /// these events. Called again with the same conditions, it changes nothing.
    func apply(held: [HeldCondition], now: Int64) throws -> AlertTransitions
    func alerts(includeResolvedSince: Int64?) throws -> [AlertRecord]
    func firingAlerts(agentID: String?) throws -> [AlertRecord]
    /// How many alerts fire, by condition (the dashboard's cards and /metrics).
    func firingCounts() throws -> [AlertCondition: Int]
    /// Up to `limit` firing alerts (of one agent when `agentID` is given), the most recently fired first.
    func firingAlerts(agentID: String?, limit: Int) throws -> [AlertRecord]
    /// Up to `limit` alerts resolved at or after `since`, the most recently resolved first.
    func resolvedAlerts(since: Int64, limit: Int) throws -> [AlertRecord]

    func addChannel(_ channel: AlertChannel) throws -> Bool
    func removeChannel(_ name: String, now: Int64) throws -> Bool
    func channels() throws -> [AlertChannel]
    func channel(_ name: String) throws -> AlertChannel?

    func dueDeliveries(now: Int64, limit: Int) throws -> [AlertDelivery]
    func markDelivered(_ id: Int64, now: Int64) throws
    /// Records a failed attempt: tried again at `retryAt`, or given up when nil.
    func markFailed(_ id: Int64, error: String, retryAt: Int64?, now: Int64) throws
    func deliveries(channel: String?, limit: Int) throws -> [AlertDelivery]

    /// Failing jobs and verifications (`job-failed`, `verification-failed`), kept from the job ends seen so far.
    func jobConditions() throws -> [HeldCondition]
    /// Applies job ends: `set` conditions hold from now on, `cleared` keys no longer hold; `cursor` is the last end seen.
    func updateJobConditions(set: [HeldCondition], cleared: [String], cursor: Int64) throws
    func jobConditionCursor() throws -> Int64
}

/// `AlertStore` in the controller's SQLite database (migrations 401 and 402).
public final class SQLiteAlertStore: AlertStore {
    let database: Database
    /// Events in one delivery; more go into further deliveries of the same evaluation.
    static let eventsPerDelivery = 100

    static let migrations = [
        Migration(version: 401, sql: """
            CREATE TABLE alerts (id INTEGER PRIMARY KEY AUTOINCREMENT, key TEXT NOT NULL, condition TEXT NOT NULL, agent_id TEXT NOT NULL,
                                 subject TEXT NOT NULL, detail TEXT NOT NULL, since INTEGER NOT NULL, fired_at INTEGER NOT NULL, resolved_at INTEGER);
            CREATE UNIQUE INDEX alerts_firing ON alerts (key) WHERE resolved_at IS NULL;
            CREATE INDEX alerts_resolved ON alerts (resolved_at);
            CREATE TABLE alert_channels (name TEXT PRIMARY KEY, kind TEXT NOT NULL, settings TEXT NOT NULL, secret TEXT, created_at INTEGER NOT NULL);
            CREATE TABLE alert_deliveries (id INTEGER PRIMARY KEY AUTOINCREMENT, channel TEXT NOT NULL, events TEXT NOT NULL, created_at INTEGER NOT NULL,
                                           attempts INTEGER NOT NULL DEFAULT 0, next_attempt_at INTEGER NOT NULL, delivered_at INTEGER,
                                           failed_at INTEGER, last_error TEXT);
            CREATE INDEX alert_deliveries_due ON alert_deliveries (next_attempt_at) WHERE delivered_at IS NULL AND failed_at IS NULL;
            CREATE INDEX alert_deliveries_channel ON alert_deliveries (channel, id);
            CREATE TABLE alert_job_conditions (key TEXT PRIMARY KEY, condition TEXT NOT NULL, agent_id TEXT NOT NULL, subject TEXT NOT NULL,
                                               detail TEXT NOT NULL, since INTEGER NOT NULL);
            CREATE TABLE alert_state (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
            """),
        // The dashboard reads one agent's firing alerts on its page, and the newest firing ones on the overview.
        Migration(version: 402, sql: """
            CREATE INDEX alerts_firing_agent ON alerts (agent_id, fired_at) WHERE resolved_at IS NULL;
            CREATE INDEX alerts_firing_fired ON alerts (fired_at) WHERE resolved_at IS NULL;
            """),
    ]

    public init(database: Database) throws {
        self.database = database
        try database.migrate(Self.migrations)
    }

    public func apply(held: [HeldCondition], now: Int64) throws -> AlertTransitions {
        try database.transaction { db in
            let firing = try db.query("SELECT * FROM alerts WHERE resolved_at IS NULL").compactMap(Self.alert)
            let firingKeys = Set(firing.map(\.key))
            var heldKeys = Set<String>()
            var transitions = AlertTransitions()
            for condition in held where heldKeys.insert(condition.key).inserted && !firingKeys.contains(condition.key) {
                try db.run("INSERT INTO alerts (key, condition, agent_id, subject, detail, since, fired_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                           [.text(condition.key), .text(condition.condition.rawValue), .text(condition.agentID), .text(condition.subject),
                            .text(condition.detail), .integer(condition.since), .integer(now)])
                transitions.fired.append(AlertRecord(id: db.lastInsertRowID, key: condition.key, condition: condition.condition, agentID: condition.agentID,
                                                     subject: condition.subject, detail: condition.detail, since: condition.since, firedAt: now, resolvedAt: nil))
            }
            for alert in firing where !heldKeys.contains(alert.key) {
                try db.run("UPDATE alerts SET resolved_at = ? WHERE id = ?", [.integer(now), .integer(alert.id)])
                transitions.resolved.append(AlertRecord(id: alert.id, key: alert.key, condition: alert.condition, agentID: alert.agentID, subject: alert.subject,
                                                        detail: alert.detail, since: alert.since, firedAt: alert.firedAt, resolvedAt: now))
            }
            let events = transitions.fired.map { AlertEvent(event: .firing, alert: $0) } + transitions.resolved.map { AlertEvent(event: .resolved, alert: $0) }
            if !events.isEmpty {
                let channels = try db.query("SELECT name FROM alert_channels ORDER BY name").compactMap { $0.string("name") }
                for channel in channels {
                    for start in stride(from: 0, to: events.count, by: Self.eventsPerDelivery) {
                        let batch = Array(events[start..<min(start + Self.eventsPerDelivery, events.count)])
                        try db.run("INSERT INTO alert_deliveries (channel, events, created_at, next_attempt_at) VALUES (?, ?, ?, ?)",
                                   [.text(channel), .text(SQLiteJobStore.json(batch)), .integer(now), .integer(now)])
                    }
                }
            }
            return transitions
        }
    }

    public func alerts(includeResolvedSince: Int64?) throws -> [AlertRecord] {
        if let since = includeResolvedSince {
            return try database.query("SELECT * FROM alerts WHERE resolved_at IS NULL OR resolved_at >= ? ORDER BY fired_at DESC, id DESC",
                                      [.integer(since)]).compactMap(Self.alert)
        }
        return try firingAlerts(agentID: nil)
    }

    public func firingAlerts(agentID: String?) throws -> [AlertRecord] {
        if let agentID {
            return try database.query("SELECT * FROM alerts WHERE resolved_at IS NULL AND agent_id = ? ORDER BY fired_at, id", [.text(agentID)]).compactMap(Self.alert)
        }
        return try database.query("SELECT * FROM alerts WHERE resolved_at IS NULL ORDER BY fired_at, id").compactMap(Self.alert)
    }

    public func firingCounts() throws -> [AlertCondition: Int] {
        var counts: [AlertCondition: Int] = [:]
        for row in try database.query("SELECT condition, count(*) AS n FROM alerts WHERE resolved_at IS NULL GROUP BY condition") {
            guard let condition = row.string("condition").flatMap(AlertCondition.init) else { continue }
            counts[condition, default: 0] += Int(clamping: row.int("n") ?? 0)
        }
        return counts
    }

    public func firingAlerts(agentID: String?, limit: Int) throws -> [AlertRecord] {
        let bounded = max(1, min(limit, 10_000))
        if let agentID {
            return try database.query("SELECT * FROM alerts WHERE resolved_at IS NULL AND agent_id = ? ORDER BY fired_at DESC, id DESC LIMIT \(bounded)",
                                      [.text(agentID)]).compactMap(Self.alert)
        }
        return try database.query("SELECT * FROM alerts WHERE resolved_at IS NULL ORDER BY fired_at DESC, id DESC LIMIT \(bounded)").compactMap(Self.alert)
    }

    public func resolvedAlerts(since: Int64, limit: Int) throws -> [AlertRecord] {
        try database.query("SELECT * FROM alerts WHERE resolved_at >= ? ORDER BY resolved_at DESC, id DESC LIMIT \(max(1, min(limit, 10_000)))",
                           [.integer(since)]).compactMap(Self.alert)
    }

    public func addChannel(_ channel: AlertChannel) throws -> Bool {
        try database.run("INSERT INTO alert_channels (name, kind, settings, secret, created_at) VALUES (?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                         [.text(channel.name), .text(channel.kind.rawValue), .text(SQLiteJobStore.json(channel.settings)), .optional(channel.secret),
                          .integer(channel.createdAt)]) == 1
    }

    public func removeChannel(_ name: String, now: Int64) throws -> Bool {
        try database.transaction { db in
            _ = try db.run("UPDATE alert_deliveries SET failed_at = ?, last_error = 'channel removed' WHERE channel = ? AND delivered_at IS NULL AND failed_at IS NULL",
                           [.integer(now), .text(name)])
            return try db.run("DELETE FROM alert_channels WHERE name = ?", [.text(name)]) == 1
        }
    }

    public func channels() throws -> [AlertChannel] {
        try database.query("SELECT * FROM alert_channels ORDER BY name").compactMap(Self.channel)
    }

    public func channel(_ name: String) throws -> AlertChannel? {
        try database.query("SELECT * FROM alert_channels WHERE name = ?", [.text(name)]).first.flatMap(Self.channel)
    }

    public func dueDeliveries(now: Int64, limit: Int) throws -> [AlertDelivery] {
        try database.query("""
            SELECT * FROM alert_deliveries WHERE delivered_at IS NULL AND failed_at IS NULL AND next_attempt_at <= ?
            ORDER BY next_attempt_at, id LIMIT \(max(1, min(limit, 10_000)))
            """, [.integer(now)]).compactMap(Self.delivery)
    }

    public func markDelivered(_ id: Int64, now: Int64) throws {
        try database.run("UPDATE alert_deliveries SET delivered_at = ?, attempts = attempts + 1, last_error = NULL WHERE id = ?", [.integer(now), .integer(id)])
    }

    public func markFailed(_ id: Int64, error: String, retryAt: Int64?, now: Int64) throws {
        try database.run("""
            UPDATE alert_deliveries SET attempts = attempts + 1, last_error = ?, next_attempt_at = COALESCE(?, next_attempt_at),
                                        failed_at = CASE WHEN ? IS NULL THEN ? ELSE NULL END WHERE id = ?
            """, [.text(String(error.prefix(1024))), .optional(retryAt), .optional(retryAt), .integer(now), .integer(id)])
    }

    public func deliveries(channel: String?, limit: Int) throws -> [AlertDelivery] {
        let bounded = max(1, min(limit, 10_000))
        if let channel {
            return try database.query("SELECT * FROM alert_deliveries WHERE channel = ? ORDER BY id DESC LIMIT \(bounded)", [.text(channel)]).compactMap(Self.delivery)
        }
        return try database.query("SELECT * FROM alert_deliveries ORDER BY id DESC LIMIT \(bounded)").compactMap(Self.delivery)
    }

    public func jobConditions() throws -> [HeldCondition] {
        try database.query("SELECT * FROM alert_job_conditions ORDER BY key").compactMap { row in
            guard let key = row.string("key"), let condition = row.string("condition").flatMap(AlertCondition.init), let agent = row.string("agent_id"),
                  let subject = row.string("subject"), let detail = row.string("detail"), let since = row.int("since") else { return nil }
            return HeldCondition(key: key, condition: condition, agentID: agent, subject: subject, detail: detail, since: since)
        }
    }

    public func updateJobConditions(set: [HeldCondition], cleared: [String], cursor: Int64) throws {
        try database.transaction { db in
            for key in cleared { try db.run("DELETE FROM alert_job_conditions WHERE key = ?", [.text(key)]) }
            for condition in set {
                // A later failure of a condition already holding keeps its start and takes the newer detail.
                try db.run("""
                    INSERT INTO alert_job_conditions (key, condition, agent_id, subject, detail, since) VALUES (?, ?, ?, ?, ?, ?)
                    ON CONFLICT (key) DO UPDATE SET detail = excluded.detail, subject = excluded.subject
                    """, [.text(condition.key), .text(condition.condition.rawValue), .text(condition.agentID), .text(condition.subject),
                          .text(condition.detail), .integer(condition.since)])
            }
            try db.run("INSERT INTO alert_state (name, value) VALUES ('job_cursor', ?) ON CONFLICT (name) DO UPDATE SET value = excluded.value",
                       [.integer(cursor)])
        }
    }

    public func jobConditionCursor() throws -> Int64 {
        try database.query("SELECT value FROM alert_state WHERE name = 'job_cursor'").first?.int("value") ?? 0
    }

    static func alert(_ row: Row) -> AlertRecord? {
        guard let id = row.int("id"), let key = row.string("key"), let condition = row.string("condition").flatMap(AlertCondition.init),
              let agent = row.string("agent_id"), let subject = row.string("subject"), let detail = row.string("detail"),
              let since = row.int("since"), let fired = row.int("fired_at") else { return nil }
        return AlertRecord(id: id, key: key, condition: condition, agentID: agent, subject: subject, detail: detail, since: since, firedAt: fired,
                           resolvedAt: row.int("resolved_at"))
    }

    static func channel(_ row: Row) -> AlertChannel? {
        guard let name = row.string("name"), let kind = row.string("kind").flatMap(AlertChannel.Kind.init),
              let settings = SQLiteJobStore.decode(ChannelSettings.self, row.string("settings")) else { return nil }
        return AlertChannel(name: name, kind: kind, settings: settings, secret: row.string("secret"), createdAt: row.int("created_at") ?? 0)
    }

    static func delivery(_ row: Row) -> AlertDelivery? {
        guard let id = row.int("id"), let channel = row.string("channel"), let events = SQLiteJobStore.decode([AlertEvent].self, row.string("events")) else {
            return nil
        }
        return AlertDelivery(id: id, channel: channel, events: events, createdAt: row.int("created_at") ?? 0, attempts: Int(row.int("attempts") ?? 0),
                             nextAttemptAt: row.int("next_attempt_at") ?? 0, deliveredAt: row.int("delivered_at"), failedAt: row.int("failed_at"),
                             lastError: row.string("last_error"))
    }
}
