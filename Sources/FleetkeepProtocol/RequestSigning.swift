import Crypto
import Foundation

/// Signing of agent requests. Every request after enrollment carries four headers:
///
///     X-Fleetkeep-Agent:      agent id (derived from the agent's public key)
///     X-Fleetkeep-Timestamp:  Unix seconds
///     X-Fleetkeep-Nonce:      16 random bytes, base64url
///     X-Fleetkeep-Signature:  Ed25519 signature, base64url, over the canonical string
///
/// The canonical string is `FLEETKEEP-V1\nMETHOD\nPATH\nTIMESTAMP\nNONCE\nhex(SHA-256(body))`. Enrollment uses the
/// same scheme with `X-Fleetkeep-Key` (the public key itself) in place of the agent id.
public enum RequestSigning {
    public static let agentHeader = "x-fleetkeep-agent"
    public static let keyHeader = "x-fleetkeep-key"
    public static let timestampHeader = "x-fleetkeep-timestamp"
    public static let nonceHeader = "x-fleetkeep-nonce"
    public static let signatureHeader = "x-fleetkeep-signature"
    /// How far a request's timestamp may be from the controller's clock.
    public static let allowedSkew: Int64 = 300

    public static func canonicalString(method: String, path: String, timestamp: Int64, nonce: String, body: [UInt8]) -> [UInt8] {
        Array("FLEETKEEP-V1\n\(method.uppercased())\n\(path)\n\(timestamp)\n\(nonce)\n\(SHA256.hex(body))".utf8)
    }

    /// The headers that sign one request.
    public static func sign(method: String, path: String, body: [UInt8], key: Ed25519PrivateKey,
                            identity: (name: String, value: String), now: Int64 = Int64(Date().timeIntervalSince1970)) throws -> [String: String] {
        let nonce = Base64URL.encode(SecureRandom.bytes(16))
        let signature = try key.signature(for: canonicalString(method: method, path: path, timestamp: now, nonce: nonce, body: body))
        return [identity.name: identity.value, timestampHeader: String(now), nonceHeader: nonce,
                signatureHeader: Base64URL.encode(signature)]
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

    /// Checks timestamp and signature (not the nonce: replay is the controller's job, it owns the cache).
    public static func verify(method: String, path: String, headers: [String: String], body: [UInt8],
                              publicKey: Ed25519PublicKey, now: Int64) throws -> (timestamp: Int64, nonce: String) {
        guard let timestampText = headers[timestampHeader], let timestamp = Int64(timestampText) else {
            throw Rejection(status: 401, message: "missing or malformed \(timestampHeader) header")
        }
        guard abs(now - timestamp) <= allowedSkew else {
            throw Rejection(status: 401, message: "request timestamp \(timestamp) is \(now - timestamp)s away from the controller clock (allowed ±\(allowedSkew)s); fix the server clock (NTP)")
        }
        guard let nonce = headers[nonceHeader], let nonceBytes = Base64URL.decode(nonce), nonceBytes.count >= 12 else {
            throw Rejection(status: 401, message: "missing or malformed \(nonceHeader) header")
        }
        guard let signatureText = headers[signatureHeader], let signature = Base64URL.decode(signatureText),
              publicKey.isValidSignature(signature, for: canonicalString(method: method, path: path, timestamp: timestamp, nonce: nonce, body: body)) else {
            throw Rejection(status: 401, message: "request signature does not verify for this agent key")
        }
        return (timestamp, nonce)
    }
}
