import Crypto
import Foundation

/// A single-use enrollment token. One string carries everything an agent needs to join safely, like `kubeadm join`:
/// the controller URL, the SHA-256 pin of the controller's TLS public key, and the token id and secret.
///
/// Text form: `fk1.` + base64url(JSON `{"u": url, "p": pin, "i": id, "s": secret}`).
public struct EnrollmentToken: Sendable, Equatable {
    public var controllerURL: String
    public var certificatePin: String
    public var id: String
    public var secret: String

    static let prefix = "fk1."

    public init(controllerURL: String, certificatePin: String, id: String, secret: String) {
        self.controllerURL = controllerURL
        self.certificatePin = certificatePin
        self.id = id
        self.secret = secret
    }

    private struct Wire: Codable { var u: String; var p: String; var i: String; var s: String }

    public var text: String {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        let json = try! encoder.encode(Wire(u: controllerURL, p: certificatePin, i: id, s: secret))
        return Self.prefix + Base64URL.encode(json)
    }

    /// Parses a token string; the error says what is wrong with it.
    public init(text: String) throws {
        let trimmed = text.trimmingCharacters(in: .whitespacesAndNewlines)
        guard trimmed.hasPrefix(Self.prefix) else {
            throw ProtocolError("enrollment token must start with '\(Self.prefix)'; copy it whole from `fleetkeep-controller token create`")
        }
        guard let bytes = Base64URL.decode(String(trimmed.dropFirst(Self.prefix.count))),
              let wire = try? JSONDecoder().decode(Wire.self, from: Data(bytes)) else {
            throw ProtocolError("enrollment token is damaged (not valid base64url JSON); create a new one")
        }
        guard wire.u.hasPrefix("https://") || wire.u.hasPrefix("http://127.") || wire.u.hasPrefix("http://localhost") else {
            throw ProtocolError("enrollment token names controller URL '\(wire.u)', which is not https")
        }
        guard Data(base64Encoded: wire.p)?.count == 32 else {
            throw ProtocolError("enrollment token carries a malformed certificate fingerprint")
        }
        self.init(controllerURL: wire.u, certificatePin: wire.p, id: wire.i, secret: wire.s)
    }
}

/// A protocol-level mistake with a message meant for the operator.
public struct ProtocolError: Error, CustomStringConvertible, Sendable {
    public let message: String
    public init(_ message: String) { self.message = message }
    public var description: String { message }
}
