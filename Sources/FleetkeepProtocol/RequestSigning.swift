import Crypto
import Foundation

/// Signing of agent requests. Every request after enrollment carries an identity header, a timestamp, a nonce and a
/// signature over one canonical string:
///
///     FLEETKEEP-V1\nMETHOD\nPATH\nTIMESTAMP\nNONCE\nhex(SHA-256(body))
///
/// Two schemes share that string (see docs/PROTOCOL.md):
/// - **Ed25519** (`X-Fleetkeep-Agent: <agent id>`): the agent's own key signs. Used for enrollment (with
///   `X-Fleetkeep-Key` carrying the public key being registered) and to open a session.
/// - **Session HMAC** (`X-Fleetkeep-Session: <session token>`): HMAC-SHA256 with the short-lived key the controller
///   handed out in an Ed25519-signed `POST /v1/session`. About 50x cheaper to verify than Ed25519, which is what lets
///   one 2-core controller take thousands of heartbeats a second.
public enum RequestSigning {
    public static let agentHeader = "x-fleetkeep-agent"
    public static let keyHeader = "x-fleetkeep-key"
    public static let sessionHeader = "x-fleetkeep-session"
    public static let timestampHeader = "x-fleetkeep-timestamp"
    public static let nonceHeader = "x-fleetkeep-nonce"
    public static let signatureHeader = "x-fleetkeep-signature"
    /// How far a request's timestamp may be from the controller's clock.
    public static let allowedSkew: Int64 = 300

    public static func canonicalString(method: String, path: String, timestamp: Int64, nonce: String, body: [UInt8]) -> [UInt8] {
        Array("FLEETKEEP-V1\n\(method.uppercased())\n\(path)\n\(timestamp)\n\(nonce)\n\(SHA256.hex(body))".utf8)
    }

    static func freshNonce() -> String { Base64URL.encode(SecureRandom.bytes(16)) }

    /// The headers that sign one request with the agent's Ed25519 key.
    public static func sign(method: String, path: String, body: [UInt8], key: Ed25519PrivateKey,
                            identity: (name: String, value: String), now: Int64 = Int64(Date().timeIntervalSince1970)) throws -> [String: String] {
        let nonce = freshNonce()
        let signature = try key.signature(for: canonicalString(method: method, path: path, timestamp: now, nonce: nonce, body: body))
        return [identity.name: identity.value, timestampHeader: String(now), nonceHeader: nonce,
                signatureHeader: Base64URL.encode(signature)]
    }

    /// The headers that sign one request with a session key (HMAC-SHA256 over the same canonical string).
    public static func sign(method: String, path: String, body: [UInt8], session: SessionCredentials,
                            now: Int64 = Int64(Date().timeIntervalSince1970)) -> [String: String] {
        let nonce = freshNonce()
        let mac = HMACSHA256.authenticate(canonicalString(method: method, path: path, timestamp: now, nonce: nonce, body: body), key: session.key)
        return [sessionHeader: session.token, timestampHeader: String(now), nonceHeader: nonce, signatureHeader: Base64URL.encode(mac)]
    }

    /// The stable identity of an agent: hex of the first 16 bytes of SHA-256 of its public key.
    /// Two cloned servers that each enroll get two keys and so two ids; the hostname plays no part.
    public static func agentID(for publicKey: Ed25519PublicKey) -> String {
        "fk-" + Hex.encode(SHA256.hash(publicKey.rawRepresentation).prefix(16))
    }

    /// Why a signed request was refused, with the HTTP status that fits.
    public struct Rejection: Error, Sendable, CustomStringConvertible {
        public let status: Int
        public let message: String
        public var description: String { message }
        public init(status: Int, message: String) {
            self.status = status
            self.message = message
        }
    }

    /// Checks timestamp and Ed25519 signature (not the nonce: replay is the controller's job, it owns the cache).
    public static func verify(method: String, path: String, headers: [String: String], body: [UInt8],
                              publicKey: Ed25519PublicKey, now: Int64) throws -> (timestamp: Int64, nonce: String) {
        let (timestamp, nonce, signature) = try signedFields(headers, now: now)
        guard publicKey.isValidSignature(signature, for: canonicalString(method: method, path: path, timestamp: timestamp, nonce: nonce, body: body)) else {
            throw Rejection(status: 401, message: "request signature does not verify for this agent key")
        }
        return (timestamp, nonce)
    }

    /// Checks timestamp and session HMAC (constant-time comparison); the caller derived `sessionKey` from the token.
    public static func verify(method: String, path: String, headers: [String: String], body: [UInt8],
                              sessionKey: [UInt8], now: Int64) throws -> (timestamp: Int64, nonce: String) {
        let (timestamp, nonce, signature) = try signedFields(headers, now: now)
        let expected = HMACSHA256.authenticate(canonicalString(method: method, path: path, timestamp: timestamp, nonce: nonce, body: body), key: sessionKey)
        guard HMACSHA256.equal(signature, expected) else {
            throw Rejection(status: 401, message: "request signature does not verify for this session")
        }
        return (timestamp, nonce)
    }

    /// |now - timestamp|, or nil when it does not fit in an Int64 (a hostile or garbage timestamp).
    public static func clockDistance(_ timestamp: Int64, now: Int64) -> Int64? {
        let (difference, overflow) = now.subtractingReportingOverflow(timestamp)
        guard !overflow, difference != .min else { return nil }
        return abs(difference)
    }

    /// Timestamp (inside the skew window), nonce and raw signature from the headers.
    private static func signedFields(_ headers: [String: String], now: Int64) throws -> (Int64, String, [UInt8]) {
        guard let timestampText = headers[timestampHeader], let timestamp = Int64(timestampText) else {
            throw Rejection(status: 401, message: "missing or malformed \(timestampHeader) header")
        }
        // The header is attacker-controlled: any Int64 parses, so the distance is computed without trapping.
        guard let distance = clockDistance(timestamp, now: now), distance <= allowedSkew else {
            let away = clockDistance(timestamp, now: now).map { "\($0)s" } ?? "more than 2^63 s"
            throw Rejection(status: 401, message: "request timestamp \(timestamp) is \(away) away from the controller clock (allowed ±\(allowedSkew)s); fix the server clock (NTP)")
        }
        guard let nonce = headers[nonceHeader], nonce.utf8.count <= 64, let nonceBytes = Base64URL.decode(nonce), nonceBytes.count >= 12 else {
            throw Rejection(status: 401, message: "missing or malformed \(nonceHeader) header")
        }
        guard let signatureText = headers[signatureHeader], let signature = Base64URL.decode(signatureText) else {
            throw Rejection(status: 401, message: "missing or malformed \(signatureHeader) header")
        }
        return (timestamp, nonce, signature)
    }
}
