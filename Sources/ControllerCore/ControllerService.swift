import Crypto
import FleetkeepProtocol
import Foundation
import HTTPServer
import Synchronization

/// The controller's request handlers: enrollment, sessions and signed heartbeats.
public final class ControllerService: Sendable {
    public let store: ControllerStore
    let replayGuard = ReplayGuard(window: RequestSigning.allowedSkew)
    let certificatePin: String
    let sessions: SessionTickets
    let clock: @Sendable () -> Int64
    /// Public keys of active agents, so a heartbeat costs no key lookup in SQLite.
    private let keyCache = Mutex<[String: Ed25519PublicKey]>([:])
    /// Latest heartbeat per agent not yet written, when writes are batched (see `startBatchedWrites`).
    private let pendingHeartbeats = Mutex<[String: PendingHeartbeat]?>(nil)
    /// Per agent, the signed timestamp of the last heartbeat stored before this process started. The nonce cache
    /// starts empty after a restart, so a heartbeat signed at or before that time is refused as a possible replay.
    private let restartFloor: [String: Int64]
    private let interval: Int
    /// Licences, leases and the validation API (see `LicenceService`).
    public let licences: LicenceService
    /// Consent, telemetry, audit, data-subject requests and retention (see `PrivacyService`).
    public let privacy: PrivacyService
    /// The controller's own log (standard output when serving). Addresses in it are cut down (`AddressPrivacy`).
    let log: @Sendable (String) -> Void

    /// `sessionSecret` keys the session tokens (see `SessionTickets`); serving processes derive it from the signing key.
    /// `signingKey` signs leases and validation answers; serving processes load the controller's own.
    public init(store: ControllerStore, certificatePin: String, sessionSecret: [UInt8] = SecureRandom.bytes(32),
                signingKey: Ed25519PrivateKey = Ed25519PrivateKey(),
                clock: @escaping @Sendable () -> Int64 = FleetkeepClock.now,
                log: @escaping @Sendable (String) -> Void = { print($0); fflush(nil) }) {
        self.store = store
        self.log = log
        self.certificatePin = certificatePin
        sessions = SessionTickets(secret: sessionSecret)
        let started = clock()
        // Clamped to this clock as well, for floors stored before recordHeartbeat clamped them.
        restartFloor = ((try? store.lastSignedHeartbeats(since: started - RequestSigning.allowedSkew - 60)) ?? [:]).mapValues { min($0, started) }
        self.clock = clock
        interval = (try? store.heartbeatInterval()) ?? 300
        licences = LicenceService(store: SQLiteLicenceStore(database: store.database, keys: store.keys), signingKey: signingKey, clock: clock)
        privacy = PrivacyService(controllerStore: store, clock: clock)
    }

    /// Batches heartbeat writes: each heartbeat updates memory, and one transaction per `period` writes the latest
    /// heartbeat of every agent. At thousands of heartbeats a second this turns thousands of commits into one;
    /// the report lags by at most `period`. Call `flushHeartbeats` before exiting.
    public func startBatchedWrites(period: Double = 1) {
        pendingHeartbeats.withLock { if $0 == nil { $0 = [:] } }
        Thread.detachNewThread { [self] in
            var removalsCheckedAt = clock()
            while true {
                Thread.sleep(forTimeInterval: period)
                try? flushHeartbeats()
                // `agents remove` runs in another process: pick its removals up here, within about a period.
                let now = clock()
                if let removed = try? store.removedAgents(since: removalsCheckedAt - 2) {
                    keyCache.withLock { cache in for agentID in removed { cache.removeValue(forKey: agentID) } }
                }
                removalsCheckedAt = now
                try? licences.refreshChanges()
                try? privacy.refresh()
            }
        }
    }

    /// Runs the retention purge now and then once a day (see `PrivacyService.purge`), logging what it deleted.
    public func startDailyPurge(period: Double = 86400) {
        Thread.detachNewThread { [self] in
            while true {
                do {
                    let report = try privacy.purge(dryRun: false)
                    log("privacy purge: \(report.customersErased.count) customers erased, \(report.agentsCleared.count) removed agents cleared, \(report.telemetryRecords) telemetry records and \(report.tokens) tokens deleted")
                } catch {
                    log("privacy purge failed: \(error); it runs again in \(Int(period))s")
                }
                Thread.sleep(forTimeInterval: period)
            }
        }
    }

    /// Writes batched heartbeats now, in one transaction.
    public func flushHeartbeats() throws {
        let batch = pendingHeartbeats.withLock { pending -> [String: PendingHeartbeat] in
            guard let current = pending else { return [:] }
            pending = [:]
            return current
        }
        guard !batch.isEmpty else { return }
        try store.database.transaction { _ in
            for (agentID, beat) in batch {
                try store.recordHeartbeat(agentID: agentID, facts: beat.facts, problems: beat.problems, now: beat.at, signedAt: beat.signedAt)
            }
        }
    }

    public var router: Router {
        var router = Router()
        router.add("GET", APIPath.health) { _ in .json(["status": "ok"]) }
        router.add("POST", APIPath.enroll) { [self] in try enroll($0) }
        router.add("POST", APIPath.heartbeat) { [self] in try heartbeat($0) }
        router.add("POST", APIPath.session) { [self] in try openSession($0) }
        router.add("POST", APIPath.escrowRecipient) { [self] request in
            _ = try authenticate(request)
            _ = try decode(EmptyRequest.self, request)
            return .json(EscrowRecipient(recoveryPublicKey: try store.setting("recovery_public_key")))
        }
        router.add("POST", APIPath.escrow) { [self] in try depositEscrow($0) }
        licences.addRoutes(to: &router, authenticate: { [self] in try authenticate($0) }) { [self] agentID, licenceID, request, remoteAddress in
            do {
                try privacy.recordActivation(licenceID: licenceID, agentID: agentID, requestAddress: remoteAddress, serverAddress: request.address,
                                             hostname: try store.hostname(agentID: agentID))
                log("licence \(licenceID) activated by agent \(agentID) from \(AddressPrivacy.redacted(remoteAddress))")
            } catch {
                log("licence \(licenceID) activated by agent \(agentID), but its activation record was not stored: \(error)")
            }
        }
        privacy.addRoutes(to: &router, authenticate: { [self] in try authenticate($0) }, log: log)
        return router
    }

    func enroll(_ request: HTTPRequest) throws -> HTTPResponse {
        let body = try decode(EnrollRequest.self, request)
        guard let raw = Base64URL.decode(body.publicKey), let key = try? Ed25519PublicKey(rawRepresentation: raw) else {
            throw HTTPError(400, "publicKey is not a base64url Ed25519 public key")
        }
        if let violation = DataInventory.violation(facts: body.facts, problems: body.problems) { throw HTTPError(400, violation) }
        guard request.headers[RequestSigning.keyHeader] == body.publicKey else {
            throw HTTPError(400, "\(RequestSigning.keyHeader) header must carry the publicKey being enrolled")
        }
        guard request.headers[RequestSigning.agentHeader] == nil, request.headers[RequestSigning.sessionHeader] == nil else {
            throw HTTPError(400, "enrollment is signed with the key being registered only: drop the \(RequestSigning.agentHeader) and \(RequestSigning.sessionHeader) headers")
        }
        guard body.controllerPin == certificatePin else {
            throw HTTPError(403, "enrollment token was made for another controller (its certificate fingerprint \(body.controllerPin) is not this controller's); create a token on this controller")
        }
        let now = clock()
        do {
            // Proof of possession: the enrollment body is signed by the key being registered.
            let signed = try RequestSigning.verify(method: request.method, path: request.path, headers: request.headers, body: request.body,
                                                   publicKey: key, now: now)
            let agentID = RequestSigning.agentID(for: key)
            guard try store.admitSignedNonce(agentID: agentID, nonce: signed.nonce, signedAt: signed.timestamp, now: now,
                                             window: RequestSigning.allowedSkew) else {
                throw HTTPError(409, "replayed request: this nonce was already used")
            }
            _ = try store.enroll(tokenID: body.tokenID, secret: body.tokenSecret, publicKey: key,
                                           facts: body.facts, problems: body.problems, now: now)
            return .json(EnrollResponse(agentID: agentID, heartbeatIntervalSeconds: interval, licence: .unlicensed,
                                        controllerSigningKey: licences.signingPublicKey))
        } catch let rejection as RequestSigning.Rejection {
            throw HTTPError(rejection.status, rejection.message)
        }
    }

    func heartbeat(_ request: HTTPRequest) throws -> HTTPResponse {
        let (agentID, signedAt) = try authenticateRequest(request)
        if let floor = restartFloor[agentID], signedAt <= floor {
            throw HTTPError(409, "replayed request: signed at or before the last heartbeat stored before the controller restarted; sign it again")
        }
        let body = try decode(HeartbeatRequest.self, request)
        if let violation = DataInventory.violation(facts: body.facts, problems: body.problems) {
            log("heartbeat from agent \(agentID) (\(AddressPrivacy.redacted(request.remoteAddress))) refused: \(violation)")
            throw HTTPError(400, violation)
        }
        let now = clock()
        let batched = pendingHeartbeats.withLock { pending -> Bool in
            guard pending != nil else { return false }
            let latest = max(pending?[agentID]?.signedAt ?? signedAt, signedAt)
            pending?[agentID] = PendingHeartbeat(facts: body.facts, problems: body.problems, at: now, signedAt: latest)
            return true
        }
        if !batched { try store.recordHeartbeat(agentID: agentID, facts: body.facts, problems: body.problems, now: now, signedAt: signedAt) }
        let (licence, lease) = try licences.renewal(agentID: agentID, machine: body.machine, now: now)
        return .json(HeartbeatResponse(heartbeatIntervalSeconds: interval, licence: licence, lease: lease, controllerTime: now,
                                       telemetryConsent: try privacy.consentForHeartbeat(agentID: agentID)))
    }

    /// Stores a repository key sealed to the operator's recovery key; only that exact key is accepted, so an agent
    /// cannot escrow to a key the operator does not hold.
    func depositEscrow(_ request: HTTPRequest) throws -> HTTPResponse {
        let agentID = try authenticate(request)
        let body = try decode(EscrowDeposit.self, request)
        guard let expected = try store.setting("recovery_public_key") else {
            throw HTTPError(409, "no recovery key is configured on the controller; run `fleetkeep-controller recovery-key set`")
        }
        guard body.recoveryPublicKey == expected else { throw HTTPError(409, "sealed to a recovery key this controller does not use") }
        guard let sealed = Base64URL.decode(body.sealedKey), sealed.count >= 60, sealed.count <= 4096 else {
            throw HTTPError(400, "sealedKey is not a base64url sealed box")
        }
        try store.depositEscrow(agentID: agentID, recoveryPublicKey: expected, sealedKey: sealed, now: clock())
        return .json(["status": "stored"])
    }

    /// Opens a session: the request must carry the agent's own Ed25519 signature; the answer is a token and HMAC key
    /// for the cheaper per-request scheme.
    func openSession(_ request: HTTPRequest) throws -> HTTPResponse {
        guard request.headers[RequestSigning.sessionHeader] == nil else {
            throw HTTPError(401, "a session must be opened with the agent's Ed25519 signature, not with another session")
        }
        let agentID = try authenticate(request)
        _ = try decode(EmptyRequest.self, request)
        let now = clock()
        let credentials = sessions.mint(agentID: agentID, now: now)
        return .json(SessionResponse(sessionToken: credentials.token, sessionKey: Base64URL.encode(credentials.key),
                                     expiresAt: credentials.expiresAt, expiresInSeconds: credentials.expiresAt - now))
    }

    /// Verifies the signature headers of an agent request (Ed25519 or session HMAC) and returns the agent id.
    func authenticate(_ request: HTTPRequest) throws -> String { try authenticateRequest(request).agentID }

    /// Verifies the signature headers and returns the agent id and the request's signed timestamp.
    func authenticateRequest(_ request: HTTPRequest) throws -> (agentID: String, timestamp: Int64) {
        // Exactly one identity per request, so no header is silently ignored.
        guard request.headers[RequestSigning.keyHeader] == nil else {
            throw HTTPError(400, "\(RequestSigning.keyHeader) is only sent with \(APIPath.enroll); sign with \(RequestSigning.agentHeader) or \(RequestSigning.sessionHeader)")
        }
        guard request.headers[RequestSigning.sessionHeader] == nil || request.headers[RequestSigning.agentHeader] == nil else {
            throw HTTPError(400, "send either \(RequestSigning.agentHeader) or \(RequestSigning.sessionHeader), not both")
        }
        let now = clock()
        let agentID: String
        let verify: () throws -> (timestamp: Int64, nonce: String)
        var durableNonce = false
        if let token = request.headers[RequestSigning.sessionHeader] {
            let session: (agentID: String, key: [UInt8])
            do { session = try sessions.open(token, now: now) } catch let rejection as RequestSigning.Rejection {
                throw HTTPError(rejection.status, rejection.message)
            }
            agentID = session.agentID
            verify = { try RequestSigning.verify(method: request.method, path: request.path, headers: request.headers,
                                                 body: request.body, sessionKey: session.key, now: now) }
        } else if let claimed = request.headers[RequestSigning.agentHeader] {
            agentID = claimed
            // Ed25519 requests open sessions and deposit keys: rare, and worth a replay check that survives a restart.
            durableNonce = true
            guard let key = try cachedKey(agentID) else { throw Self.notEnrolled(agentID) }
            verify = { try RequestSigning.verify(method: request.method, path: request.path, headers: request.headers,
                                                 body: request.body, publicKey: key, now: now) }
        } else {
            throw HTTPError(401, "request is not signed: missing \(RequestSigning.agentHeader) or \(RequestSigning.sessionHeader) header")
        }
        // A removed agent's unexpired sessions die with it.
        guard try cachedKey(agentID) != nil else { throw Self.notEnrolled(agentID) }
        do {
            let (timestamp, nonce) = try verify()
            guard replayGuard.admit(agentID: agentID, nonce: nonce, timestamp: timestamp, now: now) else {
                throw HTTPError(409, "replayed request: this nonce was already used")
            }
            if durableNonce, try !store.admitSignedNonce(agentID: agentID, nonce: nonce, signedAt: timestamp, now: now,
                                                        window: RequestSigning.allowedSkew) {
                throw HTTPError(409, "replayed request: this nonce was already used (before the controller restarted)")
            }
            // Session-signed requests have no stored nonces: after a restart, one signed at or before the agent's
            // last stored heartbeat can only be a replay (telemetry stored twice, a job poll answered again).
            if !durableNonce, let floor = restartFloor[agentID], timestamp <= floor {
                throw HTTPError(409, "replayed request: signed at or before the last heartbeat stored before the controller restarted; sign it again")
            }
            return (agentID, timestamp)
        } catch let rejection as RequestSigning.Rejection {
            throw HTTPError(rejection.status, rejection.message)
        }
    }

    static func notEnrolled(_ agentID: String) -> HTTPError {
        HTTPError(403, "agent \(agentID) is not enrolled or was removed; enroll it again with a new token")
    }

    private func cachedKey(_ agentID: String) throws -> Ed25519PublicKey? {
        if let key = keyCache.withLock({ $0[agentID] }) { return key }
        guard let key = try store.activeKey(agentID: agentID) else { return nil }
        keyCache.withLock { $0[agentID] = key }
        return key
    }

    /// Forgets a removed agent's key so its next request is refused at once.
    public func removeAgent(_ agentID: String) throws -> Bool {
        keyCache.withLock { _ = $0.removeValue(forKey: agentID) }
        guard try store.removeAgent(agentID, now: clock()) else { return false }
        try licences.agentRemoved(agentID)
        return true
    }

    /// Decodes a request body, refusing fields the protocol does not declare (`Strict`).
    func decode<T: StrictlyDecoded>(_ type: T.Type, _ request: HTTPRequest) throws -> T {
        do {
            return try JSONDecoder().decode(Strict<T>.self, from: Data(request.body)).value
        } catch {
            throw HTTPError(400, "request body is not valid \(type) JSON: \(Self.describe(error))")
        }
    }

    static func describe(_ error: any Error) -> String {
        switch error {
        case DecodingError.keyNotFound(let key, _): return "missing field '\(key.stringValue)'"
        case DecodingError.typeMismatch(_, let context), DecodingError.valueNotFound(_, let context):
            return "wrong type at '\(context.codingPath.map(\.stringValue).joined(separator: "."))'"
        case DecodingError.dataCorrupted(let context) where context.debugDescription.hasPrefix("unknown field"):
            return context.debugDescription
        case DecodingError.dataCorrupted: return "malformed JSON"
        default: return "\(error)"
        }
    }
}

/// The latest heartbeat of one agent, waiting for the next batched write.
struct PendingHeartbeat: Sendable {
    var facts: [String: String]
    var problems: [String: String]
    /// Controller clock when it arrived (last seen).
    var at: Int64
    /// The newest signed timestamp among this agent's batched heartbeats (the restart replay floor).
    var signedAt: Int64
}
