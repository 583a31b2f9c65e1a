import Crypto
import FleetkeepProtocol
import Foundation
import HTTPServer
import Synchronization

/// Licences on the controller: the operator's verbs, activation and lease renewal for agents, and validation for
/// outside callers. It sits over `LicenceStore` and `CustomerStore` and knows nothing of SQL; its errors are
/// `LicenceError`, mapped to HTTP statuses in one place (`LicenceError.httpStatus`).
public final class LicenceService: Sendable {
    public let store: any LicenceStore
    let customers: any CustomerStore
    let signingKey: Ed25519PrivateKey
    let clock: @Sendable () -> Int64
    /// The latest answer per agent and machine, so a heartbeat costs no SQL and no signature until the lease is
    /// due for renewal or the licence changed.
    private let renewals = Mutex<[String: CachedRenewal]>([:])
    /// (agent, machine) pairs already recorded.
    private let knownMachines = Mutex<Set<String>>([])
    private let lastEventID = Mutex<Int64>(0)
    let addressLimiter: TokenBucketLimiter
    let keyLimiter: TokenBucketLimiter
    /// Used for unknown licence ids, so a wrong secret and an unknown id cost the same comparison.
    private let dummyVerifierHash = SHA256.hash(SecureRandom.bytes(32))
    public static let maxValidationBody = 1024

    struct CachedRenewal: Sendable {
        var status: LicenceStatus
        var lease: SignedLease?
        var renewAt: Int64
    }

    public init(store: any LicenceStore & CustomerStore, signingKey: Ed25519PrivateKey,
                clock: @escaping @Sendable () -> Int64 = FleetkeepClock.now) {
        self.store = store
        customers = store
        self.signingKey = signingKey
        self.clock = clock
        let policy = (try? Self.policy(store)) ?? LicencePolicy()
        addressLimiter = TokenBucketLimiter(rate: policy.validateRate, burst: policy.validateBurst)
        keyLimiter = TokenBucketLimiter(rate: policy.keyRate, burst: policy.keyBurst)
        lastEventID.withLock { $0 = (try? store.latestEventID()) ?? 0 }
    }

    public var signingPublicKey: String { Base64URL.encode(signingKey.publicKey.rawRepresentation) }

    // MARK: Policy

    static func policy(_ store: any LicenceStore) throws -> LicencePolicy {
        var policy = LicencePolicy()
        if let text = try store.setting("licence_move_limit"), let value = Int(text) { policy.moveLimit = value }
        for (name, path) in LicencePolicy.settingNames {
            if let text = try store.setting(name), let value = Int64(text) { policy[keyPath: path] = value }
        }
        for (name, path) in [("licence_validate_rate", \LicencePolicy.validateRate), ("licence_validate_burst", \.validateBurst),
                             ("licence_key_rate", \.keyRate), ("licence_key_burst", \.keyBurst)] {
            if let text = try store.setting(name), let value = Double(text), value.isFinite, value > 0 { policy[keyPath: path] = value }
        }
        return policy
    }

    public func policy() throws -> LicencePolicy { try Self.policy(store) }

    public func setPolicy(_ policy: LicencePolicy) throws {
        guard (0...1000).contains(policy.moveLimit) else { throw LicenceError.invalidInput("--move-limit must be 0 to 1000") }
        for (name, value) in [("--move-window", policy.moveWindowSeconds), ("--lease-duration", policy.leaseSeconds), ("--lease-grace", policy.graceSeconds)] {
            guard (60...(10 * 365 * 86400)).contains(value) else { throw LicenceError.invalidInput("\(name) must be between 1 minute and 10 years") }
        }
        for (name, value) in [("--validate-rate", policy.validateRate), ("--validate-burst", policy.validateBurst),
                              ("--key-rate", policy.keyRate), ("--key-burst", policy.keyBurst)] {
            guard value.isFinite, value >= 0.001, value <= 1_000_000 else { throw LicenceError.invalidInput("\(name) must be between 0.001 and 1000000") }
        }
        try store.transaction {
            try store.setSetting("licence_move_limit", String(policy.moveLimit))
            for (name, path) in LicencePolicy.settingNames { try store.setSetting(name, String(policy[keyPath: path])) }
            try store.setSetting("licence_validate_rate", String(policy.validateRate))
            try store.setSetting("licence_validate_burst", String(policy.validateBurst))
            try store.setSetting("licence_key_rate", String(policy.keyRate))
            try store.setSetting("licence_key_burst", String(policy.keyBurst))
        }
    }

    // MARK: Operator verbs

    /// Issues a licence and returns it with its key (the only time the key's secret part exists in clear).
    public func issue(customer: Customer, tier: String, maxServers: Int, expiresAt: Int64?) throws -> (Licence, LicenceKey) {
        try Self.validate(customer)
        guard (1...100_000).contains(maxServers) else { throw LicenceError.invalidInput("--max-servers must be a number from 1 to 100000") }
        let now = clock()
        if let expiresAt, expiresAt <= now { throw LicenceError.invalidInput("--expires must be a date in the future") }
        return try store.transaction {
            guard try store.tier(tier) != nil else { throw LicenceError.unknownTier(tier, known: try store.tiers().map(\.name)) }
            let customerID = try customers.addCustomer(customer, now: now)
            for _ in 0..<20 {
                let key = LicenceKey.generate(licenceID: LicenceKey.randomID())
                let licence = Licence(id: key.licenceID, verifierHash: key.verifierHash, customerID: customerID, tier: tier,
                                      maxServers: maxServers, issuedAt: now, expiresAt: expiresAt, state: .active)
                if try store.insertLicence(licence) {
                    try store.addEvent(licenceID: licence.id, LicenceEvent(at: now, kind: "issued", agentID: nil,
                                                                           detail: "tier \(tier), \(maxServers) servers\(expiresAt.map { ", expires \(UTCText.format($0))" } ?? "")"))
                    return (licence, key)
                }
            }
            throw ControllerError("could not find a free licence id after 20 tries; the licence space is nearly full")
        }
    }

    static func validate(_ customer: Customer) throws {
        func clean(_ text: String) -> Bool { !text.unicodeScalars.contains { $0.properties.generalCategory == .control } }
        guard !customer.name.trimmingCharacters(in: .whitespaces).isEmpty, customer.name.count <= 200, clean(customer.name) else {
            throw LicenceError.invalidInput("--customer must be 1 to 200 printable characters")
        }
        let parts = customer.email.split(separator: "@", omittingEmptySubsequences: false)
        guard customer.email.utf8.count <= 254, parts.count == 2, !parts[0].isEmpty, parts[1].contains("."), !parts[1].hasPrefix("."),
              !customer.email.contains(where: { $0.isWhitespace }), clean(customer.email) else {
            throw LicenceError.invalidInput("--email '\(customer.email)' is not an email address (name@example.com)")
        }
    }

    /// A licence by id or key. A key must also match its secret, so `show KEY` never reveals a licence to a guess.
    public func find(_ idOrKey: String) throws -> Licence {
        if let id = LicenceKey.normalizedID(idOrKey) {
            guard let licence = try store.licence(id: id) else { throw LicenceError.notFound("licence \(id)") }
            return licence
        }
        let key: LicenceKey
        do { key = try LicenceKey(text: idOrKey) } catch { throw LicenceError.malformedKey("'\(idOrKey)' is neither a licence id (5 characters) nor a key: \(error)") }
        return try licence(for: key)
    }

    /// The licence a key opens; `keyNotValid` for an unknown id and for a wrong secret alike, in the same time.
    func licence(for key: LicenceKey) throws -> Licence {
        let found = try store.licence(id: key.licenceID)
        let matches = HMACSHA256.equal(found?.verifierHash ?? dummyVerifierHash, key.verifierHash)
        guard let found, matches else { throw LicenceError.keyNotValid }
        return found
    }

    public struct Detail: Codable, Sendable {
        public var id: String
        public var customerID: Int64
        public var customer: Customer?
        public var tier: String
        public var features: [String]
        public var maxServers: Int
        public var issuedAt: Int64
        public var expiresAt: Int64?
        public var state: String
        public var status: String
        public var servers: [Seat]
        public var releasedServers: [Seat]
        public var history: [LicenceEvent]
    }

    public func detail(_ licence: Licence) throws -> Detail {
        let seats = try store.allSeats(licenceID: licence.id)
        return Detail(id: licence.id, customerID: licence.customerID, customer: try customers.customer(licence.customerID), tier: licence.tier,
                      features: try store.tier(licence.tier)?.features ?? [], maxServers: licence.maxServers, issuedAt: licence.issuedAt,
                      expiresAt: licence.expiresAt, state: licence.state.rawValue, status: licence.effectiveStatus(now: clock()),
                      servers: seats.filter { $0.releasedAt == nil }, releasedServers: seats.filter { $0.releasedAt != nil },
                      history: try store.events(licenceID: licence.id))
    }

    public struct Summary: Codable, Sendable {
        public var id: String
        public var customer: String
        public var tier: String
        public var status: String
        public var servers: ServerCount
        public var expiresAt: Int64?
    }

    public func list() throws -> [Summary] {
        let now = clock()
        return try store.licences().map { licence in
            Summary(id: licence.id, customer: try customers.customer(licence.customerID)?.name ?? "?", tier: licence.tier,
                    status: licence.effectiveStatus(now: now), servers: ServerCount(used: try store.activeSeatCount(licenceID: licence.id), max: licence.maxServers),
                    expiresAt: licence.expiresAt)
        }
    }

    /// suspend, resume or revoke. Revoked is final; the change reaches online agents at their next heartbeat.
    public func change(_ idOrKey: String, to state: LicenceState) throws -> Licence {
        let now = clock()
        return try store.transaction {
            var licence = try find(idOrKey)
            switch (licence.state, state) {
            case (.revoked, _): throw LicenceError.wrongState("licence \(licence.id) is revoked; revocation is final, issue a new licence")
            case (let current, let wanted) where current == wanted:
                throw LicenceError.wrongState("licence \(licence.id) is already \(wanted.rawValue)")
            default: break
            }
            try store.setState(licenceID: licence.id, state)
            let kind = state == .active ? "resumed" : state.rawValue
            try store.addEvent(licenceID: licence.id, LicenceEvent(at: now, kind: kind, agentID: nil, detail: "was \(licence.state.rawValue)"))
            licence.state = state
            return licence
        }
    }

    /// Frees the seat `agentID` holds on a licence, and clears its machine sightings: the operator's decision on a
    /// clone. Its next heartbeat gets no lease; a new activation may take the seat.
    public func deactivateServer(_ idOrKey: String, agentID: String) throws {
        let now = clock()
        try store.transaction {
            let licence = try find(idOrKey)
            guard !(try store.releaseSeat(agentID: agentID, licenceID: licence.id, now: now)).isEmpty else {
                throw LicenceError.notFound("agent \(agentID) on licence \(licence.id) (bound: \(try store.activeSeats(licenceID: licence.id).map(\.agentID).joined(separator: ", ")))")
            }
            try store.forgetMachines(agentID: agentID)
            try store.addEvent(licenceID: licence.id, LicenceEvent(at: now, kind: "deactivated", agentID: agentID, detail: "seat freed by the operator"))
        }
        forget(agentID: agentID)
    }

    /// An agent removed with `agents remove` gives its seats back.
    public func agentRemoved(_ agentID: String) throws {
        let now = clock()
        try store.transaction {
            for licenceID in try store.releaseSeat(agentID: agentID, licenceID: nil, now: now) {
                try store.addEvent(licenceID: licenceID, LicenceEvent(at: now, kind: "deactivated", agentID: agentID, detail: "agent removed"))
            }
            try store.forgetMachines(agentID: agentID)
        }
        forget(agentID: agentID)
    }

    public func saveTier(name: String, features: [String], description: String) throws {
        guard !name.isEmpty, name.count <= 40, name.allSatisfy({ $0.isLetter || $0.isNumber || $0 == "-" || $0 == "_" }) else {
            throw LicenceError.invalidInput("tier name '\(name)' must be 1 to 40 letters, digits, - or _")
        }
        for feature in features {
            let parts = feature.split(separator: ":", omittingEmptySubsequences: false)
            guard (1...2).contains(parts.count), !parts[0].isEmpty, parts[0].allSatisfy({ $0.isLetter || $0 == "-" }),
                  parts.count == 1 || Int(parts[1]).map({ $0 >= 0 }) == true else {
                throw LicenceError.invalidInput("feature '\(feature)' must be a name (offsite) or name:number (max-accounts:100)")
            }
        }
        try store.saveTier(LicenceTier(name: name, features: features, description: description))
    }

    // MARK: Agents: activation and renewal

    /// Binds the agent to the licence on this machine and returns its first lease.
    public func activate(agentID: String, request: ActivationRequest) throws -> ActivationResponse {
        let key: LicenceKey
        do { key = try LicenceKey(text: request.key) } catch { throw LicenceError.malformedKey("\(error)") }
        guard request.machine.isWellFormed else { throw LicenceError.invalidInput("machine identity must be two 64-character lowercase hex hashes") }
        let machine = request.machine.machineHash
        let now = clock()
        let policy = try policy()
        let lease = try store.transaction { () throws -> SignedLease in
            let licence = try licence(for: key)
            let status = licence.effectiveStatus(now: now)
            guard status == "valid" else { throw LicenceError.notActive(licenceID: licence.id, status: status) }
            _ = try noteMachine(agentID: agentID, machineHash: machine, now: now)
            if try store.machines(agentID: agentID).count > 1 { throw LicenceError.clone(agentID: agentID) }
            if let seat = try store.activeSeat(agentID: agentID) {
                guard seat.licenceID == licence.id else { throw LicenceError.boundElsewhere(agentID: agentID, licenceID: seat.licenceID) }
                // Already bound here: activating again just hands out a fresh lease.
                return try signLease(licence: licence, agentID: agentID, machineHash: seat.machineHash, now: now, policy: policy, event: nil).lease
            }
            let bound = try store.activeSeats(licenceID: licence.id)
            guard bound.count < licence.maxServers else {
                throw LicenceError.noFreeSeat(licenceID: licence.id, used: bound.count, max: licence.maxServers, agents: bound.map(\.agentID))
            }
            // A seat that another server held before: this activation is a move.
            let isMove = try store.allSeats(licenceID: licence.id).count >= licence.maxServers
            if isMove {
                let windowStart = now - policy.moveWindowSeconds
                let moves = try store.eventTimes(licenceID: licence.id, kind: "moved", since: windowStart + 1)
                if moves.count >= policy.moveLimit {
                    let next = (moves.dropFirst(moves.count - max(policy.moveLimit, 1)).first ?? now) + policy.moveWindowSeconds
                    throw LicenceError.moveLimit(licenceID: licence.id, limit: policy.moveLimit, windowDays: policy.moveWindowSeconds / 86400, nextPossibleAt: next)
                }
            }
            try store.insertSeat(Seat(licenceID: licence.id, agentID: agentID, machineHash: machine, activatedAt: now))
            return try signLease(licence: licence, agentID: agentID, machineHash: machine, now: now, policy: policy,
                                 event: LicenceEvent(at: now, kind: isMove ? "moved" : "activated", agentID: agentID,
                                                     detail: "machine \(machine.prefix(12))…")).lease
        }
        forget(agentID: agentID)
        return ActivationResponse(lease: lease, controllerSigningKey: signingPublicKey, controllerTime: now)
    }

    /// Signs a lease for a bound agent, records its serial and expiry on the seat, and adds `event` (or "renewed").
    private func signLease(licence: Licence, agentID: String, machineHash: String, now: Int64, policy: LicencePolicy,
                           event: LicenceEvent?) throws -> (lease: SignedLease, expiresAt: Int64) {
        let tier = try store.tier(licence.tier)
        let status = licence.effectiveStatus(now: now)
        var expires = now + policy.leaseSeconds
        if let licenceEnd = licence.expiresAt { expires = min(expires, licenceEnd) }
        let serial = try store.nextLeaseSerial()
        let lease = LicenceLease(licenceID: licence.id, state: status == "valid" ? "active" : status, tier: licence.tier,
                                 features: tier?.features ?? [], agentID: agentID, machineHash: machineHash, issuedAt: now,
                                 expiresAt: expires, graceSeconds: policy.graceSeconds, serial: serial)
        try store.recordLease(agentID: agentID, serial: serial, expiresAt: expires)
        try store.addEvent(licenceID: licence.id, event ?? LicenceEvent(at: now, kind: "renewed", agentID: agentID,
                                                                          detail: "lease \(serial) until \(UTCText.format(expires))"))
        return (try SignedLease.sign(lease, with: signingKey), expires)
    }

    /// Records a sighting of (agent, machine); flags a clone on the licence when the agent shows a second machine.
    /// Runs inside the caller's transaction, so the pair joins `knownMachines` only once that commits (`renewal`):
    /// a rolled-back sighting must be recorded again.
    private func noteMachine(agentID: String, machineHash: String, now: Int64) throws -> Bool {
        if knownMachines.withLock({ $0.contains(agentID + "/" + machineHash) }) { return false }
        let isNew = try store.recordMachine(agentID: agentID, machineHash: machineHash, now: now)
        if isNew, try store.machines(agentID: agentID).count > 1, let seat = try store.activeSeat(agentID: agentID) {
            try store.addEvent(licenceID: seat.licenceID, LicenceEvent(at: now, kind: "clone-flagged", agentID: agentID,
                                                                       detail: "agent key seen on machine \(machineHash.prefix(12))… besides \(seat.machineHash.prefix(12))…"))
        }
        return isNew
    }

    /// The licence answer for one heartbeat: the status and, when the agent is bound on this machine, a lease
    /// (renewed once `renewAfterSeconds` have passed or the licence changed; otherwise the cached one).
    public func renewal(agentID: String, machine: MachineIdentity?, now: Int64) throws -> (LicenceStatus, SignedLease?) {
        let machineHash = machine.flatMap { $0.isWellFormed ? $0.machineHash : nil }
        let cacheKey = agentID + "/" + (machineHash ?? "-")
        if let cached = renewals.withLock({ $0[cacheKey] }), now < cached.renewAt { return (cached.status, cached.lease) }
        let policy = try policy()
        let answer = try store.transaction { () throws -> CachedRenewal in
            if let machineHash { _ = try noteMachine(agentID: agentID, machineHash: machineHash, now: now) }
            let recheck = now + policy.renewAfterSeconds
            guard let seat = try store.activeSeat(agentID: agentID), let licence = try store.licence(id: seat.licenceID) else {
                return CachedRenewal(status: .unlicensed, lease: nil, renewAt: recheck)
            }
            guard let machineHash else {
                return CachedRenewal(status: LicenceStatus(status: "invalid", tier: licence.tier, validUntil: 0,
                                                           reason: "this agent does not report its machine identity; update the agent"),
                                     lease: nil, renewAt: recheck)
            }
            // The seat belongs to the machine that activated; the same key on another machine is a clone.
            if machineHash != seat.machineHash {
                return CachedRenewal(status: LicenceStatus(status: "invalid", tier: licence.tier, validUntil: 0,
                                                           reason: LicenceError.clone(agentID: agentID).description),
                                     lease: nil, renewAt: recheck)
            }
            let (lease, expiresAt) = try signLease(licence: licence, agentID: agentID, machineHash: machineHash, now: now, policy: policy, event: nil)
            let status = licence.effectiveStatus(now: now)
            return CachedRenewal(status: LicenceStatus(status: status, tier: licence.tier, validUntil: expiresAt,
                                                       reason: status == "valid" ? nil : "licence \(licence.id) is \(status)"),
                                 lease: lease, renewAt: recheck)
        }
        if let machineHash { knownMachines.withLock { _ = $0.insert(agentID + "/" + machineHash) } }
        renewals.withLock { $0[cacheKey] = answer }
        return (answer.status, answer.lease)
    }

    /// Drops cached answers of one agent (all its machines).
    func forget(agentID: String) {
        renewals.withLock { cache in
            for key in cache.keys where key.hasPrefix(agentID + "/") { cache.removeValue(forKey: key) }
        }
        knownMachines.withLock { set in set = set.filter { !$0.hasPrefix(agentID + "/") } }
    }

    /// Picks up changes made by operator commands in other processes (suspend, revoke, deactivate-server): drops
    /// the cached answers of every agent on a changed licence, so its next heartbeat carries the change.
    public func refreshChanges() throws {
        let after = lastEventID.withLock { $0 }
        let changes = try store.changes(afterID: after)
        guard changes.lastID > after else { return }
        var agents = changes.agentIDs
        for licenceID in changes.licenceIDs { agents.formUnion(try store.activeSeats(licenceID: licenceID).map(\.agentID)) }
        for agentID in agents { forget(agentID: agentID) }
        lastEventID.withLock { $0 = changes.lastID }
    }

    // MARK: Outside callers: validation

    /// `POST /v1/licences/validate`. Rate-limited per client address before any parsing, then per key (id and secret).
    public func validate(body: [UInt8], remoteAddress: String) throws -> ValidationResponse {
        if let retry = addressLimiter.take("a/" + remoteAddress) { throw LicenceError.rateLimited(retryAfter: retry) }
        guard body.count <= Self.maxValidationBody else { throw LicenceError.tooLarge(limit: Self.maxValidationBody) }
        let request: ValidationRequest
        do { request = try JSONDecoder().decode(Strict<ValidationRequest>.self, from: Data(body)).value } catch {
            throw LicenceError.invalidInput("request body must be JSON {\"key\": \"FK-...\"}: \(ControllerService.describe(error))")
        }
        if let nonce = request.nonce, nonce.utf8.count > 64 { throw LicenceError.invalidInput("nonce must be at most 64 bytes") }
        let key: LicenceKey
        do { key = try LicenceKey(text: request.key) } catch { throw LicenceError.malformedKey("\(error)") }
        // Per whole key (id and secret), not per licence id: the id is public, and keys with it and any secret are
        // easy to build, so a limit per id let anyone lock a customer's genuine key out.
        if let retry = keyLimiter.take("k/" + key.digest) { throw LicenceError.rateLimited(retryAfter: retry) }
        let now = clock()
        // Same work whether the id exists or not: one lookup, one seat count, one constant-time comparison.
        let found = try store.licence(id: key.licenceID)
        let used = try store.activeSeatCount(licenceID: key.licenceID)
        let tier = try store.tier(found?.tier ?? "")
        let matches = HMACSHA256.equal(found?.verifierHash ?? dummyVerifierHash, key.verifierHash)
        let answer: ValidationAnswer
        if let licence = found, matches {
            answer = ValidationAnswer(status: licence.effectiveStatus(now: now), tier: licence.tier, features: tier?.features ?? [],
                                      expiresAt: licence.expiresAt, servers: ServerCount(used: used, max: licence.maxServers),
                                      keyDigest: key.digest, checkedAt: now, nonce: request.nonce)
        } else {
            answer = ValidationAnswer(status: "unknown", tier: nil, features: [], expiresAt: nil, servers: ServerCount(used: 0, max: 0),
                                      keyDigest: key.digest, checkedAt: now, nonce: request.nonce)
        }
        return try ValidationResponse.sign(answer, with: signingKey)
    }

    // MARK: HTTP

    /// The licence routes, for the controller's router.
    /// `activated` runs after each successful activation with the agent id, the licence id, the request and the
    /// client address (the controller keeps them in its encrypted activation record).
    func addRoutes(to router: inout Router, authenticate: @escaping @Sendable (HTTPRequest) throws -> String,
                   activated: @escaping @Sendable (_ agentID: String, _ licenceID: String, ActivationRequest, _ remoteAddress: String) -> Void = { _, _, _, _ in }) {
        router.add("POST", APIPath.licenceActivate) { [self] request in
            let agentID = try authenticate(request)
            let body: ActivationRequest
            do { body = try JSONDecoder().decode(Strict<ActivationRequest>.self, from: Data(request.body)).value } catch {
                throw HTTPError(400, "request body must be JSON {\"key\": \"FK-...\", \"machine\": {...}}: \(ControllerService.describe(error))")
            }
            if let address = body.address, !AddressPrivacy.isAddress(address) {
                throw HTTPError(400, "address must be an IPv4 or IPv6 address; nothing was activated")
            }
            return try Self.http {
                let answer = try activate(agentID: agentID, request: body)
                if let licenceID = try? LicenceKey(text: body.key).licenceID { activated(agentID, licenceID, body, request.remoteAddress) }
                return .json(answer)
            }
        }
        router.add("POST", APIPath.licenceValidate) { [self] request in
            try Self.http { .json(try validate(body: request.body, remoteAddress: request.remoteAddress)) }
        }
        router.add("GET", APIPath.licenceSigningKey) { [self] _ in .json(SigningKeyResponse(signingKey: signingPublicKey)) }
    }

    /// Runs a handler body, turning `LicenceError` into its HTTP status (with Retry-After on 429).
    static func http(_ body: () throws -> HTTPResponse) throws -> HTTPResponse {
        do { return try body() } catch let error as LicenceError {
            var response = HTTPResponse.error(error.httpStatus, error.description)
            if case .rateLimited(let seconds) = error { response.headers["Retry-After"] = String(seconds) }
            return response
        }
    }
}
