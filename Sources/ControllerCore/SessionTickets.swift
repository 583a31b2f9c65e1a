import Crypto
import FleetkeepProtocol

/// Mints and opens session tokens without keeping any per-session state.
///
/// A token is `s1.<agent id>.<expires unix seconds>.<random>`; its HMAC key is HMAC-SHA256(secret, token). Only the
/// controller knows `secret` (derived from its Ed25519 signing key, so sessions survive a restart), so nobody can
/// forge a token for another agent or stretch its expiry: changing any byte changes the key. Opening a token costs
/// one HMAC, which is what makes per-request verification cheap.
public struct SessionTickets: Sendable {
    /// How long a session lasts; agents open a new one (with an Ed25519 signature) when it runs out.
    public static let lifetime: Int64 = 3600
    private let secret: [UInt8]

    public init(secret: [UInt8]) { self.secret = secret }

    /// The session secret of a controller, derived from its signing key so that all its processes agree.
    public static func secret(fromSigningKey raw: [UInt8]) throws -> [UInt8] {
        try HKDFSHA256.derive(key: raw, salt: Array("fleetkeep session tickets".utf8), info: Array("v1".utf8), length: 32)
    }

    public func mint(agentID: String, now: Int64) -> SessionCredentials {
        let token = "s1.\(agentID).\(now + Self.lifetime).\(Base64URL.encode(SecureRandom.bytes(12)))"
        return SessionCredentials(token: token, key: key(for: token), expiresAt: now + Self.lifetime)
    }

    /// The agent and key of a token that is well-formed and unexpired.
    public func open(_ token: String, now: Int64) throws -> (agentID: String, key: [UInt8]) {
        let parts = token.utf8.count <= 200 ? token.split(separator: ".", omittingEmptySubsequences: false) : []
        guard parts.count == 4, parts[0] == "s1", parts[1].hasPrefix("fk-"), let expires = Int64(parts[2]) else {
            throw RequestSigning.Rejection(status: 401, message: "malformed \(RequestSigning.sessionHeader) header; open a new session")
        }
        guard expires >= now else {
            let ago = RequestSigning.clockDistance(expires, now: now).map { "\($0)s" } ?? "long"
            throw RequestSigning.Rejection(status: 401, message: "session expired \(ago) ago; open a new session (POST \(APIPath.session))")
        }
        return (String(parts[1]), key(for: token))
    }

    private func key(for token: String) -> [UInt8] { HMACSHA256.authenticate(Array(token.utf8), key: secret) }
}
