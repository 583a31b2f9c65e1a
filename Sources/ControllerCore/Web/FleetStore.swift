import FleetkeepProtocol
import Foundation
import SQLite
import Synchronization

/// Whether an agent's heartbeats arrive: online until it misses three heartbeat intervals.
public enum AgentLiveness: String, Codable, Sendable, CaseIterable {
    case online, stale
}

/// An agent's backups at a glance: the latest finished backup failed; or none succeeded within 26 h (overdue); or
/// one did (ok); or the agent is new and has had no backup yet (pending).
public enum BackupHealth: String, Codable, Sendable, CaseIterable {
    case ok, overdue, failed, pending
}

/// The times the fleet is graded against.
public struct FleetThresholds: Sendable {
    public let now: Int64
    /// Seen at or after this: online.
    public let onlineSince: Int64
    /// A backup that succeeded at or after this is fresh.
    public let backupFreshSince: Int64

    /// Same threshold as the alerts' "no successful backup within 26 h".
    public static let backupFreshSeconds: Int64 = 26 * 3600

    public init(now: Int64, heartbeatInterval: Int64) {
        self.now = now
        onlineSince = now - 3 * heartbeatInterval
        backupFreshSince = now - Self.backupFreshSeconds
    }
}

public struct FleetSummary: Sendable, Equatable {
    public var liveness: [AgentLiveness: Int] = [:]
    public var backups: [BackupHealth: Int] = [:]
    public var total: Int { liveness.values.reduce(0, +) }
}

public enum AgentSort: String, Sendable, CaseIterable {
    case host, seen, status, backup, os, version
}

public struct AgentTableQuery: Sendable {
    public var search = ""
    public var sort = AgentSort.host
    public var descending = false
    /// 1-based.
    public var page = 1
    public var pageSize = 50
    public init() {}
}

public struct AgentRow: Sendable {
    public let agentID: String
    public let hostname: String
    public let os: String
    public let panel: String
    public let agentVersion: String
    public let lastSeen: Int64?
    public let liveness: AgentLiveness
    public let backup: BackupHealth
    public let lastBackupAt: Int64?
    public let licence: String?
}

public struct AgentTablePage: Sendable {
    public let rows: [AgentRow]
    /// Agents matching the search.
    public let matching: Int
}

/// One backup of the agent's history, for its charts.
public struct BackupPoint: Sendable, Equatable {
    public let finishedAt: Int64
    public let durationSeconds: Int64
    public let bytesAdded: Int64
    /// The repository's size on disk after the backup (agents before 0.2 do not report it).
    public let repositoryBytes: Int64?
}

/// Finished backups of one day, fleet-wide.
public struct DailyOutcome: Sendable, Equatable {
    /// Unix day (seconds / 86400).
    public let day: Int64
    public let succeeded: Int
    public let finished: Int
}

/// A snapshot the controller heard of in a backup result (a restore can be started from it).
public struct KnownSnapshot: Sendable, Equatable {
    public let id: String
    public let at: Int64
    public let account: String?
    /// files, databases or email, when the agent said.
    public let kind: String?
}

/// The backup state of one account and kind (account "*": every account of the server, as whole-server backups
/// report it today).
public struct BackupCoverage: Sendable, Equatable {
    public let agentID: String
    public let account: String
    public let kind: String
    /// Since when it counts: its first success is due 26 h after this (enrollment, or when first seen).
    public let since: Int64
    public let lastSuccessAt: Int64?
    public let lastFailureAt: Int64?
    public let lastError: String?
}

/// What the dashboard and /metrics read about the fleet. Queries grade agents in SQL, so a page of the agent table
/// costs the same at 10,000 agents as at 10.
public protocol FleetStore: Sendable {
    func summary(_ thresholds: FleetThresholds) throws -> FleetSummary
    func agentTable(_ query: AgentTableQuery, _ thresholds: FleetThresholds) throws -> AgentTablePage
    /// Agents that are stale or whose backups are overdue or failed, worst first.
    func troubled(_ thresholds: FleetThresholds, limit: Int) throws -> [AgentRow]
    func agent(_ agentID: String) throws -> AgentRecord?
    func agentRow(_ agentID: String, _ thresholds: FleetThresholds) throws -> AgentRow?
    func licenceStates(now: Int64) throws -> [String: Int]
    func backupHistory(agentID: String, since: Int64) throws -> [BackupPoint]
    func dailyOutcomes(since: Int64) throws -> [DailyOutcome]
    func knownSnapshots(agentID: String, limit: Int) throws -> [KnownSnapshot]
    /// One of the snapshots the controller heard of (among the agent's latest 50 finished backups).
    func snapshot(agentID: String, id: String) throws -> KnownSnapshot?
    func jobCounts() throws -> [(kind: String, state: String, count: Int)]
}

/// Per account and kind backup state: from the accounts and kinds backup results name, or, for an agent that has
/// reported none, per kind from its whole-server backup jobs.
public protocol BackupCoverageSource: Sendable {
    func coverage(agentID: String) throws -> [BackupCoverage]
    /// Per active agent, the last successes of whole-server backups (one entry per kind; failures are left out).
    func fleetCoverage() throws -> [BackupCoverage]
}

/// Host names opened from their sealed form, remembered by sealed bytes: sorting or searching 10,000 agents by host
/// name opens only the names sealed anew since the last page (a heartbeat seals its host name again). The plain
/// names stay in this process's memory, as they would for the page being rendered; at most `limit` are kept.
final class HostnameOpener: Sendable {
    let keys: PrivacyKeys?
    private let opened = Mutex<[[UInt8]: String]>([:])
    static let limit = 50_000

    init(keys: PrivacyKeys?) { self.keys = keys }

    /// The sealed name opened, or `clear` (a database without privacy keys, as some tests build, or a row without
    /// a sealed name). A name that does not open (a wrong key) reads as empty: the page still renders.
    func name(sealed: [UInt8]?, clear: String) -> String {
        guard let keys, let sealed else { return clear }
        if let known = opened.withLock({ $0[sealed] }) { return known }
        let name = (try? keys.open(sealed, field: "agent.hostname")) ?? ""
        opened.withLock { cache in
            if cache.count >= Self.limit { cache.removeAll(keepingCapacity: true) }
            cache[sealed] = name
        }
        return name
    }
}

/// `FleetStore` and `BackupCoverageSource` on the controller's SQLite database.
public final class SQLiteFleetStore: FleetStore, BackupCoverageSource {
    let database: Database
    /// Opens the host names, which the privacy work stores sealed (`agents.hostname_sealed`); nil reads the clear
    /// column (a database without privacy keys, as some tests build).
    let keys: PrivacyKeys?
    /// The summary of the current second: a page and its alerts grade the fleet once.
    private let recentSummary = Mutex<(key: [Int64], summary: FleetSummary)?>(nil)

    /// The SQL function that gives a row's host name, opened (`hostname_sealed`, `hostname`): registered per
    /// store, so another store on the same connection, with other keys, cannot replace it.
    let hostnameFunction: String
    /// Every active agent with its grades; see `gradedSQL`.
    let graded: String

    private static let instances = Atomic<Int>(0)

    public init(database: Database, keys: PrivacyKeys? = nil) throws {
        self.database = database
        self.keys = keys
        try DashboardSchema.apply(to: database)
        // Per account coverage is read from the table backup results fill (`backup_coverage`).
        _ = try SQLiteBackupStatusStore(database: database)
        let opener = HostnameOpener(keys: keys)
        hostnameFunction = "fleetkeep_hostname_\(Self.instances.add(1, ordering: .relaxed).newValue)"
        graded = Self.gradedSQL(hostname: "\(hostnameFunction)(a.hostname_sealed, a.hostname)")
        // Searching and sorting by host name happen in SQL over every agent, so SQL must see the names opened.
        try database.createFunction(hostnameFunction, argumentCount: 2) { arguments in
            guard arguments.count == 2 else { return .null }
            let sealed: [UInt8]? = if case .blob(let bytes) = arguments[0], !bytes.isEmpty { bytes } else { nil }
            let clear: String = if case .text(let text) = arguments[1] { text } else { "" }
            return .text(opener.name(sealed: sealed, clear: clear))
        }
    }

    /// A row's host name, as the queries below select it (opened by the SQL function).
    func hostname(_ row: Row) -> String { row.string("hostname") ?? "" }

    /// Every active agent with its grades. The three MAX subqueries are one index seek each
    /// (`dashboard_jobs_agent_kind_finished`).
    static func gradedSQL(hostname: String) -> String {
        """
        WITH fleet AS (
          SELECT a.id, \(hostname) AS hostname, a.last_seen, a.enrolled_at, a.facts,
            (SELECT MAX(finished_at) FROM jobs j WHERE j.agent_id = a.id AND j.kind = 'backup' AND j.state = 'succeeded') AS last_ok,
            MAX(COALESCE((SELECT MAX(finished_at) FROM jobs j WHERE j.agent_id = a.id AND j.kind = 'backup' AND j.state = 'failed'), 0),
                COALESCE((SELECT MAX(finished_at) FROM jobs j WHERE j.agent_id = a.id AND j.kind = 'backup' AND j.state = 'expired'), 0)) AS last_bad
          FROM agents a WHERE a.removed_at IS NULL
        ), graded AS (
          SELECT *, CASE WHEN last_seen >= :online THEN 'online' ELSE 'stale' END AS liveness,
            CASE WHEN last_bad > COALESCE(last_ok, 0) THEN 'failed'
                 WHEN last_ok >= :fresh THEN 'ok'
                 WHEN COALESCE(last_ok, enrolled_at) < :fresh THEN 'overdue'
                 ELSE 'pending' END AS backup
          FROM fleet
        )
        """
    }

    static func bindings(_ thresholds: FleetThresholds) -> [SQLValue] { [.integer(thresholds.onlineSince), .integer(thresholds.backupFreshSince)] }

    public func summary(_ thresholds: FleetThresholds) throws -> FleetSummary {
        let key = [thresholds.now, thresholds.onlineSince, thresholds.backupFreshSince]
        if let recent = recentSummary.withLock({ $0 }), recent.key == key { return recent.summary }
        var summary = FleetSummary()
        for row in try database.query(graded + " SELECT liveness, backup, count(*) AS n FROM graded GROUP BY liveness, backup",
                                      Self.bindings(thresholds)) {
            let count = Int(clamping: row.int("n") ?? 0)
            if let liveness = row.string("liveness").flatMap(AgentLiveness.init) { summary.liveness[liveness, default: 0] += count }
            if let backup = row.string("backup").flatMap(BackupHealth.init) { summary.backups[backup, default: 0] += count }
        }
        recentSummary.withLock { $0 = (key, summary) }
        return summary
    }

    static let columns = """
        id, hostname, last_seen, liveness, backup, last_ok,
        json_extract(facts, '$.osName') AS os_name, json_extract(facts, '$.osVersion') AS os_version,
        json_extract(facts, '$.panel') AS panel, json_extract(facts, '$.panelVersion') AS panel_version,
        json_extract(facts, '$.agentVersion') AS agent_version,
        (SELECT licence_id FROM licence_seats s WHERE s.agent_id = graded.id AND s.released_at IS NULL) AS licence
        """

    public func agentTable(_ query: AgentTableQuery, _ thresholds: FleetThresholds) throws -> AgentTablePage {
        let direction = query.descending ? "DESC" : "ASC"
        let order: String
        switch query.sort {
        case .host: order = "hostname COLLATE NOCASE \(direction), id"
        case .seen: order = "last_seen \(direction), id"
        case .status: order = "liveness \(direction), hostname COLLATE NOCASE, id"
        case .backup:
            order = "CASE backup WHEN 'failed' THEN 0 WHEN 'overdue' THEN 1 WHEN 'pending' THEN 2 ELSE 3 END \(direction), hostname COLLATE NOCASE, id"
        case .os: order = "json_extract(facts, '$.osName') \(direction), json_extract(facts, '$.osVersion') \(direction), hostname COLLATE NOCASE, id"
        case .version: order = "json_extract(facts, '$.agentVersion') \(direction), hostname COLLATE NOCASE, id"
        }
        let pageSize = max(1, min(query.pageSize, 500))
        let (offset, overflow) = (max(1, query.page) - 1).multipliedReportingOverflow(by: pageSize)
        guard !overflow else { throw DashboardError.invalidInput("page is out of range") }
        let pattern = "%" + Self.likeEscaped(query.search) + "%"
        let filter = query.search.isEmpty ? "" : "WHERE hostname LIKE :pattern ESCAPE '\\' OR id LIKE :pattern ESCAPE '\\'"
        var bindings = Self.bindings(thresholds)
        if !query.search.isEmpty { bindings.append(.text(pattern)) }
        // First the page's ids in order (sorting 10,000 narrow rows), then the columns shown for those 50 only.
        let ids = try database.query(graded + """
             SELECT id, count(*) OVER () AS matching FROM graded \(filter) ORDER BY \(order) LIMIT \(pageSize) OFFSET \(offset)
            """, bindings)
        let matching: Int
        if let first = ids.first {
            matching = Int(clamping: first.int("matching") ?? 0)
        } else {
            // The page is past the end: count on its own, so the page can say how many there are.
            matching = Int(clamping: try database.query(graded + " SELECT count(*) AS n FROM graded \(filter)", bindings).first?.int("n") ?? 0)
        }
        let wanted = ids.compactMap { $0.string("id") }
        guard !wanted.isEmpty else { return AgentTablePage(rows: [], matching: matching) }
        let placeholders = wanted.map { _ in "?" }.joined(separator: ",")
        let graded = self.graded.replacingOccurrences(of: "FROM agents a WHERE a.removed_at IS NULL", with: "FROM agents a WHERE a.removed_at IS NULL AND a.id IN (\(placeholders))")
        let rows = try database.query(graded + " SELECT \(Self.columns) FROM graded", wanted.map(SQLValue.text) + Self.bindings(thresholds))
        let byID = Dictionary(rows.compactMap(agentRow).map { ($0.agentID, $0) }, uniquingKeysWith: { first, _ in first })
        return AgentTablePage(rows: wanted.compactMap { byID[$0] }, matching: matching)
    }

    public func troubled(_ thresholds: FleetThresholds, limit: Int) throws -> [AgentRow] {
        try database.query(graded + """
             SELECT \(Self.columns) FROM graded WHERE liveness = 'stale' OR backup IN ('failed', 'overdue')
             ORDER BY CASE backup WHEN 'failed' THEN 0 WHEN 'overdue' THEN 1 ELSE 2 END, liveness DESC, hostname COLLATE NOCASE, id
             LIMIT \(max(1, min(limit, 1000)))
            """, Self.bindings(thresholds)).compactMap(agentRow)
    }

    public func agentRow(_ agentID: String, _ thresholds: FleetThresholds) throws -> AgentRow? {
        try database.query(graded + " SELECT \(Self.columns) FROM graded WHERE id = :agent",
                           Self.bindings(thresholds) + [.text(agentID)]).first.flatMap(agentRow)
    }

    /// `%`, `_` and the escape character itself match literally.
    static func likeEscaped(_ text: String) -> String {
        text.replacingOccurrences(of: "\\", with: "\\\\").replacingOccurrences(of: "%", with: "\\%").replacingOccurrences(of: "_", with: "\\_")
    }

    func agentRow(_ row: Row) -> AgentRow? {
        guard let id = row.string("id"), let liveness = row.string("liveness").flatMap(AgentLiveness.init),
              let backup = row.string("backup").flatMap(BackupHealth.init) else { return nil }
        let panel = row.string("panel") ?? "unknown"
        return AgentRow(agentID: id, hostname: hostname(row),
                        os: [row.string("os_name"), row.string("os_version")].compactMap { $0 }.joined(separator: " "),
                        panel: panel == "none" ? "none" : "\(panel) \(row.string("panel_version") ?? "")".trimmingCharacters(in: .whitespaces),
                        agentVersion: row.string("agent_version") ?? "", lastSeen: row.int("last_seen"), liveness: liveness, backup: backup,
                        lastBackupAt: row.int("last_ok"), licence: row.string("licence"))
    }

    public func agent(_ agentID: String) throws -> AgentRecord? {
        guard let row = try database.query("SELECT *, \(hostnameFunction)(hostname_sealed, hostname) AS opened_hostname FROM agents WHERE id = ?",
                                           [.text(agentID)]).first else { return nil }
        return AgentRecord(agentID: row.string("id") ?? "", hostname: row.string("opened_hostname") ?? "", enrolledAt: row.int("enrolled_at") ?? 0,
                           lastSeen: row.int("last_seen"), removed: row.int("removed_at") != nil,
                           facts: ControllerStore.decode(row.string("facts")), problems: ControllerStore.decode(row.string("problems")))
    }

    public func licenceStates(now: Int64) throws -> [String: Int] {
        var counts: [String: Int] = [:]
        for row in try database.query("SELECT state, expires_at FROM licences") {
            guard let state = row.string("state").flatMap(LicenceState.init) else { continue }
            let licence = Licence(id: "", verifierHash: [], customerID: 0, tier: "", maxServers: 0, issuedAt: 0, expiresAt: row.int("expires_at"), state: state)
            counts[licence.effectiveStatus(now: now), default: 0] += 1
        }
        return counts
    }

    public func backupHistory(agentID: String, since: Int64) throws -> [BackupPoint] {
        try database.query("""
            SELECT finished_at, json_extract(outcome, '$.durationSeconds') AS duration, json_extract(outcome, '$.bytesAdded') AS bytes,
                   json_extract(outcome, '$.repositoryBytes') AS repository
            FROM jobs WHERE agent_id = ? AND kind = 'backup' AND state = 'succeeded' AND finished_at >= ? ORDER BY finished_at
            """, [.text(agentID), .integer(since)]).compactMap { row in
            guard let at = row.int("finished_at") else { return nil }
            return BackupPoint(finishedAt: at, durationSeconds: max(0, row.int("duration") ?? 0), bytesAdded: max(0, row.int("bytes") ?? 0),
                               repositoryBytes: row.int("repository").map { max(0, $0) })
        }
    }

    public func dailyOutcomes(since: Int64) throws -> [DailyOutcome] {
        try database.query("""
            SELECT finished_at / 86400 AS day, sum(state = 'succeeded') AS succeeded, count(*) AS finished FROM jobs
            WHERE kind = 'backup' AND state IN ('succeeded', 'failed', 'expired') AND finished_at >= ? GROUP BY day ORDER BY day
            """, [.integer(since)]).compactMap { row in
            guard let day = row.int("day") else { return nil }
            return DailyOutcome(day: day, succeeded: Int(clamping: row.int("succeeded") ?? 0), finished: Int(clamping: row.int("finished") ?? 0))
        }
    }

    public func knownSnapshots(agentID: String, limit: Int) throws -> [KnownSnapshot] {
        var snapshots: [KnownSnapshot] = []
        var seen = Set<String>()
        for row in try database.query("""
            SELECT finished_at, json_extract(parameters, '$.account') AS account, json_extract(outcome, '$.snapshots') AS snapshots,
                   json_extract(outcome, '$.snapshotItems') AS items FROM jobs
            WHERE agent_id = ? AND kind = 'backup' AND state IN ('succeeded', 'failed') ORDER BY finished_at DESC, id DESC LIMIT 50
            """, [.text(agentID)]) {
            // A failed run may still have saved some accounts: their snapshots are as good as any.
            guard let at = row.int("finished_at"), let text = row.string("snapshots"),
                  let ids = try? JSONDecoder().decode([String].self, from: Data(text.utf8)) else { continue }
            // Which account and kind each snapshot holds, where the agent said (agents before 0.2 did not).
            let items = row.string("items").flatMap { try? JSONDecoder().decode([SnapshotItem].self, from: Data($0.utf8)) } ?? []
            let byID = Dictionary(items.map { ($0.id, $0) }, uniquingKeysWith: { first, _ in first })
            for id in ids where snapshots.count < limit && seen.insert(id).inserted {
                snapshots.append(KnownSnapshot(id: id, at: at, account: byID[id]?.account ?? row.string("account"), kind: byID[id]?.kind))
            }
            if snapshots.count >= limit { break }
        }
        return snapshots
    }

    public func snapshot(agentID: String, id: String) throws -> KnownSnapshot? {
        try knownSnapshots(agentID: agentID, limit: 1000).first { $0.id == id }
    }

    public func jobCounts() throws -> [(kind: String, state: String, count: Int)] {
        try database.query("SELECT kind, state, count(*) AS n FROM jobs GROUP BY kind, state").compactMap { row in
            guard let kind = row.string("kind"), let state = row.string("state") else { return nil }
            return (kind, state, Int(clamping: row.int("n") ?? 0))
        }
    }

    // MARK: Coverage derived from backup jobs

    static let kinds = ["files", "databases", "email"]

    /// The newest finished backup of the whole server that included `kind`, in `states`: walks the agent's jobs from
    /// the newest, so it stops at the first match.
    static func lastWholeServer(_ kind: String, states: String, column: String) -> String {
        """
        (SELECT \(column) FROM jobs j WHERE j.agent_id = a.id AND j.kind = 'backup' AND j.state IN (\(states))
           AND json_extract(j.parameters, '$.account') IS NULL
           AND (json_extract(j.parameters, '$.kinds') IS NULL OR EXISTS (SELECT 1 FROM json_each(j.parameters, '$.kinds') WHERE value = '\(kind)'))
         ORDER BY j.finished_at DESC LIMIT 1)
        """
    }

    static func wholeServerCoverage(where filter: String, failures: Bool) -> String {
        let parts = kinds.map { kind in
            let failed = failures ? """
                \(lastWholeServer(kind, states: "'failed', 'expired'", column: "finished_at")) AS last_bad,
                \(lastWholeServer(kind, states: "'failed', 'expired'", column: "COALESCE(json_extract(j.outcome, '$.error'), 'no result within its timeout')")) AS last_error
                """ : "NULL AS last_bad, NULL AS last_error"
            return """
                SELECT a.id AS agent_id, '\(kind)' AS kind, a.enrolled_at AS since,
                  \(lastWholeServer(kind, states: "'succeeded'", column: "finished_at")) AS last_ok, \(failed)
                FROM agents a WHERE a.removed_at IS NULL \(filter)
                """
        }
        return parts.joined(separator: " UNION ALL ")
    }

    static func coverage(_ row: Row, account: String) -> BackupCoverage? {
        guard let agent = row.string("agent_id"), let kind = row.string("kind"), let since = row.int("since") else { return nil }
        return BackupCoverage(agentID: agent, account: account, kind: kind, since: since, lastSuccessAt: row.int("last_ok"),
                              lastFailureAt: row.int("last_bad"), lastError: row.int("last_bad") == nil ? nil : row.string("last_error"))
    }

    /// Each account and kind as backup results reported them (`backup_coverage`, kept by `SQLiteBackupStatusStore`).
    static let reportedCoverage = """
        SELECT c.agent_id, c.account, c.kind, c.first_seen_at AS since, c.last_success_at AS last_ok, c.last_failure_at AS last_bad,
               c.last_error FROM backup_coverage c JOIN agents a ON a.id = c.agent_id WHERE a.removed_at IS NULL
        """
    static let withoutReportedCoverage = "AND NOT EXISTS (SELECT 1 FROM backup_coverage c WHERE c.agent_id = a.id)"

    static func reported(_ row: Row) -> BackupCoverage? {
        guard let agent = row.string("agent_id"), let account = row.string("account"), let kind = row.string("kind"), let since = row.int("since") else { return nil }
        return BackupCoverage(agentID: agent, account: account, kind: kind, since: since, lastSuccessAt: row.int("last_ok"),
                              lastFailureAt: row.int("last_bad"), lastError: row.int("last_bad") == nil ? nil : row.string("last_error"))
    }

    /// Per account and kind where the agent's backup results named them; per kind, from its whole-server backup
    /// jobs, for agents that have reported none (agents before per-account results, or none finished yet).
    public func fleetCoverage() throws -> [BackupCoverage] {
        try database.query(Self.reportedCoverage).compactMap(Self.reported)
            + database.query(Self.wholeServerCoverage(where: Self.withoutReportedCoverage, failures: false)).compactMap { Self.coverage($0, account: "*") }
    }

    public func coverage(agentID: String) throws -> [BackupCoverage] {
        let reported = try database.query(Self.reportedCoverage + " AND c.agent_id = ? ORDER BY c.account, c.kind", [.text(agentID)]).compactMap(Self.reported)
        if !reported.isEmpty { return reported }
        var entries = try database.query(Self.wholeServerCoverage(where: "AND a.id = ?1", failures: true), [.text(agentID)]).compactMap { Self.coverage($0, account: "*") }
        // Backups an operator started for one account.
        var perAccount: [String: (since: Int64, ok: Int64?, bad: Int64?, error: String?)] = [:]
        for row in try database.query("""
            SELECT json_extract(parameters, '$.account') AS account, json_extract(parameters, '$.kinds') AS kinds, state, finished_at,
                   json_extract(outcome, '$.error') AS error
            FROM jobs WHERE agent_id = ? AND kind = 'backup' AND state IN ('succeeded', 'failed', 'expired')
              AND json_extract(parameters, '$.account') IS NOT NULL ORDER BY finished_at
            """, [.text(agentID)]) {
            guard let account = row.string("account"), let at = row.int("finished_at") else { continue }
            let kinds = row.string("kinds").flatMap { try? JSONDecoder().decode([String].self, from: Data($0.utf8)) } ?? Self.kinds
            for kind in kinds where Self.kinds.contains(kind) {
                var entry = perAccount[account + "\u{0}" + kind] ?? (at, nil, nil, nil)
                if row.string("state") == "succeeded" { entry.ok = at } else { entry.bad = at; entry.error = row.string("error") ?? "no result within its timeout" }
                perAccount[account + "\u{0}" + kind] = entry
            }
        }
        for (key, entry) in perAccount.sorted(by: { $0.key < $1.key }) {
            let parts = key.split(separator: "\u{0}", maxSplits: 1).map(String.init)
            guard parts.count == 2 else { continue }
            entries.append(BackupCoverage(agentID: agentID, account: parts[0], kind: parts[1], since: entry.since, lastSuccessAt: entry.ok,
                                          lastFailureAt: entry.bad, lastError: entry.error))
        }
        return entries
    }
}
