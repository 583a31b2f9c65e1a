/// A session an agent opened with an Ed25519-signed `POST /v1/session`: the opaque token it sends in
/// `X-Fleetkeep-Session` and the 32-byte HMAC key it signs requests with until `expiresAt`.
public struct SessionCredentials: Sendable, Equatable {
    public var token: String
    public var key: [UInt8]
    /// Unix seconds (controller clock).
    public var expiresAt: Int64
    public init(token: String, key: [UInt8], expiresAt: Int64) {
        self.token = token
        self.key = key
        self.expiresAt = expiresAt
    }
}

/// Answer to `POST /v1/session`. The key travels only inside the pinned TLS connection.
public struct SessionResponse: Codable, Sendable {
    public var sessionToken: String
    /// base64url of the 32-byte HMAC-SHA256 key.
    public var sessionKey: String
    public var expiresAt: Int64
    /// Seconds from now until `expiresAt`, so an agent whose clock differs still knows when to renew.
    public var expiresInSeconds: Int64
    public init(sessionToken: String, sessionKey: String, expiresAt: Int64, expiresInSeconds: Int64) {
        self.sessionToken = sessionToken
        self.sessionKey = sessionKey
        self.expiresAt = expiresAt
        self.expiresInSeconds = expiresInSeconds
    }
}

extension APIPath {
    public static let session = "/v1/session"
}
