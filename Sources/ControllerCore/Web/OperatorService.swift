import Crypto
import FleetkeepProtocol
import Foundation

/// Why a dashboard request was refused. `httpStatus` is the one place these become HTTP statuses; pages render
/// the description as HTML, the JSON endpoints as `{"error": ...}`.
public enum DashboardError: Error, Sendable, Equatable, CustomStringConvertible {
    /// No session, or it expired: pages redirect to the login page.
    case notSignedIn(String)
    case wrongCredentials
    case forbidden(String)
    case invalidInput(String)
    case notFound(String)
    case conflict(String)
    case rateLimited(retryAfter: Int)

    public var httpStatus: Int {
        switch self {
        case .notSignedIn, .wrongCredentials: return 401
        case .forbidden: return 403
        case .invalidInput: return 400
        case .notFound: return 404
        case .conflict: return 409
        case .rateLimited: return 429
        }
    }

    public var description: String {
        switch self {
        case .notSignedIn(let reason): return reason
        case .wrongCredentials: return "wrong operator name or password"
        case .forbidden(let reason), .invalidInput(let reason), .notFound(let reason), .conflict(let reason): return reason
        case .rateLimited(let seconds): return "too many sign-in attempts; try again in \(seconds) s"
        }
    }
}

/// A signed-in operator, as a request handler sees it.
public struct OperatorSession: Sendable {
    public let operatorID: Int64
    public let name: String
    public let role: OperatorRole
    public let csrf: String
    public var isAdmin: Bool { role == .admin }
}

/// How long sessions and password links live, and how hard passwords are to guess.
public struct OperatorPolicy: Sendable {
    /// A session unused for this long is over.
    public var idleSeconds: Int64 = 30 * 60
    /// No session lives longer than this, used or not.
    public var absoluteSeconds: Int64 = 12 * 3600
    public var setupLinkSeconds: Int64 = 24 * 3600
    public var shortestPassword = 12
    public var longestPassword = 1024
    /// scrypt cost: N = 2^15, r = 8, p = 1 (32 MiB per attempt).
    public var scryptN: UInt64 = 1 << 15
    public var scryptR: UInt64 = 8
    public var scryptP: UInt64 = 1
    /// Sign-in attempts: a burst per client address and per operator name, refilled at `rate` per second; and a
    /// limit for all attempts together, which bounds the CPU that scrypt can be made to burn.
    public var loginBurst = 5.0
    public var loginRate = 1.0 / 12
    public var globalLoginBurst = 20.0
    public var globalLoginRate = 5.0

    public init() {}
}

/// Operators of the dashboard: accounts with scrypt passwords set through a one-time link, sessions with idle
/// expiry, CSRF tokens and rate-limited sign-in. Over `OperatorStore`; knows nothing of HTTP or SQL.
public final class OperatorService: Sendable {
    let store: any OperatorStore
    let policy: OperatorPolicy
    let clock: @Sendable () -> Int64
    let addressLimiter: TokenBucketLimiter
    let nameLimiter: TokenBucketLimiter
    let globalLimiter: TokenBucketLimiter
    /// Compared against when the operator name is unknown, so that costs the same scrypt as a wrong password.
    private let dummyPassword: PasswordHash

    public init(store: any OperatorStore, policy: OperatorPolicy = OperatorPolicy(),
                clock: @escaping @Sendable () -> Int64 = FleetkeepClock.now) {
        self.store = store
        self.policy = policy
        self.clock = clock
        addressLimiter = TokenBucketLimiter(rate: policy.loginRate, burst: policy.loginBurst)
        nameLimiter = TokenBucketLimiter(rate: policy.loginRate, burst: policy.loginBurst)
        globalLimiter = TokenBucketLimiter(rate: policy.globalLoginRate, burst: policy.globalLoginBurst)
        let salt = SecureRandom.bytes(16)
        dummyPassword = PasswordHash(salt: salt, hash: SecureRandom.bytes(32), n: policy.scryptN, r: policy.scryptR, p: policy.scryptP)
    }

    // MARK: Accounts (the `operator` command)

    public static func validateName(_ name: String) throws {
        guard (1...64).contains(name.utf8.count), name.allSatisfy({ $0.isASCII && ($0.isLetter || $0.isNumber || "._-".contains($0)) }) else {
            throw DashboardError.invalidInput("operator name '\(name.prefix(64))' must be 1 to 64 letters, digits, '.', '_' or '-'")
        }
    }

    /// Creates an operator without a password and returns the secret of its one-time password-setting link.
    public func add(name: String, role: OperatorRole, linkSeconds: Int64? = nil) throws -> String {
        try Self.validateName(name)
        let (secret, hash) = Self.newSecret()
        let now = clock()
        guard try store.addOperator(name: name, role: role, setupHash: hash, setupExpiresAt: try expiry(now, linkSeconds), now: now) else {
            throw DashboardError.conflict("operator '\(name)' exists already; `operator reset \(name)` gives it a new password link")
        }
        return secret
    }

    /// Clears the operator's password, signs it out everywhere and returns a new link secret.
    public func reset(name: String, linkSeconds: Int64? = nil) throws -> String {
        let (secret, hash) = Self.newSecret()
        guard try store.resetOperator(name: name, setupHash: hash, setupExpiresAt: try expiry(clock(), linkSeconds)) else {
            throw DashboardError.notFound("no operator '\(name.prefix(64))'; see `fleetkeep-controller operator list`")
        }
        return secret
    }

    public func remove(name: String) throws {
        guard try store.removeOperator(name: name) else {
            throw DashboardError.notFound("no operator '\(name.prefix(64))'; see `fleetkeep-controller operator list`")
        }
    }

    public func list() throws -> [OperatorRecord] { try store.operators() }

    private func expiry(_ now: Int64, _ seconds: Int64?) throws -> Int64 {
        let (end, overflow) = now.addingReportingOverflow(seconds ?? policy.setupLinkSeconds)
        guard !overflow else { throw DashboardError.invalidInput("link lifetime is out of range") }
        return end
    }

    static func newSecret() -> (secret: String, hash: [UInt8]) {
        let secret = Base64URL.encode(SecureRandom.bytes(32))
        return (secret, SHA256.hash(Array(secret.utf8)))
    }

    // MARK: Password links

    /// The operator an outstanding, unexpired link belongs to.
    public func setupOperator(secret: String) throws -> OperatorRecord {
        guard secret.utf8.count <= 128, let record = try store.operatorRecord(setupHash: SHA256.hash(Array(secret.utf8))),
              let expires = record.setupExpiresAt, clock() < expires else {
            throw DashboardError.notFound("this password link is not valid: it was used, replaced or has expired; ask an administrator for `fleetkeep-controller operator reset NAME`")
        }
        return record
    }

    /// Sets the password of the link's operator and uses the link up.
    public func completeSetup(secret: String, password: String, confirmation: String) throws -> OperatorRecord {
        let record = try setupOperator(secret: secret)
        guard password == confirmation else { throw DashboardError.invalidInput("the two passwords differ") }
        guard password.count >= policy.shortestPassword, password.utf8.count <= policy.longestPassword else {
            throw DashboardError.invalidInput("a password has at least \(policy.shortestPassword) characters (and at most \(policy.longestPassword) bytes)")
        }
        guard !password.lowercased().contains(record.name.lowercased()) else {
            throw DashboardError.invalidInput("the password must not contain the operator name")
        }
        let hash = try hashPassword(password)
        guard try store.setPassword(operatorID: record.id, setupHash: SHA256.hash(Array(secret.utf8)), password: hash, now: clock()) else {
            throw DashboardError.notFound("this password link was used or replaced meanwhile")
        }
        return record
    }

    func hashPassword(_ password: String) throws -> PasswordHash {
        let salt = SecureRandom.bytes(16)
        let hash = try PasswordKDF.scrypt(password: Array(password.utf8), salt: salt, n: policy.scryptN, r: policy.scryptR, p: policy.scryptP)
        return PasswordHash(salt: salt, hash: hash, n: policy.scryptN, r: policy.scryptR, p: policy.scryptP)
    }

    static func matches(_ password: String, _ stored: PasswordHash) -> Bool {
        // Parameters come from the database: PasswordKDF refuses absurd ones, which then simply do not match.
        guard let computed = try? PasswordKDF.scrypt(password: Array(password.utf8), salt: stored.salt, n: stored.n, r: stored.r, p: stored.p,
                                                     length: max(16, min(64, stored.hash.count))) else { return false }
        return HMACSHA256.equal(computed, stored.hash)
    }

    // MARK: Sign-in and sessions

    /// Checks the name and password and opens a session; returns the cookie token and the session. Rate-limited
    /// before any password work, per client address, per name and overall.
    public func login(name: String, password: String, remoteAddress: String) throws -> (token: String, session: OperatorSession) {
        // The overall limit last: attempts one address or name may not make must not use it up for everyone else.
        if let retry = addressLimiter.take(remoteAddress) ?? nameLimiter.take(name.lowercased()) ?? globalLimiter.take("all") {
            throw DashboardError.rateLimited(retryAfter: retry)
        }
        guard name.utf8.count <= 64, password.utf8.count <= policy.longestPassword else { throw DashboardError.wrongCredentials }
        let record = try store.operatorRecord(name: name)
        let matched = Self.matches(password, record?.password ?? dummyPassword)
        guard let record, record.password != nil, matched else { throw DashboardError.wrongCredentials }
        let now = clock()
        let token = Base64URL.encode(SecureRandom.bytes(32))
        let csrf = Base64URL.encode(SecureRandom.bytes(24))
        try store.deleteSessions(idleBefore: now - policy.idleSeconds, createdBefore: now - policy.absoluteSeconds)
        try store.insertSession(OperatorSessionRecord(tokenHash: SHA256.hash(Array(token.utf8)), operatorID: record.id, csrf: csrf,
                                                      createdAt: now, lastUsedAt: now))
        try store.recordLogin(operatorID: record.id, now: now)
        return (token, OperatorSession(operatorID: record.id, name: record.name, role: record.role, csrf: csrf))
    }

    /// The session a cookie token opens, refreshed; refused when unknown, idle too long or too old. The role is read
    /// from the operator each time, so a reset or removal takes effect on the next request.
    public func session(token: String) throws -> OperatorSession {
        guard token.utf8.count <= 128 else { throw DashboardError.notSignedIn("please sign in") }
        let hash = SHA256.hash(Array(token.utf8))
        guard let session = try store.session(tokenHash: hash) else { throw DashboardError.notSignedIn("please sign in") }
        let now = clock()
        let idle = now.subtractingReportingOverflow(session.lastUsedAt)
        let age = now.subtractingReportingOverflow(session.createdAt)
        guard !idle.overflow, !age.overflow, idle.partialValue <= policy.idleSeconds, age.partialValue <= policy.absoluteSeconds else {
            try store.deleteSession(tokenHash: hash)
            throw DashboardError.notSignedIn("your session expired; please sign in again")
        }
        guard let record = try store.operatorRecord(id: session.operatorID), record.password != nil else {
            try store.deleteSession(tokenHash: hash)
            throw DashboardError.notSignedIn("please sign in")
        }
        // One write per 15 s of activity at most: idle expiry does not need the exact second.
        if now - session.lastUsedAt >= 15 { try store.touchSession(tokenHash: hash, now: now) }
        return OperatorSession(operatorID: record.id, name: record.name, role: record.role, csrf: session.csrf)
    }

    public func logout(token: String) throws {
        guard token.utf8.count <= 128 else { return }
        try store.deleteSession(tokenHash: SHA256.hash(Array(token.utf8)))
    }
}
