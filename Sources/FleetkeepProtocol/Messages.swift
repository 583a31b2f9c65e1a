/// Body of `POST /v1/enroll`: the agent presents the token secret and proves it holds the key it registers.
public struct EnrollRequest: Codable, Sendable, StrictlyDecoded {
    public static let fieldNames = storedPropertyNames(of: EnrollRequest(tokenID: "", tokenSecret: "", controllerPin: "", publicKey: "", facts: [:], problems: [:]))
    public var tokenID: String
    public var tokenSecret: String
    /// The certificate pin the token carries: the controller refuses a token that was made for another controller.
    public var controllerPin: String
    /// The agent's Ed25519 public key, base64url.
    public var publicKey: String
    public var facts: [String: String]
    public var problems: [String: String]

    public init(tokenID: String, tokenSecret: String, controllerPin: String, publicKey: String, facts: [String: String], problems: [String: String]) {
        self.tokenID = tokenID
        self.tokenSecret = tokenSecret
        self.controllerPin = controllerPin
        self.publicKey = publicKey
        self.facts = facts
        self.problems = problems
    }
}

/// Answer to a successful enrollment.
public struct EnrollResponse: Codable, Sendable {
    public var agentID: String
    public var heartbeatIntervalSeconds: Int
    public var licence: LicenceStatus
    /// The controller's Ed25519 lease-signing key (base64url), pinned by the agent to verify leases offline.
    public var controllerSigningKey: String?
    public init(agentID: String, heartbeatIntervalSeconds: Int, licence: LicenceStatus, controllerSigningKey: String? = nil) {
        self.agentID = agentID
        self.heartbeatIntervalSeconds = heartbeatIntervalSeconds
        self.licence = licence
        self.controllerSigningKey = controllerSigningKey
    }
}

/// Body of `POST /v1/heartbeat`.
public struct HeartbeatRequest: Codable, Sendable, StrictlyDecoded {
    public static let fieldNames = storedPropertyNames(of: HeartbeatRequest(facts: [:], problems: [:]))
    public var facts: [String: String]
    public var problems: [String: String]
    /// Keyed hashes of the machine (see `MachineIdentity`), for leases and clone detection; absent from old agents.
    public var machine: MachineIdentity?
    public init(facts: [String: String], problems: [String: String], machine: MachineIdentity? = nil) {
        self.facts = facts
        self.problems = problems
        self.machine = machine
    }
}

/// Answer to a heartbeat: when to come back and the licence as the controller sees it.
public struct HeartbeatResponse: Codable, Sendable {
    public var heartbeatIntervalSeconds: Int
    public var licence: LicenceStatus
    /// A renewed lease, when the controller signed one for this heartbeat (at most about once a day, or at once
    /// after the licence changed: suspended, resumed, revoked).
    public var lease: SignedLease?
    /// Controller clock, Unix seconds: one of the times the agent trusts for clock-rollback detection.
    public var controllerTime: Int64?
    /// Whether the customer of this agent's licence has consented to product-improvement telemetry. Absent or false:
    /// an agent uploads nothing (and drops what it queued for upload).
    public var telemetryConsent: Bool?
    public init(heartbeatIntervalSeconds: Int, licence: LicenceStatus, lease: SignedLease? = nil, controllerTime: Int64? = nil,
                telemetryConsent: Bool? = nil) {
        self.heartbeatIntervalSeconds = heartbeatIntervalSeconds
        self.licence = licence
        self.lease = lease
        self.controllerTime = controllerTime
        self.telemetryConsent = telemetryConsent
    }
}

/// The licence state of one agent, validated by the controller on every heartbeat.
public struct LicenceStatus: Codable, Sendable, Equatable {
    /// An agent bound to no licence (at enrollment, or with no seat).
    public static let unlicensed = LicenceStatus(status: "unlicensed", tier: "none", validUntil: 0,
                                                 reason: "no licence is activated on this server; run `fleetkeep-agent licence activate KEY`")

    public var status: String
    public var tier: String
    public var validUntil: Int64
    /// Why, when the status is not plain `active` (e.g. no seat, clone, suspended).
    public var reason: String?
    public init(status: String, tier: String, validUntil: Int64, reason: String? = nil) {
        self.status = status
        self.tier = tier
        self.validUntil = validUntil
        self.reason = reason
    }
}

/// Error body for every non-2xx answer.
public struct ErrorBody: Codable, Sendable {
    public var error: String
}

/// Paths of the controller API.
public enum APIPath {
    public static let enroll = "/v1/enroll"
    public static let heartbeat = "/v1/heartbeat"
    public static let health = "/v1/health"
}

/// Answer to `POST /v1/escrow/recipient`: the operator's X25519 recovery public key (base64url), if configured.
public struct EscrowRecipient: Codable, Sendable {
    public var recoveryPublicKey: String?
    public init(recoveryPublicKey: String?) { self.recoveryPublicKey = recoveryPublicKey }
}

/// Body of `POST /v1/escrow`: the repository key sealed to the operator's recovery key. The controller stores it
/// but cannot open it.
public struct EscrowDeposit: Codable, Sendable, StrictlyDecoded {
    public static let fieldNames = storedPropertyNames(of: EscrowDeposit(sealedKey: "", recoveryPublicKey: ""))
    public var sealedKey: String
    public var recoveryPublicKey: String
    public init(sealedKey: String, recoveryPublicKey: String) {
        self.sealedKey = sealedKey
        self.recoveryPublicKey = recoveryPublicKey
    }
}

extension APIPath {
    public static let escrowRecipient = "/v1/escrow/recipient"
    public static let escrow = "/v1/escrow"
}

/// The range of heartbeat intervals both sides accept. The controller's configured interval and an agent's
/// `--interval` are checked against it; an agent clamps what the controller sends, since that is outside input,
/// and never beats more often than every `agentShortestInterval` seconds on the controller's say-so.
public enum HeartbeatTiming {
    public static let shortestInterval: Int64 = 1
    public static let longestInterval: Int64 = 7 * 86_400
    public static let accepted: ClosedRange<Int64> = shortestInterval...longestInterval
    public static let agentShortestInterval = 5

    public static func clamp(_ seconds: Int) -> Int {
        min(max(seconds, agentShortestInterval), Int(longestInterval))
    }
}

/// A request body whose top-level fields are checked against a fixed list: a field the controller does not know is
/// refused with 400 instead of being silently dropped, so nothing is sent (or stored) that the protocol does not
/// declare. Conforming types take `fieldNames` from `storedPropertyNames(of:)` on an instance, so the list follows
/// their properties (and their synthesized coding keys) without being written twice.
public protocol StrictlyDecoded: Decodable {
    static var fieldNames: Set<String> { get }
}

/// The names of a value's stored properties, which are the JSON keys of a type with synthesized `Codable`.
public func storedPropertyNames(of value: Any) -> Set<String> {
    Set(Mirror(reflecting: value).children.compactMap(\.label))
}

/// Decodes `Value` after refusing any top-level field it does not declare.
public struct Strict<Value: StrictlyDecoded>: Decodable {
    public let value: Value

    private struct FieldName: CodingKey {
        let stringValue: String
        init(stringValue: String) { self.stringValue = stringValue }
        var intValue: Int? { nil }
        init?(intValue: Int) { nil }
    }

    public init(from decoder: any Decoder) throws {
        let names = try decoder.container(keyedBy: FieldName.self).allKeys.map(\.stringValue)
        if let unknown = names.filter({ !Value.fieldNames.contains($0) }).sorted().first {
            throw DecodingError.dataCorrupted(DecodingError.Context(codingPath: [], debugDescription: "unknown field '\(unknown.prefix(64))'"))
        }
        value = try Value(from: decoder)
    }
}

/// The body of requests that carry no data (`POST /v1/session`, `POST /v1/escrow/recipient`): exactly `{}`.
public struct EmptyRequest: Codable, Sendable, StrictlyDecoded {
    public static let fieldNames: Set<String> = []
    public init() {}
}
