import FleetkeepProtocol
import Foundation
import Posix
import Synchronization

/// The agent's improvement telemetry: counters per job kind (runs, failures, seconds, bytes), kept in the state
/// directory (`telemetry/`, 0600 files).
///
/// - `local.json`: every counter since telemetry was turned on locally; it never leaves the server.
/// - `pending.json`: what the next upload sends. Counted only in mode `on` while the controller's last heartbeat
///   answer said the customer consented, and dropped when it says otherwise, so nothing gathered without consent is
///   ever uploaded.
///
/// The effective mode is the strictest of: `DO_NOT_TRACK` (any value but empty, 0 or false: off), `telemetry` in
/// agent.conf, and the mode chosen with `fleetkeep-agent telemetry off|local|on` (default `local`). An agent whose
/// effective mode is not `on` makes no upload request at all.
public struct AgentTelemetry: Sendable {
    public let state: AgentState
    public let configPath: String?
    let environment: [String: String]

    /// Counters over a period, as kept on disk.
    public struct Counters: Codable, Sendable, Equatable {
        public var from: Int64
        public var to: Int64
        public var counters: [String: Int64]
    }

    public struct Decision: Codable, Sendable, Equatable {
        public var chosen: TelemetryMode
        public var effective: TelemetryMode
        public var reason: String
    }

    /// One process may count (the job thread) while it uploads (the heartbeat thread).
    private static let lock = Mutex<Void>(())

    public init(state: AgentState, configPath: String?, environment: [String: String] = ProcessInfo.processInfo.environment) {
        self.state = state
        self.configPath = configPath
        self.environment = environment
    }

    var directory: String { state.directory + "/telemetry" }
    var modePath: String { directory + "/mode" }
    var localPath: String { directory + "/local.json" }
    var pendingPath: String { directory + "/pending.json" }

    // MARK: Mode

    public func chosenMode() -> TelemetryMode {
        guard let data = FileManager.default.contents(atPath: modePath),
              let mode = TelemetryMode(rawValue: String(decoding: data, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)) else {
            return .local
        }
        return mode
    }

    public func decision() -> Decision {
        let chosen = chosenMode()
        if let value = environment["DO_NOT_TRACK"], !["", "0", "false"].contains(value.lowercased()) {
            return Decision(chosen: chosen, effective: .off, reason: "DO_NOT_TRACK=\(value.prefix(16)) is set in the environment")
        }
        let file = configPath ?? AgentConfig.defaultPath
        let configured: TelemetryMode?
        do { configured = try AgentConfig.load(path: configPath).telemetry } catch {
            // An unreadable configuration must not turn uploads on: the strict answer until it is fixed.
            return Decision(chosen: chosen, effective: .off, reason: "\(file) cannot be read (\(error)); telemetry stays off until it can")
        }
        if let configured, configured < chosen {
            return Decision(chosen: chosen, effective: configured, reason: "telemetry = \(configured.rawValue) in \(file)")
        }
        return Decision(chosen: chosen, effective: chosen,
                        reason: FileManager.default.fileExists(atPath: modePath) ? "chosen with `fleetkeep-agent telemetry \(chosen.rawValue)`" : "the default")
    }

    /// Sets the chosen mode. `off` deletes every counter; `local` deletes what was queued for upload.
    public func setMode(_ mode: TelemetryMode) throws {
        try prepareDirectory()
        try PrivateFile.write(modePath, Array((mode.rawValue + "\n").utf8))
        Self.lock.withLock { _ in
            if mode == .off { unlink(localPath) }
            if mode != .on { unlink(pendingPath) }
        }
    }

    func prepareDirectory() throws {
        do throws(Errno) {
            try Directory.createPrivate(directory)
        } catch {
            throw AgentError("cannot create \(directory): \(error)")
        }
    }

    // MARK: Counting

    /// Counts one finished job. Nothing at all in mode off; locally in `local` and `on`; for upload only in `on`
    /// while the controller reports consent.
    public func record(_ result: JobResultRequest, now: Int64 = Int64(Date().timeIntervalSince1970)) {
        let mode = decision().effective
        guard mode != .off else { return }
        let seconds = result.finishedAt > result.startedAt ? result.finishedAt &- result.startedAt : 0
        let names = TelemetryUpload.counterNames(for: result.kind)
        let increments = [names[0]: Int64(1), names[1]: result.succeeded ? 0 : 1, names[2]: seconds, names[3]: max(result.bytesAdded, 0)]
        let consented = (try? state.loadStatus())?.telemetryConsent == true
        try? prepareDirectory()
        Self.lock.withLock { _ in
            add(increments, to: localPath, now: now)
            if mode == .on && consented { add(increments, to: pendingPath, now: now) }
        }
    }

    /// Largest value of one counter in one upload: the controller's declared range (bytes 2^50, others 2^40).
    static func limit(_ name: String) -> Int64 { name.hasSuffix(".bytes") ? 1 << 50 : 1 << 40 }

    private func add(_ increments: [String: Int64], to path: String, now: Int64) {
        var counters = read(path) ?? Counters(from: now, to: now, counters: [:])
        counters.from = min(counters.from, now)
        counters.to = max(counters.to, now)
        for (name, value) in increments where value > 0 || counters.counters[name] == nil {
            let sum = counters.counters[name, default: 0].addingReportingOverflow(value)
            counters.counters[name] = min(sum.overflow ? Int64.max : sum.partialValue, Self.limit(name))
        }
        try? PrivateFile.write(path, AgentState.encode(counters))
    }

    private func read(_ path: String) -> Counters? {
        guard let data = FileManager.default.contents(atPath: path) else { return nil }
        return try? JSONDecoder().decode(Counters.self, from: data)
    }

    public func localCounters() -> Counters? { Self.lock.withLock { _ in read(localPath) } }
    public func pendingCounters() -> Counters? { Self.lock.withLock { _ in read(pendingPath) } }

    // MARK: Upload

    /// Why nothing would be uploaded now, or nil when the next heartbeat uploads `nextUpload()`.
    public func reasonNotToUpload() -> String? {
        let decision = decision()
        guard decision.effective == .on else { return "telemetry mode is \(decision.effective.rawValue) (\(decision.reason)); no upload request is made" }
        guard (try? state.loadStatus())?.telemetryConsent == true else {
            return "the controller has not reported the customer's consent (`fleetkeep-controller privacy consent --licence ID --granted`); nothing is uploaded"
        }
        guard let pending = pendingCounters(), !pending.counters.isEmpty else { return "no counters are waiting for upload" }
        return nil
    }

    /// The next upload: its exact bytes are what `telemetry preview` prints and the heartbeat sends.
    public func nextUpload() -> TelemetryUpload? {
        guard reasonNotToUpload() == nil, let pending = pendingCounters() else { return nil }
        return TelemetryUpload(from: pending.from, to: pending.to, counters: pending.counters)
    }

    /// After a heartbeat: remembers what the controller said about consent (dropping the upload queue when it says
    /// no) and, in mode `on` with consent, sends the queued counters. Returns a line for the log, if anything happened.
    public func afterHeartbeat(consent: Bool, send: ([UInt8]) throws -> TelemetryReceipt) -> String? {
        if !consent {
            let dropped = Self.lock.withLock { _ in FileManager.default.fileExists(atPath: pendingPath) && unlink(pendingPath) == 0 }
            return dropped ? "telemetry: the controller reports no consent; counters queued for upload were dropped (kept locally)" : nil
        }
        guard let upload = nextUpload() else { return nil }
        do {
            let receipt = try send(try upload.encoded())
            Self.lock.withLock { _ in
                // Counted while the upload was on its way stays queued for the next one.
                guard var pending = read(pendingPath) else { return }
                for (name, value) in upload.counters { pending.counters[name] = max((pending.counters[name] ?? 0) &- value, 0) }
                pending.counters = pending.counters.filter { $0.value > 0 }
                pending.from = max(pending.from, upload.to)
                if pending.counters.isEmpty { unlink(pendingPath) } else { try? PrivateFile.write(pendingPath, AgentState.encode(pending)) }
            }
            return "telemetry uploaded: \(receipt.counters) counters (controller record \(receipt.recordID))"
        } catch {
            return "telemetry upload failed (\(error)); the counters stay queued"
        }
    }
}
