import Crypto
import Foundation

/// A licence key as customers type or paste it: `FK-SSSSS-VVVVV-VVVVV-VVVVV-VVVVV-CCCCC` in Crockford base32
/// (digits and letters without I, L, O, U; case, spaces and dashes do not matter, O reads as 0 and I/L as 1).
///
/// - `SSSSS` is the licence id (public: operators and outside callers may see it);
/// - the 20 `V` characters are the secret verifier (100 random bits), of which the controller keeps only a hash;
/// - `CCCCC` are check characters (25 bits of SHA-256 over the other 25), so a typo is caught before any network call.
public struct LicenceKey: Sendable, Equatable {
    public static let alphabet: [UInt8] = Array("0123456789ABCDEFGHJKMNPQRSTVWXYZ".utf8)
    public static let idLength = 5
    public static let verifierLength = 20
    public static let checkLength = 5
    static let bodyLength = idLength + verifierLength
    static let totalLength = bodyLength + checkLength

    /// The licence id, 5 characters.
    public let licenceID: String
    /// The secret part, 20 characters.
    public let verifier: String

    /// A new key with a random verifier for `licenceID`.
    public static func generate(licenceID: String) -> LicenceKey {
        LicenceKey(licenceID: licenceID, verifier: randomCharacters(verifierLength))
    }

    /// A random licence id (25 bits; the store retries on a collision).
    public static func randomID() -> String { randomCharacters(idLength) }

    static func randomCharacters(_ count: Int) -> String {
        // 256 is a multiple of 32, so taking the low 5 bits of a random byte is uniform.
        String(decoding: SecureRandom.bytes(count).map { alphabet[Int($0 & 31)] }, as: UTF8.self)
    }

    init(licenceID: String, verifier: String) {
        self.licenceID = licenceID
        self.verifier = verifier
    }

    /// The canonical text, grouped for reading aloud.
    public var text: String {
        let all = Array(licenceID + verifier + Self.checkCharacters(for: licenceID + verifier))
        let groups = stride(from: 0, to: all.count, by: 5).map { String(all[$0..<min($0 + 5, all.count)]) }
        return "FK-" + groups.joined(separator: "-")
    }

    /// Hex SHA-256 of the normalized key: what a validation answer names, so a caller can bind an answer to its key.
    public var digest: String { SHA256.hex(Array((licenceID + verifier).utf8)) }

    /// SHA-256 of the verifier: the only form of the secret the controller stores.
    public var verifierHash: [UInt8] { SHA256.hash(Array(("fleetkeep licence verifier v1\n" + verifier).utf8)) }

    static func checkCharacters(for body: String) -> String {
        let hash = SHA256.hash(Array(("fleetkeep licence key v1\n" + body).utf8))
        // 25 bits: the top 5 bits of each of the first 5 hash bytes.
        return String(decoding: hash.prefix(checkLength).map { alphabet[Int($0 >> 3)] }, as: UTF8.self)
    }

    /// Parses typed or pasted text. The error says what is wrong (length, a character, or the check) and what to do.
    public init(text: String) throws {
        guard text.utf8.count <= 100 else { throw ProtocolError("licence key is \(text.utf8.count) bytes long; a key is FK- and 30 characters, copy it again") }
        var characters: [UInt8] = []
        for byte in text.utf8 {
            switch byte {
            case UInt8(ascii: "-"), UInt8(ascii: " "), UInt8(ascii: "\t"), UInt8(ascii: "\n"), UInt8(ascii: "\r"): continue
            default: break
            }
            var upper = byte >= UInt8(ascii: "a") && byte <= UInt8(ascii: "z") ? byte - 32 : byte
            switch upper {
            case UInt8(ascii: "O"): upper = UInt8(ascii: "0")
            case UInt8(ascii: "I"), UInt8(ascii: "L"): upper = UInt8(ascii: "1")
            default: break
            }
            characters.append(upper)
        }
        if characters.count == Self.totalLength + 2, characters.starts(with: Array("FK".utf8)) { characters.removeFirst(2) }
        guard characters.count == Self.totalLength else {
            throw ProtocolError("licence key has \(characters.count) characters after FK-, expected \(Self.totalLength) (FK-XXXXX-XXXXX-XXXXX-XXXXX-XXXXX-XXXXX); copy it again")
        }
        for (index, character) in characters.enumerated() where !Self.alphabet.contains(character) {
            let shown = character >= 0x20 && character < 0x7f ? String(UnicodeScalar(character)) : String(format: "\\x%02x", character)
            throw ProtocolError("licence key character \(index + 1) after FK- is '\(shown)', which a key never contains (letters U and symbols are not used); check it")
        }
        let body = String(decoding: characters.prefix(Self.bodyLength), as: UTF8.self)
        let check = String(decoding: characters.suffix(Self.checkLength), as: UTF8.self)
        guard HMACSHA256.equal(Array(check.utf8), Array(Self.checkCharacters(for: body).utf8)) else {
            throw ProtocolError("licence key does not pass its check (a typo?); compare it character by character with the key you were given")
        }
        self.init(licenceID: String(body.prefix(Self.idLength)), verifier: String(body.dropFirst(Self.idLength)))
    }

    /// Whether `text` looks like a licence id (5 Crockford characters), after the same normalization as keys.
    public static func normalizedID(_ text: String) -> String? {
        let upper = text.uppercased().replacingOccurrences(of: "O", with: "0").replacingOccurrences(of: "I", with: "1")
            .replacingOccurrences(of: "L", with: "1")
        guard upper.utf8.count == idLength, upper.utf8.allSatisfy({ alphabet.contains($0) }) else { return nil }
        return upper
    }
}

/// What identifies the machine an agent runs on, as keyed hashes only: HMAC-SHA256 of `/etc/machine-id` and of the
/// root file system's UUID, keyed by the controller's certificate pin (so hashes from two controllers cannot be
/// matched against each other). The raw values never leave the server.
public struct MachineIdentity: Codable, Sendable, Equatable {
    /// Lowercase hex, 64 characters.
    public var machineIDHash: String
    /// Lowercase hex, 64 characters.
    public var rootFilesystemHash: String

    public init(machineIDHash: String, rootFilesystemHash: String) {
        self.machineIDHash = machineIDHash
        self.rootFilesystemHash = rootFilesystemHash
    }

    /// Hashes raw values with a key derived from the controller's certificate pin.
    public init(machineID: String, rootFilesystemUUID: String, controllerPin: String) {
        let key = SHA256.hash(Array(("fleetkeep machine identity v1\n" + controllerPin).utf8))
        self.init(machineIDHash: Hex.encode(HMACSHA256.authenticate(Array(("machine-id\n" + machineID).utf8), key: key)),
                  rootFilesystemHash: Hex.encode(HMACSHA256.authenticate(Array(("root-fs-uuid\n" + rootFilesystemUUID).utf8), key: key)))
    }

    /// One value for both: what leases are bound to and what clone detection compares (32 hex characters).
    public var machineHash: String {
        String(SHA256.hex(Array((machineIDHash + "\n" + rootFilesystemHash).utf8)).prefix(32))
    }

    /// Both hashes are 64 lowercase hex characters.
    public var isWellFormed: Bool {
        [machineIDHash, rootFilesystemHash].allSatisfy { $0.utf8.count == 64 && $0.utf8.allSatisfy { (48...57).contains($0) || (97...102).contains($0) } }
    }
}

/// The body of a lease: what the controller grants one agent on one machine, until `expiresAt` plus `graceSeconds`.
public struct LicenceLease: Codable, Sendable, Equatable {
    public var version: Int
    public var licenceID: String
    /// `active`, `suspended`, `revoked` or `over-limit` as the controller saw the licence when it signed.
    public var state: String
    public var tier: String
    /// Feature names of the tier, e.g. `offsite`, `max-accounts:100`.
    public var features: [String]
    public var agentID: String
    public var machineHash: String
    /// Controller clock, Unix seconds.
    public var issuedAt: Int64
    public var expiresAt: Int64
    public var graceSeconds: Int64
    /// Grows with every lease this controller signs; an agent refuses a lease older than the one it holds.
    public var serial: Int64

    public init(licenceID: String, state: String, tier: String, features: [String], agentID: String, machineHash: String,
                issuedAt: Int64, expiresAt: Int64, graceSeconds: Int64, serial: Int64) {
        version = 1
        self.licenceID = licenceID
        self.state = state
        self.tier = tier
        self.features = features
        self.agentID = agentID
        self.machineHash = machineHash
        self.issuedAt = issuedAt
        self.expiresAt = expiresAt
        self.graceSeconds = graceSeconds
        self.serial = serial
    }

    /// The value of a `name:value` feature, e.g. `max-accounts:100` → 100.
    public func featureValue(_ name: String) -> Int? {
        features.lazy.compactMap { feature -> Int? in
            guard feature.hasPrefix(name + ":") else { return nil }
            return Int(feature.dropFirst(name.count + 1))
        }.first
    }
}

/// A lease as it travels and is stored: the exact JSON bytes that were signed (base64url) and the Ed25519 signature
/// over `"FLEETKEEP-LEASE-V1\n" + those bytes`. Verifying the bytes before decoding them means no re-encoding question.
public struct SignedLease: Codable, Sendable, Equatable {
    public var payload: String
    public var signature: String
    static let domain = Array("FLEETKEEP-LEASE-V1\n".utf8)

    public init(payload: String, signature: String) {
        self.payload = payload
        self.signature = signature
    }

    public static func sign(_ lease: LicenceLease, with key: Ed25519PrivateKey) throws -> SignedLease {
        let bytes = Array(try SignedPayload.encoder().encode(lease))
        return SignedLease(payload: Base64URL.encode(bytes), signature: Base64URL.encode(try key.signature(for: domain + bytes)))
    }

    /// The lease, if the signature verifies with `key`; otherwise an error saying so.
    public func open(verifyingWith key: Ed25519PublicKey) throws -> LicenceLease {
        guard payload.utf8.count <= 8192, let bytes = Base64URL.decode(payload), let signatureBytes = Base64URL.decode(signature) else {
            throw ProtocolError("lease is damaged (not base64url)")
        }
        guard key.isValidSignature(signatureBytes, for: Self.domain + bytes) else {
            throw ProtocolError("lease signature does not verify against the controller key pinned at enrollment (forged or tampered)")
        }
        do { return try JSONDecoder().decode(LicenceLease.self, from: Data(bytes)) } catch {
            throw ProtocolError("lease payload is signed but not a lease this agent understands; update the agent")
        }
    }
}

/// JSON encoding for signed payloads: sorted keys, unescaped slashes.
enum SignedPayload {
    static func encoder() -> JSONEncoder {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        return encoder
    }
}

/// Body of `POST /v1/licences/activate` (signed by the agent, like every agent request).
public struct ActivationRequest: Codable, Sendable, StrictlyDecoded {
    public static let fieldNames = storedPropertyNames(of: ActivationRequest(key: "", machine: MachineIdentity(machineIDHash: "", rootFilesystemHash: "")))
    public var key: String
    public var machine: MachineIdentity
    /// The server's primary address, kept in full only inside the controller's encrypted activation record.
    public var address: String?
    public init(key: String, machine: MachineIdentity, address: String? = nil) {
        self.key = key
        self.machine = machine
        self.address = address
    }
}

/// Answer to an activation: the first lease, the controller's lease-signing key (base64url Ed25519 public key) for
/// agents that enrolled before it was handed out at enrollment, and the controller clock.
public struct ActivationResponse: Codable, Sendable {
    public var lease: SignedLease
    public var controllerSigningKey: String
    public var controllerTime: Int64
    public init(lease: SignedLease, controllerSigningKey: String, controllerTime: Int64) {
        self.lease = lease
        self.controllerSigningKey = controllerSigningKey
        self.controllerTime = controllerTime
    }
}

/// Body of `POST /v1/licences/validate` (unauthenticated, for outside callers such as billing systems).
public struct ValidationRequest: Codable, Sendable, StrictlyDecoded {
    public static let fieldNames = storedPropertyNames(of: ValidationRequest(key: ""))
    public var key: String
    /// Optional caller value (up to 64 characters) echoed inside the signed answer, to prove freshness.
    public var nonce: String?
    public init(key: String, nonce: String? = nil) {
        self.key = key
        self.nonce = nonce
    }
}

/// Seats of a licence: servers bound now and the limit.
public struct ServerCount: Codable, Sendable, Equatable {
    public var used: Int
    public var max: Int
    public init(used: Int, max: Int) {
        self.used = used
        self.max = max
    }
}

/// What a validation says about one key. `status` is `valid`, `expired`, `suspended`, `revoked` or `unknown`
/// (an unknown key and a wrong key give the same answer).
public struct ValidationAnswer: Codable, Sendable, Equatable {
    public var status: String
    public var tier: String?
    public var features: [String]
    public var expiresAt: Int64?
    public var servers: ServerCount
    /// Hex SHA-256 of the normalized key asked about (`LicenceKey.digest`).
    public var keyDigest: String
    /// Controller clock, Unix seconds.
    public var checkedAt: Int64
    public var nonce: String?

    public init(status: String, tier: String?, features: [String], expiresAt: Int64?, servers: ServerCount, keyDigest: String,
                checkedAt: Int64, nonce: String?) {
        self.status = status
        self.tier = tier
        self.features = features
        self.expiresAt = expiresAt
        self.servers = servers
        self.keyDigest = keyDigest
        self.checkedAt = checkedAt
        self.nonce = nonce
    }
}

/// The validation answer as sent: the answer's fields in the clear for convenience (encoded flat, beside these), plus
/// `signed` (base64url of the exact JSON bytes of the answer) and `signature` (Ed25519 over
/// `"FLEETKEEP-VALIDATION-V1\n" + those bytes`). A caller that needs proof trusts only the decoded `signed` bytes
/// (docs/PROTOCOL.md).
@dynamicMemberLookup
public struct ValidationResponse: Codable, Sendable {
    public var answer: ValidationAnswer
    public var signed: String
    public var signature: String

    static let domain = Array("FLEETKEEP-VALIDATION-V1\n".utf8)

    public subscript<Value>(dynamicMember field: KeyPath<ValidationAnswer, Value>) -> Value { answer[keyPath: field] }

    public static func sign(_ answer: ValidationAnswer, with key: Ed25519PrivateKey) throws -> ValidationResponse {
        let bytes = Array(try SignedPayload.encoder().encode(answer))
        return ValidationResponse(answer: answer, signed: Base64URL.encode(bytes), signature: Base64URL.encode(try key.signature(for: domain + bytes)))
    }

    /// The signed answer, if the signature verifies with `key`.
    public func verified(with key: Ed25519PublicKey) throws -> ValidationAnswer {
        guard let bytes = Base64URL.decode(signed), let signatureBytes = Base64URL.decode(signature),
              key.isValidSignature(signatureBytes, for: Self.domain + bytes) else {
            throw ProtocolError("validation answer signature does not verify with this controller's key")
        }
        return try JSONDecoder().decode(ValidationAnswer.self, from: Data(bytes))
    }

    private enum CodingKeys: String, CodingKey { case signed, signature }

    init(answer: ValidationAnswer, signed: String, signature: String) {
        self.answer = answer
        self.signed = signed
        self.signature = signature
    }

    public init(from decoder: any Decoder) throws {
        answer = try ValidationAnswer(from: decoder)
        let container = try decoder.container(keyedBy: CodingKeys.self)
        signed = try container.decode(String.self, forKey: .signed)
        signature = try container.decode(String.self, forKey: .signature)
    }

    public func encode(to encoder: any Encoder) throws {
        try answer.encode(to: encoder)
        var container = encoder.container(keyedBy: CodingKeys.self)
        try container.encode(signed, forKey: .signed)
        try container.encode(signature, forKey: .signature)
    }
}

/// Answer to `GET /v1/licences/signing-key`: the controller's Ed25519 public key (base64url) that signs leases and
/// validation answers. Outside callers should pin it once (compare with `fleetkeep-controller licence signing-key`).
public struct SigningKeyResponse: Codable, Sendable {
    public var signingKey: String
    public init(signingKey: String) { self.signingKey = signingKey }
}

extension APIPath {
    public static let licenceActivate = "/v1/licences/activate"
    public static let licenceValidate = "/v1/licences/validate"
    public static let licenceSigningKey = "/v1/licences/signing-key"
}

/// The one clock both programs read. `FLEETKEEP_CLOCK_OFFSET` (whole seconds, at most ±20 years) moves it, so
/// end-to-end tests can run a controller outage of days in seconds. Moving it back on an agent is caught as a
/// clock rollback like any other, so the variable cannot extend a lease.
public enum FleetkeepClock {
    public static let offsetVariable = "FLEETKEEP_CLOCK_OFFSET"
    public static let offset: Int64 = {
        guard let text = ProcessInfo.processInfo.environment[offsetVariable], let value = Int64(text),
              (-630_720_000...630_720_000).contains(value) else { return 0 }
        return value
    }()

    public static func now() -> Int64 { Int64(Date().timeIntervalSince1970) + offset }
}
