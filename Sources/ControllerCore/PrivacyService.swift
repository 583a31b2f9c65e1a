import Crypto
import FleetkeepProtocol
import Foundation
import HTTPServer
import Posix
import Synchronization

/// Why a privacy operation was refused. Each case maps to one HTTP status in `httpStatus`, the only place that
/// mapping is made; operator commands print the same text.
public enum PrivacyError: Error, Sendable, CustomStringConvertible, Equatable {
    case invalidInput(String)
    case undeclared(String)
    case noConsent(String)
    case notFound(String)
    case erased(customerID: Int64)

    public var httpStatus: Int {
        switch self {
        case .invalidInput, .undeclared: return 400
        case .noConsent: return 403
        case .notFound: return 404
        case .erased: return 410
        }
    }

    public var description: String {
        switch self {
        case .invalidInput(let message), .undeclared(let message), .noConsent(let message): return message
        case .notFound(let what): return "\(what) not found"
        case .erased(let id): return "customer \(id) was erased; the controller holds no personal data about them any more"
        }
    }
}

/// Who reads personal data and why: every read is recorded with it in the audit log.
public struct Access: Sendable {
    public var actor: String
    public var reason: String
    public init(actor: String, reason: String) {
        self.actor = actor
        self.reason = reason
    }

    /// The operator running this process: the login name, and the sudo caller when there is one.
    public static func currentOperator(reason: String?) -> Access {
        var name = "uid \(geteuid())"
        if let entry = getpwuid(geteuid()), let login = entry.pointee.pw_name { name = String(cString: login) }
        if let caller = ProcessInfo.processInfo.environment["SUDO_USER"], !caller.isEmpty, caller.utf8.count <= 64 { name += " (sudo by \(caller))" }
        return Access(actor: name, reason: reason ?? "not given")
    }
}

/// The erasure ledger: one keyed hash per erased customer, in a file beside the database (not in it), so that a
/// database restored from an older copy is erased again when the controller opens it.
public struct ErasureLedger: Sendable {
    public static let fileName = "erasure.ledger"
    public let path: String

    public init(databasePath: String) {
        path = Directory.parentDirectory(of: databasePath) + "/" + Self.fileName
    }

    /// The hashes recorded so far.
    public func hashes() throws -> Set<String> {
        guard FileManager.default.fileExists(atPath: path) else { return [] }
        guard let text = try? String(contentsOfFile: path, encoding: .utf8) else {
            throw ControllerError("erasure ledger \(path) is unreadable; restore it from your backup (erasures depend on it)")
        }
        return Set(text.split(separator: "\n").compactMap { line in
            let hash = line.split(separator: " ").first.map(String.init) ?? ""
            return hash.utf8.count == 64 ? hash : nil
        })
    }

    /// Appends one entry and syncs it to disk before the database is changed.
    public func append(hash: String, at: Int64) throws {
        do throws(Errno) {
            let ledger = try FileDescriptor.open(path, O_CREAT | O_WRONLY | O_APPEND, permissions: 0o600)
            try ledger.write(all: Array("\(hash) \(at)\n".utf8))
            try ledger.sync()
        } catch {
            throw ControllerError("cannot \(error.operation == "open" ? "open" : "write") erasure ledger \(path): \(error.text)")
        }
    }
}

/// The privacy rules as operations: consent, the audit log, telemetry ingestion, data-subject requests, retention,
/// aggregates and breach lists. It sits over `PrivacyStore`, `LicenceStore` and `CustomerStore` and knows no SQL;
/// its errors are `PrivacyError`, mapped to HTTP statuses in one place (`PrivacyError.httpStatus`).
public final class PrivacyService: Sendable {
    public let store: any PrivacyStore
    let licences: any LicenceStore
    let keys: PrivacyKeys
    let ledger: ErasureLedger
    let clock: @Sendable () -> Int64
    /// Consent per agent, for the heartbeat answer; emptied whenever consent records or licence events change.
    private let consentCache = Mutex<(generation: Int64, answers: [String: Bool])>((-1, [:]))

    public static let defaultRetentionSeconds: Int64 = 90 * 86400

    public init(store: any PrivacyStore, licences: any LicenceStore, keys: PrivacyKeys, ledger: ErasureLedger,
                clock: @escaping @Sendable () -> Int64 = FleetkeepClock.now) {
        self.store = store
        self.licences = licences
        self.keys = keys
        self.ledger = ledger
        self.clock = clock
    }

    public convenience init(controllerStore: ControllerStore, clock: @escaping @Sendable () -> Int64 = FleetkeepClock.now) {
        self.init(store: SQLitePrivacyStore(store: controllerStore),
                  licences: SQLiteLicenceStore(database: controllerStore.database, keys: controllerStore.keys),
                  keys: controllerStore.keys, ledger: ErasureLedger(databasePath: controllerStore.database.path), clock: clock)
    }

    // MARK: Audit

    /// Appends an audit entry before personal data is handed out: if it cannot be written, nothing is read.
    @discardableResult
    public func audit(_ access: Access, action: String, subject: String) throws -> AuditEntry {
        // Actor and reason come from the environment and the command line: no control characters reach a terminal
        // that lists the log.
        func printable(_ text: String, _ limit: Int) -> String {
            String(String(text.unicodeScalars.filter { $0.properties.generalCategory != .control }).prefix(limit))
        }
        return try store.appendAudit(at: clock(), actor: printable(access.actor, 200), action: action, subject: subject,
                                     reason: printable(access.reason, 500))
    }

    // MARK: Consent

    /// Records that the customer of `licenceID` granted or withdrew consent to improvement telemetry: who and when.
    /// It reaches the licence's agents at their next heartbeat (a running server notices within about a second).
    @discardableResult
    public func setConsent(licenceID: String, granted: Bool, by: String, source: String) throws -> ConsentRecord {
        let by = by.trimmingCharacters(in: .whitespaces)
        guard !by.isEmpty, by.utf8.count <= 200, ValueShape.text(maxBytes: 200).problem(with: by) == nil else {
            throw PrivacyError.invalidInput("--by must name who consented: 1 to 200 printable characters")
        }
        let now = clock()
        return try store.transaction {
            guard try licences.licence(id: licenceID) != nil else { throw PrivacyError.notFound("licence \(licenceID)") }
            let id = try store.addConsent(licenceID: licenceID, granted: granted, by: by, source: source, at: now)
            try licences.addEvent(licenceID: licenceID, LicenceEvent(at: now, kind: granted ? "consent-granted" : "consent-withdrawn",
                                                                     agentID: nil, detail: "improvement telemetry"))
            return ConsentRecord(id: id, licenceID: licenceID, granted: granted, at: now, by: by, source: source)
        }
    }

    /// Whether the agent may upload improvement telemetry: its licence's latest consent record says granted.
    public func consentForHeartbeat(agentID: String) throws -> Bool {
        if let cached = consentCache.withLock({ $0.answers[agentID] }) { return cached }
        let granted = try store.consentGranted(agentID: agentID)?.granted ?? false
        consentCache.withLock { $0.answers[agentID] = granted }
        return granted
    }

    /// Empties the consent cache when consent or licences changed (in this process or through operator commands).
    public func refresh() throws {
        let generation = try store.consentGeneration()
        consentCache.withLock { cache in
            if cache.generation != generation { cache = (generation, [:]) }
        }
    }

    // MARK: Telemetry ingestion

    /// Stores one upload, exactly as received, if its customer consented and every counter is declared.
    public func ingest(agentID: String, body: [UInt8]) throws -> TelemetryReceipt {
        let upload: TelemetryUpload
        do { upload = try JSONDecoder().decode(Strict<TelemetryUpload>.self, from: Data(body)).value } catch {
            throw PrivacyError.undeclared("telemetry body is not a valid upload: \(ControllerService.describe(error)); nothing was stored")
        }
        if let violation = DataInventory.violation(telemetry: upload) { throw PrivacyError.undeclared(violation) }
        guard let consent = try store.consentGranted(agentID: agentID) else {
            throw PrivacyError.noConsent("agent \(agentID) holds no licence, so no customer consented to improvement telemetry; nothing was stored")
        }
        guard consent.granted else {
            throw PrivacyError.noConsent("the customer of licence \(consent.licenceID) has not consented to improvement telemetry; nothing was stored")
        }
        let id = try store.addTelemetry(agentID: agentID, licenceID: consent.licenceID, receivedAt: clock(),
                                        body: String(decoding: body, as: UTF8.self), counters: upload.counters)
        return TelemetryReceipt(recordID: id, counters: upload.counters.count)
    }

    // MARK: Activation records

    /// Keeps the full addresses of an activation, encrypted: the only place they are kept in full.
    public func recordActivation(licenceID: String, agentID: String, requestAddress: String, serverAddress: String?, hostname: String?) throws {
        try store.addActivation(ActivationRecord(licenceID: licenceID, agentID: agentID, at: clock(), requestAddress: requestAddress,
                                                 serverAddress: serverAddress.flatMap { AddressPrivacy.isAddress($0) ? $0 : nil },
                                                 hostname: hostname))
    }

    // MARK: Data-subject requests

    /// Everything held about one customer, as the export writes it.
    public struct Export: Encodable, Sendable {
        public struct Server: Encodable, Sendable {
            public var agentID: String
            public var hostname: String?
            public var enrolledAt: Int64
            public var lastSeen: Int64?
            public var removedAt: Int64?
            public var facts: [String: String]
            public var problems: [String: String]
            public var telemetry: [TelemetryRecord]
        }
        public struct LicenceEntry: Encodable, Sendable {
            public var id: String
            public var tier: String
            public var state: String
            public var issuedAt: Int64
            public var expiresAt: Int64?
            public var seats: [Seat]
            public var history: [LicenceEvent]
            public var consent: [ConsentRecord]
            public var activations: [ActivationRecord]
        }
        public var exportedAt: Int64
        public var customer: CustomerRecord
        public var licences: [LicenceEntry]
        public var servers: [Server]
        public var auditEntries: [AuditEntry]
        public var dataInventory: String
    }

    public func export(customerID: Int64, access: Access) throws -> Export {
        guard let record = try store.customerRecord(customerID) else { throw PrivacyError.notFound("customer \(customerID)") }
        try audit(access, action: "export", subject: "customer \(customerID)")
        let owned = try store.licences(customerID: customerID)
        let ids = owned.map(\.id)
        var entries: [Export.LicenceEntry] = []
        for licence in owned {
            entries.append(Export.LicenceEntry(id: licence.id, tier: licence.tier, state: licence.effectiveStatus(now: clock()), issuedAt: licence.issuedAt,
                                               expiresAt: licence.expiresAt, seats: try licences.allSeats(licenceID: licence.id),
                                               history: try licences.events(licenceID: licence.id), consent: try store.consents(licenceID: licence.id),
                                               activations: try store.activations(licenceIDs: [licence.id])))
        }
        let agentIDs = Set(try store.agentsOfLicences(ids))
        let servers = try store.agents().filter { agentIDs.contains($0.agentID) }.map { agent in
            Export.Server(agentID: agent.agentID, hostname: agent.hostname, enrolledAt: agent.enrolledAt, lastSeen: agent.lastSeen,
                          removedAt: agent.removedAt, facts: agent.facts, problems: agent.problems,
                          telemetry: try store.telemetry(agentIDs: [agent.agentID]))
        }
        let subjects = Set(["customer \(customerID)"] + ids.map { "licence \($0)" } + agentIDs.map { "agent \($0)" })
        let audit = try store.auditEntries(since: 0).filter { subjects.contains($0.subject) }
        return Export(exportedAt: clock(), customer: record, licences: entries, servers: servers, auditEntries: audit,
                      dataInventory: "see `fleetkeep-controller privacy inventory` for the purpose, legal basis and retention of every field")
    }

    /// Corrects a customer's name or email (or both).
    public func rectify(customerID: Int64, name: String?, email: String?, access: Access) throws -> Customer {
        guard name != nil || email != nil else { throw PrivacyError.invalidInput("give --name NAME, --email EMAIL or both") }
        guard let record = try store.customerRecord(customerID) else { throw PrivacyError.notFound("customer \(customerID)") }
        guard record.erasedAt == nil, var customer = record.customer else { throw PrivacyError.erased(customerID: customerID) }
        if let name { customer.name = name }
        if let email { customer.email = email }
        do { try LicenceService.validate(customer) } catch let error as LicenceError {
            throw PrivacyError.invalidInput(error.description.replacingOccurrences(of: "--customer", with: "--name"))
        }
        try audit(access, action: "rectify", subject: "customer \(customerID)")
        try store.rectify(customerID: customerID, customer: customer)
        return customer
    }

    /// Erases a customer's personal data: a ledger entry first (synced), then the database (see
    /// `PrivacyStore.erase`), so a crash in between is finished at the next start.
    public func erase(customerID: Int64, access: Access) throws {
        guard let record = try store.customerRecord(customerID) else { throw PrivacyError.notFound("customer \(customerID)") }
        guard record.erasedAt == nil else { throw PrivacyError.erased(customerID: customerID) }
        try audit(access, action: "erase", subject: "customer \(customerID)")
        try ledger.append(hash: keys.ledgerHash(customerUID: record.uid), at: clock())
        try store.erase(customerID: customerID, at: clock())
    }

    /// Erases again every customer the ledger names who still has personal data: a database restored from a copy
    /// made before the erasure. Returns the customer ids erased now.
    @discardableResult
    public func applyLedger() throws -> [Int64] {
        let hashes = try ledger.hashes()
        guard !hashes.isEmpty else { return [] }
        var erased: [Int64] = []
        for record in try store.customerRecords() where record.erasedAt == nil {
            guard hashes.contains(keys.ledgerHash(customerUID: record.uid)) else { continue }
            try audit(Access(actor: "controller", reason: "erasure ledger re-applied (database restored from an older copy?)"),
                      action: "erase", subject: "customer \(record.id)")
            try store.erase(customerID: record.id, at: clock())
            erased.append(record.id)
        }
        return erased
    }

    // MARK: Retention

    public struct Retention: Codable, Sendable, Equatable {
        /// Personal data after the last licence ended, and an agent's data after it was removed.
        public var personalSeconds: Int64
        /// Raw improvement records.
        public var telemetrySeconds: Int64
    }

    public func retention() throws -> Retention {
        func read(_ name: String) throws -> Int64 {
            guard let text = try store.setting(name), let value = Int64(text), (86400...(10 * 366 * 86400)).contains(value) else {
                return Self.defaultRetentionSeconds
            }
            return value
        }
        return Retention(personalSeconds: try read("privacy_retention_seconds"), telemetrySeconds: try read("privacy_telemetry_seconds"))
    }

    public func setRetention(_ retention: Retention) throws {
        for (name, value) in [("personal", retention.personalSeconds), ("telemetry", retention.telemetrySeconds)] {
            guard (86400...(10 * 366 * 86400)).contains(value) else {
                throw PrivacyError.invalidInput("--\(name) must be between 1 day and 10 years")
            }
        }
        try store.setSetting("privacy_retention_seconds", String(retention.personalSeconds))
        try store.setSetting("privacy_telemetry_seconds", String(retention.telemetrySeconds))
    }

    /// Deletes what the declaration says has expired at the service clock's now: personal data of customers whose
    /// last licence ended longer ago than the retention (with a ledger entry, as an erasure), reported data of
    /// agents removed longer ago, raw telemetry older than its retention (monthly totals stay), expired tokens.
    public func purge(dryRun: Bool) throws -> PurgeReport {
        let now = clock()
        let retention = try retention()
        var report = PurgeReport(dryRun: dryRun)
        let cutoff = now - retention.personalSeconds
        for record in try store.customerRecords() where record.erasedAt == nil {
            let owned = try store.licences(customerID: record.id)
            var ended: Int64 = record.createdAt
            var active = false
            for licence in owned {
                guard let end = try store.licenceEnded(licence, now: now) else { active = true; break }
                ended = max(ended, end)
            }
            guard !active, ended <= cutoff else { continue }
            report.customersErased.append(record.id)
            if !dryRun {
                try audit(Access(actor: "controller", reason: "retention: no active licence for \(retention.personalSeconds / 86400) days"),
                          action: "erase", subject: "customer \(record.id)")
                try ledger.append(hash: keys.ledgerHash(customerUID: record.uid), at: now)
                try store.erase(customerID: record.id, at: now)
            }
        }
        report.agentsCleared = try store.removedAgents(before: cutoff)
        if !dryRun { for agent in report.agentsCleared { try store.clearAgent(agent) } }
        report.telemetryRecords = try store.deleteTelemetry(before: now - retention.telemetrySeconds, dryRun: dryRun)
        report.tokens = try store.deleteTokens(expiredBefore: cutoff, dryRun: dryRun)
        return report
    }

    // MARK: HTTP

    /// The privacy routes, for the controller's router.
    func addRoutes(to router: inout Router, authenticate: @escaping @Sendable (HTTPRequest) throws -> String,
                   log: @escaping @Sendable (String) -> Void) {
        router.add("POST", APIPath.telemetry) { [self] request in
            let agentID = try authenticate(request)
            return try Self.http {
                do {
                    let receipt = try ingest(agentID: agentID, body: request.body)
                    log("telemetry upload from agent \(agentID) (\(AddressPrivacy.redacted(request.remoteAddress))): stored record \(receipt.recordID), \(receipt.counters) counters")
                    return .json(receipt)
                } catch let error as PrivacyError {
                    log("telemetry upload from agent \(agentID) (\(AddressPrivacy.redacted(request.remoteAddress))): refused, \(error)")
                    throw error
                }
            }
        }
    }

    /// Runs a handler body, turning `PrivacyError` into its HTTP status.
    static func http(_ body: () throws -> HTTPResponse) throws -> HTTPResponse {
        do { return try body() } catch let error as PrivacyError {
            return .error(error.httpStatus, error.description)
        }
    }
}
