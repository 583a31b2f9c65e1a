import CommandLineSupport
import Crypto
import FleetkeepProtocol
import Foundation

/// The licence as this agent knows it, checked offline: the stored lease (0600) verified against the controller
/// key pinned at enrollment, bound to this agent and this machine, never older than the newest lease seen, and read
/// against a clock that may not go back past the latest time the agent trusted.
public struct AgentLicence: Sendable {
    public let state: AgentState
    /// The server root (`/`, or a fixture tree in tests): where `/etc/machine-id` is read.
    public let root: String
    /// How far the clock may be behind the latest trusted time before it counts as turned back.
    public static let rollbackTolerance: Int64 = 300

    /// How many hosting accounts the server has, checked against the tier's `max-accounts`; nil counts them under
    /// `root` (panel accounts) when a check needs it.
    public let accountCount: Int?

    public init(state: AgentState, root: String = "/", accountCount: Int? = nil) {
        self.state = state
        self.root = root
        self.accountCount = accountCount
    }

    var leasePath: String { state.directory + "/licence.lease" }
    var clockPath: String { state.directory + "/licence-clock.json" }

    /// What the agent remembers between runs: the newest serial it accepted and the latest time it trusted (a
    /// lease's issue time, the controller's clock, or its own last run).
    struct Memory: Codable {
        var highestSerial: Int64 = 0
        var latestTrustedTime: Int64 = 0
    }

    /// The outcome of a check: exactly one status, with the reason and the next step.
    public struct Report: Codable, Sendable, Equatable {
        /// valid, grace, expired, suspended, revoked, over-limit, invalid, unlicensed or clock-rollback
        public var status: String
        public var reason: String
        public var nextStep: String
        public var licenceID: String?
        public var tier: String?
        public var features: [String]
        public var expiresAt: Int64?
        public var graceUntil: Int64?
        public var serial: Int64?
        public var checkedAt: Int64

        /// Tier features count while the lease is valid or in grace; never otherwise.
        public func allows(_ feature: String) -> Bool {
            (status == "valid" || status == "grace") && features.contains { $0 == feature || $0.hasPrefix(feature + ":") }
        }

        public func featureValue(_ name: String) -> Int? {
            guard status == "valid" || status == "grace" else { return nil }
            return features.lazy.compactMap { $0.hasPrefix(name + ":") ? Int($0.dropFirst(name.count + 1)) : nil }.first
        }
    }

    static func report(_ status: String, _ reason: String, _ next: String, now: Int64, lease: LicenceLease? = nil) -> Report {
        Report(status: status, reason: reason, nextStep: next, licenceID: lease?.licenceID, tier: lease?.tier, features: lease?.features ?? [],
               expiresAt: lease?.expiresAt, graceUntil: lease.map { $0.expiresAt.addingReportingOverflow($0.graceSeconds).partialValue },
               serial: lease?.serial, checkedAt: now)
    }

    /// This machine's keyed identity for the controller this agent is enrolled with (nil when not enrolled).
    public func machineIdentity() -> MachineIdentity? {
        guard let enrollment = try? state.loadEnrollment() else { return nil }
        return MachineIdentityReader.read(root: root, controllerPin: enrollment.certificatePin).identity
    }

    /// Checks the stored lease at `now` (no network). `recordRun` remembers `now` as a trusted time when it is later
    /// than the last one, so a clock turned back after this run is noticed.
    public func check(now: Int64 = FleetkeepClock.now(), recordRun: Bool = true) -> Report {
        guard let enrollment = try? state.loadEnrollment() else {
            return Self.report("unlicensed", "this agent is not enrolled with a controller",
                               "enroll it (`fleetkeep-agent enroll TOKEN`), then `fleetkeep-agent licence activate KEY`", now: now)
        }
        guard let data = FileManager.default.contents(atPath: leasePath) else {
            return Self.report("unlicensed", "no licence is activated on this server",
                               "run `fleetkeep-agent licence activate KEY` with the key from your provider", now: now)
        }
        guard let keyText = enrollment.controllerSigningKey, let raw = Base64URL.decode(keyText),
              let controllerKey = try? Ed25519PublicKey(rawRepresentation: raw) else {
            return Self.report("invalid", "no controller signing key was pinned at enrollment, so the lease cannot be checked",
                               "run `fleetkeep-agent licence activate KEY` again (it pins the key over the pinned TLS connection)", now: now)
        }
        let lease: LicenceLease
        do {
            let signed = try JSONDecoder().decode(SignedLease.self, from: data)
            lease = try verify(signed, controllerKey: controllerKey, enrollment: enrollment)
        } catch {
            return Self.report("invalid", "the stored lease is refused: \(error)",
                               "run `fleetkeep-agent licence activate KEY` again, or wait for the next heartbeat to bring a new lease", now: now)
        }
        var memory = loadMemory()
        if lease.serial < memory.highestSerial {
            return Self.report("invalid", "the stored lease has serial \(lease.serial), older than serial \(memory.highestSerial) already seen (a replayed lease)",
                               "wait for the next heartbeat, or run `fleetkeep-agent licence activate KEY` again", now: now, lease: lease)
        }
        let trusted = max(memory.latestTrustedTime, lease.issuedAt)
        if now + Self.rollbackTolerance < trusted {
            return Self.report("clock-rollback",
                               "the system clock (\(UTCTimeText.format(now))) is behind the latest trusted time (\(UTCTimeText.format(trusted))); the lease is not treated as extended",
                               "set the clock right (enable NTP); the licence is checked again at the next run", now: now, lease: lease)
        }
        if recordRun && now > memory.latestTrustedTime {
            memory.latestTrustedTime = now
            try? saveMemory(memory)
        }
        let grace = lease.expiresAt.addingReportingOverflow(lease.graceSeconds).partialValue
        switch lease.state {
        case "revoked":
            return Self.report("revoked", "licence \(lease.licenceID) was revoked by the provider",
                               "contact your provider for a new licence key; local backups, restores and verification keep working", now: now, lease: lease)
        case "suspended":
            return Self.report("suspended", "licence \(lease.licenceID) is suspended by the provider",
                               "contact your provider; local backups, restores and verification keep working", now: now, lease: lease)
        case "over-limit":
            return Self.report("over-limit", "licence \(lease.licenceID) has more servers bound than it allows",
                               "ask the operator to free a seat (`licence deactivate-server`) or raise the limit", now: now, lease: lease)
        case "expired":
            return Self.report("expired", "licence \(lease.licenceID) has expired", "ask your provider to renew it", now: now, lease: lease)
        default: break
        }
        // More accounts than the tier allows: the tier's features stop (a push is refused), local backups of every
        // account go on, so no customer's data is held hostage.
        if now < grace, let allowed = lease.features.lazy.compactMap({ $0.hasPrefix("max-accounts:") ? Int($0.dropFirst(13)) : nil }).first,
           let accounts = accountCount ?? (try? HostingAccounts.discover(root: root, configured: [:]).count), accounts > allowed {
            return Self.report("over-limit", "this server has \(accounts) hosting accounts; tier \(lease.tier) of licence \(lease.licenceID) allows \(allowed)",
                               "ask your provider for a tier with more accounts; local backups of every account keep running", now: now, lease: lease)
        }
        if now < lease.expiresAt {
            return Self.report("valid", "lease \(lease.serial) of licence \(lease.licenceID) (tier \(lease.tier)) is valid until \(UTCTimeText.format(lease.expiresAt))",
                               "none; heartbeats renew the lease", now: now, lease: lease)
        }
        if now < grace {
            return Self.report("grace", "the lease expired at \(UTCTimeText.format(lease.expiresAt)); grace until \(UTCTimeText.format(grace))",
                               "make sure the controller \(enrollment.controllerURL) is reachable so a heartbeat renews the lease", now: now, lease: lease)
        }
        return Self.report("expired", "the lease expired at \(UTCTimeText.format(lease.expiresAt)) and its grace ended at \(UTCTimeText.format(grace))",
                           "reach the controller \(enrollment.controllerURL) (the next heartbeat renews the lease) or run `fleetkeep-agent licence activate KEY`",
                           now: now, lease: lease)
    }

    /// A lease is accepted only if the pinned controller key signed it, for this agent, on this machine.
    func verify(_ signed: SignedLease, controllerKey: Ed25519PublicKey, enrollment: AgentState.Enrollment) throws -> LicenceLease {
        let lease: LicenceLease
        do { lease = try signed.open(verifyingWith: controllerKey) } catch { throw AgentError("\(error)") }
        guard lease.agentID == enrollment.agentID else {
            throw AgentError("lease was issued to another agent (\(lease.agentID)), not to \(enrollment.agentID)")
        }
        let here = MachineIdentityReader.read(root: root, controllerPin: enrollment.certificatePin).identity.machineHash
        guard lease.machineHash == here else {
            throw AgentError("lease was issued to another machine (machine \(lease.machineHash.prefix(12))…, this one is \(here.prefix(12))…): a copied state directory?")
        }
        return lease
    }

    /// Stores a lease from the controller (or a file) after checking it: signature, agent, machine, and a serial
    /// not older than the newest one seen. `controllerTime` is the controller's clock, which the agent then trusts.
    @discardableResult
    public func accept(_ signed: SignedLease, controllerTime: Int64?) throws -> LicenceLease {
        let enrollment = try state.loadEnrollment()
        guard let keyText = enrollment.controllerSigningKey, let raw = Base64URL.decode(keyText),
              let controllerKey = try? Ed25519PublicKey(rawRepresentation: raw) else {
            throw AgentError("no controller signing key is pinned; run `fleetkeep-agent licence activate KEY`")
        }
        let lease = try verify(signed, controllerKey: controllerKey, enrollment: enrollment)
        var memory = loadMemory()
        let current = FileManager.default.contents(atPath: leasePath).flatMap { try? JSONDecoder().decode(SignedLease.self, from: $0) }
        if lease.serial == memory.highestSerial && current == signed { return lease }
        guard lease.serial > memory.highestSerial else {
            throw AgentError("lease serial \(lease.serial) is older than serial \(memory.highestSerial) already accepted (a replayed lease); kept the current one")
        }
        try PrivateFile.write(leasePath, try AgentState.encode(signed))
        memory.highestSerial = lease.serial
        // The controller's clock is the authority while it is reachable; it also heals a clock that ran ahead.
        memory.latestTrustedTime = max(lease.issuedAt, controllerTime ?? lease.issuedAt)
        try saveMemory(memory)
        return lease
    }

    func loadMemory() -> Memory {
        FileManager.default.contents(atPath: clockPath).flatMap { try? JSONDecoder().decode(Memory.self, from: $0) } ?? Memory()
    }

    func saveMemory(_ memory: Memory) throws { try PrivateFile.write(clockPath, try AgentState.encode(memory)) }

    /// Refuses a tier feature with the reason and what to do; local backups, restores, verification and listings
    /// never call this.
    public func require(_ feature: String, for action: String) throws {
        let report = check()
        guard report.allows(feature) else {
            if report.status == "valid" || report.status == "grace" {
                throw AgentError("\(action) needs the '\(feature)' feature, which tier \(report.tier ?? "?") of licence \(report.licenceID ?? "?") does not include; ask your provider for a tier with it. Local backups and restores are not affected")
            }
            throw AgentError("\(action) needs a valid licence with the '\(feature)' feature; the licence is \(report.status): \(report.reason). Next: \(report.nextStep). Local backups and restores are not affected")
        }
    }
}

/// Unix seconds as ISO 8601 UTC text.
enum UTCTimeText {
    static func format(_ seconds: Int64) -> String {
        let formatter = ISO8601DateFormatter()
        formatter.formatOptions = [.withInternetDateTime]
        return formatter.string(from: Date(timeIntervalSince1970: TimeInterval(seconds)))
    }
}

/// Reads this machine's identity: `/etc/machine-id` under the root and the UUID of the file system the root is on
/// (found in `/dev/disk/by-uuid` by device number). Only keyed hashes of them leave the server.
public enum MachineIdentityReader {
    public static func read(root: String, controllerPin: String) -> (identity: MachineIdentity, problems: [String]) {
        var problems: [String] = []
        let base = root.hasSuffix("/") ? String(root.dropLast()) : root
        var machineID = "unknown"
        if let text = ["/etc/machine-id", "/var/lib/dbus/machine-id"].lazy.compactMap({ try? String(contentsOfFile: base + $0, encoding: .utf8) }).first {
            let trimmed = text.trimmingCharacters(in: .whitespacesAndNewlines)
            if !trimmed.isEmpty && trimmed.utf8.count <= 256 { machineID = trimmed } else { problems.append("etc/machine-id is empty or too long") }
        } else {
            problems.append("no etc/machine-id under \(root)")
        }
        let uuid = rootFilesystemUUID(root: root.isEmpty ? "/" : root)
        if uuid == nil { problems.append("the root file system's UUID was not found in /dev/disk/by-uuid") }
        return (MachineIdentity(machineID: machineID, rootFilesystemUUID: uuid ?? "unknown", controllerPin: controllerPin), problems)
    }

    static func rootFilesystemUUID(root: String) -> String? {
        var rootInfo = stat()
        guard stat(root, &rootInfo) == 0 else { return nil }
        let directory = "/dev/disk/by-uuid"
        guard let names = try? FileManager.default.contentsOfDirectory(atPath: directory) else { return nil }
        for name in names.sorted() {
            var device = stat()
            if stat(directory + "/" + name, &device) == 0, (device.st_mode & S_IFMT) == S_IFBLK, device.st_rdev == rootInfo.st_dev { return name }
        }
        return nil
    }
}
