import CommandLineSupport
import FleetkeepProtocol
import Foundation

/// The agent daemon: a heartbeat with facts at start, then one per interval with jitter; capped exponential
/// backoff with full jitter while the controller cannot be reached.
public struct HeartbeatDaemon: Sendable {
    public let state: AgentState
    public let collector: FactsCollector
    /// Overrides the interval the controller asks for (tests and demos use seconds).
    public let intervalOverride: Double?
    public let log: @Sendable (String) -> Void
    /// Improvement telemetry: its mode and counters (see `AgentTelemetry`); agent.conf can turn it off.
    public let telemetry: AgentTelemetry

    public init(state: AgentState, collector: FactsCollector, intervalOverride: Double? = nil, configPath: String? = nil,
                log: @escaping @Sendable (String) -> Void = { print($0); fflush(nil) }) {
        self.state = state
        self.collector = collector
        self.intervalOverride = intervalOverride
        self.log = log
        telemetry = AgentTelemetry(state: state, configPath: configPath)
    }

    /// Sends one heartbeat and records the outcome in the state directory.
    @discardableResult
    public func beat(connection: ControllerConnection) throws -> HeartbeatResponse {
        var status = (try? state.loadStatus()) ?? AgentState.Status()
        status.lastAttemptAt = Date()
        let facts = collector.collect()
        let licence = AgentLicence(state: state, root: collector.root)
        do {
            let answer = try connection.post(APIPath.heartbeat, HeartbeatRequest(facts: facts.fields, problems: facts.problems,
                                                                                 machine: licence.machineIdentity()),
                                             as: HeartbeatResponse.self)
            status.lastSuccessAt = Date()
            status.lastError = nil
            status.licence = answer.licence
            status.telemetryConsent = answer.telemetryConsent ?? false
            if let lease = answer.lease {
                do { try licence.accept(lease, controllerTime: answer.controllerTime) } catch {
                    log("lease from the controller refused: \(error)")
                }
            }
            try state.save(status)
            // Uploads only in mode `on` with consent; in any other mode no request is made (see AgentTelemetry).
            if let line = telemetry.afterHeartbeat(consent: answer.telemetryConsent ?? false, send: { body in
                try connection.post(APIPath.telemetry, body: body, as: TelemetryReceipt.self)
            }) { log(line) }
            return answer
        } catch {
            status.lastError = "\(error)"
            try? state.save(status)
            throw error
        }
    }

    /// The longest wait before retry number `failures`: 10 s, 20 s, 40 s, ... doubling, never beyond the heartbeat
    /// interval (and at least 1 s). The actual wait is drawn uniformly from 1 s up to it (full jitter), so a fleet
    /// whose controller comes back does not return all at once.
    public static func retryCeiling(failures: Int, interval: Double) -> Double {
        max(1, min(interval, 5 * pow(2, Double(min(max(failures, 1), 20)))))
    }

    /// Runs until SIGINT or SIGTERM. The caller must have called `SignalWaiter.blockTerminationSignals()` first.
    public func run() throws {
        let enrollment = try state.loadEnrollment()
        let connection = try Enrollment.connection(state: state)
        var interval = intervalOverride ?? Double(HeartbeatTiming.clamp(enrollment.heartbeatIntervalSeconds))
        var failures = 0
        log("fleetkeep-agent \(enrollment.agentID) reporting to \(enrollment.controllerURL) every \(Int(interval))s")
        while true {
            let wait: Double
            do {
                let answer = try beat(connection: connection)
                // The controller's number is outside input: clamped, so the waits below stay in range.
                if intervalOverride == nil { interval = Double(HeartbeatTiming.clamp(answer.heartbeatIntervalSeconds)) }
                if failures > 0 { log("controller reachable again after \(failures) failed attempts") }
                failures = 0
                // Only for the log: the answer just accepted already recorded the trusted time, so no second write.
                let licence = AgentLicence(state: state, root: collector.root).check(recordRun: false)
                log("heartbeat ok; licence \(licence.status)\(licence.status == "valid" ? "" : ": \(licence.reason)")")
                // ±10% jitter keeps a fleet that restarted together from beating in lockstep.
                wait = interval * Double.random(in: 0.9...1.1)
            } catch {
                failures += 1
                wait = Double.random(in: 1...Self.retryCeiling(failures: failures, interval: interval))
                log("heartbeat failed (\(error)); retrying in \(Int(wait))s")
            }
            // Minutes of idling ahead: hand back clean library pages (see IdleMemory); the next beat maps back what it uses.
            if wait >= 10 { IdleMemory.releaseCleanFilePages() }
            if SignalWaiter.waitForTermination(seconds: wait) {
                log("stopping")
                return
            }
        }
    }
}
