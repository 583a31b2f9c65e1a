import Crypto
import Foundation
import HTTPServer
import Synchronization

/// Requests of one route counted by status and timed in a histogram. Statuses outside a fixed list count as
/// "other", so no request can add a series.
public final class RequestMetric: Sendable {
    public static let buckets: [Double] = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5]
    static let knownCodes: Set<Int> = [200, 400, 401, 403, 404, 405, 409, 413, 429, 500, 503]

    struct State {
        var requests: [String: Int64] = [:]
        /// Not cumulative here; summed when rendered.
        var bucketCounts = [Int64](repeating: 0, count: RequestMetric.buckets.count + 1)
        var sum = 0.0
        var count: Int64 = 0
    }
    private let state = Mutex(State())
    public let name: String
    public let help: String

    public init(name: String, help: String) {
        self.name = name
        self.help = help
    }

    public func observe(status: Int, seconds: Double) {
        let code = Self.knownCodes.contains(status) ? String(status) : "other"
        let slot = Self.buckets.firstIndex { seconds <= $0 } ?? Self.buckets.count
        state.withLock { state in
            state.requests[code, default: 0] &+= 1
            state.bucketCounts[slot] &+= 1
            if seconds.isFinite && seconds >= 0 { state.sum += seconds }
            state.count &+= 1
        }
    }

    /// Wraps a handler: its answer (or the status of the error it throws) and its time are recorded.
    public func measure(_ handler: @escaping HTTPHandler) -> HTTPHandler {
        { [self] request in
            let start = DispatchTime.now().uptimeNanoseconds
            func seconds() -> Double { Double(DispatchTime.now().uptimeNanoseconds &- start) / 1e9 }
            do {
                let response = try handler(request)
                observe(status: response.status, seconds: seconds())
                return response
            } catch let error as HTTPError {
                observe(status: error.status, seconds: seconds())
                throw error
            } catch {
                observe(status: 500, seconds: seconds())
                throw error
            }
        }
    }

    func render(into text: inout String) {
        let snapshot = state.withLock { $0 }
        text += "# HELP \(name)_requests_total \(help) requests by HTTP status.\n# TYPE \(name)_requests_total counter\n"
        for code in (Self.knownCodes.map(String.init) + ["other"]).sorted() {
            text += "\(name)_requests_total{code=\"\(code)\"} \(snapshot.requests[code] ?? 0)\n"
        }
        text += "# HELP \(name)_duration_seconds Time to answer \(help) requests.\n# TYPE \(name)_duration_seconds histogram\n"
        var cumulative: Int64 = 0
        for (index, bound) in Self.buckets.enumerated() {
            cumulative &+= snapshot.bucketCounts[index]
            text += "\(name)_duration_seconds_bucket{le=\"\(bound)\"} \(cumulative)\n"
        }
        text += "\(name)_duration_seconds_bucket{le=\"+Inf\"} \(snapshot.count)\n"
        text += "\(name)_duration_seconds_sum \(snapshot.sum)\n\(name)_duration_seconds_count \(snapshot.count)\n"
    }
}

/// Who may read /metrics: a client that sends the bearer token from the controller's 0600 token file, or a
/// loopback client that came straight to the controller (a request forwarded by a proxy on the same host carries
/// a forwarding header and needs the token).
public struct MetricsAccess: Sendable {
    public static let fileName = "metrics.token"
    let token: [UInt8]?

    public init(token: String?) { self.token = token.map { Array($0.utf8) } }

    /// Reads `path` if it exists. A token file that others may read is refused, so the controller does not start
    /// with a secret that leaked locally.
    public static func load(path: String) throws -> MetricsAccess {
        var status = stat()
        guard stat(path, &status) == 0 else { return MetricsAccess(token: nil) }
        guard status.st_mode & 0o077 == 0 else {
            throw ControllerError("\(path) may be read by other users (mode \(String(status.st_mode & 0o777, radix: 8))); run `chmod 600 \(path)`")
        }
        guard let text = try? String(contentsOfFile: path, encoding: .utf8) else { throw ControllerError("cannot read \(path)") }
        let token = text.trimmingCharacters(in: .whitespacesAndNewlines)
        guard token.utf8.count >= 32, token.utf8.count <= 256, token.allSatisfy({ $0.isASCII && !$0.isWhitespace }) else {
            throw ControllerError("\(path) must hold one token of 32 to 256 printable characters; `fleetkeep-controller metrics token` writes a new one")
        }
        return MetricsAccess(token: token)
    }

    /// Writes a new random token to `path` (0600) and returns it.
    public static func create(path: String) throws -> String {
        let token = Hex.encode(SecureRandom.bytes(32))
        try writePrivateFile(path, Array((token + "\n").utf8))
        return token
    }

    public func allows(_ request: HTTPRequest) -> Bool {
        if let header = request.headers["authorization"], let token, header.hasPrefix("Bearer ") {
            return HMACSHA256.equal(SHA256.hash(Array(header.utf8.dropFirst(7))), SHA256.hash(token))
        }
        let forwarded = request.headers["x-forwarded-for"] != nil || request.headers["forwarded"] != nil || request.headers["x-real-ip"] != nil
        return !forwarded && Self.isLoopback(request.remoteAddress)
    }

    static func isLoopback(_ address: String) -> Bool {
        address.hasPrefix("127.") || address == "::1" || address.hasPrefix("::ffff:127.")
    }
}

/// The controller's metrics in the Prometheus text format. Labels come from fixed sets (states, kinds, statuses,
/// conditions) except `agent`, one series per enrolled agent: nothing grows with accounts or snapshots.
public final class ControllerMetrics: Sendable {
    public let heartbeats = RequestMetric(name: "fleetkeep_heartbeat", help: "Agent heartbeat")
    public let validations = RequestMetric(name: "fleetkeep_licence_validation", help: "Licence validation")
    let fleet: any FleetStore
    let coverage: any BackupCoverageSource
    let alerts: any AlertStore
    let heartbeatInterval: @Sendable () -> Int64
    let clock: @Sendable () -> Int64

    public init(fleet: any FleetStore, coverage: any BackupCoverageSource, alerts: any AlertStore,
                heartbeatInterval: @escaping @Sendable () -> Int64, clock: @escaping @Sendable () -> Int64) {
        self.fleet = fleet
        self.coverage = coverage
        self.alerts = alerts
        self.heartbeatInterval = heartbeatInterval
        self.clock = clock
    }

    static let jobKinds = ["backup", "offsite-push", "restore", "verify", "prune"]
    static let licenceStatuses = ["valid", "expired", "suspended", "revoked"]

    public func render() throws -> String {
        let now = clock()
        let thresholds = FleetThresholds(now: now, heartbeatInterval: heartbeatInterval())
        var text = ""
        func family(_ name: String, _ type: String, _ help: String) { text += "# HELP \(name) \(help)\n# TYPE \(name) \(type)\n" }

        let summary = try fleet.summary(thresholds)
        family("fleetkeep_agents", "gauge", "Enrolled agents by state (online until 3 heartbeat intervals are missed).")
        for state in AgentLiveness.allCases { text += "fleetkeep_agents{state=\"\(state.rawValue)\"} \(summary.liveness[state] ?? 0)\n" }
        family("fleetkeep_agent_backups", "gauge", "Agents by backup state: ok, overdue (none succeeded within 26 h), failed (latest failed), pending (new).")
        for state in BackupHealth.allCases { text += "fleetkeep_agent_backups{state=\"\(state.rawValue)\"} \(summary.backups[state] ?? 0)\n" }

        let licences = try fleet.licenceStates(now: now)
        family("fleetkeep_licences", "gauge", "Licences by status.")
        for status in Self.licenceStatuses { text += "fleetkeep_licences{status=\"\(status)\"} \(licences[status] ?? 0)\n" }

        var jobs: [String: Int] = [:]
        for entry in try fleet.jobCounts() { jobs[entry.kind + "/" + entry.state, default: 0] += entry.count }
        family("fleetkeep_jobs", "gauge", "Jobs in the controller's database by kind and state.")
        for kind in Self.jobKinds {
            for state in JobState.allCases { text += "fleetkeep_jobs{kind=\"\(kind)\",state=\"\(state.rawValue)\"} \(jobs[kind + "/" + state.rawValue] ?? 0)\n" }
        }

        heartbeats.render(into: &text)
        validations.render(into: &text)

        // Per agent, the oldest of its accounts' and kinds' last successful backups (since enrollment when none).
        var oldest: [String: Int64] = [:]
        var overdue = 0
        for entry in try coverage.fleetCoverage() {
            let reference = entry.lastSuccessAt ?? entry.since
            oldest[entry.agentID] = min(oldest[entry.agentID] ?? .max, reference)
            if reference < thresholds.backupFreshSince { overdue += 1 }
        }
        family("fleetkeep_agent_oldest_backup_age_seconds", "gauge",
               "Per agent, seconds since the oldest of its last successful backups of each account and kind (since enrollment if none succeeded).")
        for (agent, reference) in oldest.sorted(by: { $0.key < $1.key }) {
            let age = now.subtractingReportingOverflow(reference)
            text += "fleetkeep_agent_oldest_backup_age_seconds{agent=\"\(Self.labelValue(agent))\"} \(age.overflow ? 0 : max(0, age.partialValue))\n"
        }
        family("fleetkeep_backups_overdue", "gauge", "Accounts and kinds without a successful backup within 26 h, fleet-wide.")
        text += "fleetkeep_backups_overdue \(overdue)\n"

        let firing = try alerts.firingCounts()
        family("fleetkeep_alerts_firing", "gauge", "Alerts firing, by condition (as the controller's alert evaluation last found them).")
        for condition in AlertCondition.allCases { text += "fleetkeep_alerts_firing{condition=\"\(condition.rawValue)\"} \(firing[condition] ?? 0)\n" }
        return text
    }

    /// Label values are agent ids (fk- and hex) today; escaped anyway as the format requires.
    static func labelValue(_ text: String) -> String {
        guard text.utf8.contains(where: { $0 == UInt8(ascii: "\\") || $0 == UInt8(ascii: "\"") || $0 == UInt8(ascii: "\n") }) else { return text }
        return text.replacingOccurrences(of: "\\", with: "\\\\").replacingOccurrences(of: "\"", with: "\\\"").replacingOccurrences(of: "\n", with: "\\n")
    }
}
