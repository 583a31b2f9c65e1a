import Foundation

/// The state an operator gives a licence. Expiry is not a state: it follows from `expiresAt`.
public enum LicenceState: String, Codable, Sendable, CaseIterable {
    case active, suspended, revoked
}

/// A tier is data: a name and the features it allows (`offsite`, `max-accounts:100`, ...).
public struct LicenceTier: Codable, Sendable, Equatable {
    public var name: String
    public var features: [String]
    public var description: String
    public init(name: String, features: [String], description: String) {
        self.name = name
        self.features = features
        self.description = description
    }
}

/// A customer's personal data. Kept behind `CustomerStore` only, so encrypting it later changes one type.
public struct Customer: Codable, Sendable, Equatable {
    public var name: String
    public var email: String
    public init(name: String, email: String) {
        self.name = name
        self.email = email
    }
}

/// One licence as stored (the key's secret part only as a hash).
public struct Licence: Sendable {
    public var id: String
    public var verifierHash: [UInt8]
    public var customerID: Int64
    public var tier: String
    public var maxServers: Int
    public var issuedAt: Int64
    public var expiresAt: Int64?
    public var state: LicenceState

    /// What the licence allows at `now`: its state, or `expired` once past `expiresAt`.
    public func effectiveStatus(now: Int64) -> String {
        if state != .active { return state.rawValue }
        if let expiresAt, now >= expiresAt { return "expired" }
        return "valid"
    }
}

/// A server bound to a licence (one seat). Released seats stay as history.
public struct Seat: Codable, Sendable, Equatable {
    public var licenceID: String
    public var agentID: String
    public var machineHash: String
    public var activatedAt: Int64
    public var releasedAt: Int64?
    public var leaseSerial: Int64?
    public var leaseExpiresAt: Int64?
}

/// One entry of a licence's history.
public struct LicenceEvent: Codable, Sendable, Equatable {
    public var at: Int64
    /// issued, activated, moved, renewed, suspended, resumed, revoked, deactivated, clone-flagged
    public var kind: String
    public var agentID: String?
    public var detail: String
}

/// The configurable rules of the licence system, kept in the controller's settings table.
public struct LicencePolicy: Codable, Sendable, Equatable {
    /// Moves (an activation into a seat another server held before) allowed per `moveWindowSeconds`.
    public var moveLimit = 3
    public var moveWindowSeconds: Int64 = 30 * 86400
    public var leaseSeconds: Int64 = 30 * 86400
    public var graceSeconds: Int64 = 7 * 86400
    /// `POST /v1/licences/validate`: token bucket per client address (requests per second and burst).
    public var validateRate = 5.0
    public var validateBurst = 20.0
    /// The same per licence key (also for unknown keys, so guessing is slow).
    public var keyRate = 2.0
    public var keyBurst = 10.0

    public init() {}

    /// How long a heartbeat may keep answering with the same lease: a day, or a quarter of a short lease.
    public var renewAfterSeconds: Int64 { max(60, min(86400, leaseSeconds / 4)) }

    static var settingNames: [(String, WritableKeyPath<LicencePolicy, Int64>)] { [
        ("licence_move_window", \.moveWindowSeconds), ("licence_lease_seconds", \.leaseSeconds), ("licence_grace_seconds", \.graceSeconds),
    ] }
}

/// Why a licence operation was refused. Each case maps to one HTTP status in `httpStatus`, the only place that
/// mapping is made; operator commands print the same text.
public enum LicenceError: Error, Sendable, CustomStringConvertible, Equatable {
    case malformedKey(String)
    /// Unknown key, or a known id with the wrong secret: one answer for both.
    case keyNotValid
    case notFound(String)
    case unknownTier(String, known: [String])
    case invalidInput(String)
    case notActive(licenceID: String, status: String)
    case noFreeSeat(licenceID: String, used: Int, max: Int, agents: [String])
    case moveLimit(licenceID: String, limit: Int, windowDays: Int64, nextPossibleAt: Int64)
    case boundElsewhere(agentID: String, licenceID: String)
    case clone(agentID: String)
    case wrongState(String)
    case rateLimited(retryAfter: Int)
    case tooLarge(limit: Int)

    public var httpStatus: Int {
        switch self {
        case .malformedKey, .unknownTier, .invalidInput: return 400
        case .keyNotValid, .notActive: return 403
        case .notFound: return 404
        case .noFreeSeat, .moveLimit, .boundElsewhere, .clone, .wrongState: return 409
        case .tooLarge: return 413
        case .rateLimited: return 429
        }
    }

    public var description: String {
        switch self {
        case .malformedKey(let reason): return reason
        case .keyNotValid: return "licence key is not valid for this controller; check the key, or ask your provider for a new one"
        case .notFound(let what): return "\(what) not found; see `fleetkeep-controller licence list`"
        case .unknownTier(let name, let known):
            return "unknown tier '\(name)' (known: \(known.joined(separator: ", "))); see `fleetkeep-controller licence tiers`"
        case .invalidInput(let message): return message
        case .notActive(let id, let status):
            return "licence \(id) is \(status); nothing was activated. Ask your provider to \(status == "expired" ? "renew" : "resume") it"
        case .noFreeSeat(let id, let used, let max, let agents):
            return "licence \(id) has no free seat (\(used) of \(max) servers bound: \(agents.joined(separator: ", "))); free one with `fleetkeep-controller licence deactivate-server \(id) --agent AGENT_ID`"
        case .moveLimit(let id, let limit, let days, let next):
            return "licence \(id) already changed servers \(limit) times in the last \(days) days (limit \(limit) per \(days) days); the next move is possible at \(UTCText.format(next))"
        case .boundElsewhere(let agent, let id):
            return "agent \(agent) is already bound to licence \(id); free it there first (`fleetkeep-controller licence deactivate-server \(id) --agent \(agent)`)"
        case .clone(let agent):
            return "agent key \(agent) is in use on more than one machine (a copied state directory?); it gets no lease until the operator decides: `fleetkeep-controller agents remove \(agent)` or `licence deactivate-server LICENCE --agent \(agent)`, then enroll the copy with its own token"
        case .wrongState(let message): return message
        case .rateLimited(let seconds): return "too many validation requests; retry in \(seconds) s"
        case .tooLarge(let limit): return "request body is larger than \(limit) bytes; send {\"key\": \"FK-...\"}"
        }
    }
}

/// Unix seconds as ISO 8601 UTC text, for messages and listings.
enum UTCText {
    static func format(_ seconds: Int64) -> String {
        let formatter = ISO8601DateFormatter()
        formatter.formatOptions = [.withInternetDateTime]
        return formatter.string(from: Date(timeIntervalSince1970: TimeInterval(seconds)))
    }
}
