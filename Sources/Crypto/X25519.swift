import CCrypto

/// An X25519 private key: the operator's recovery key, which opens escrowed repository keys.
public struct X25519PrivateKey: Sendable {
    public let rawRepresentation: [UInt8]
    public let publicKey: X25519PublicKey
    fileprivate let key: PKey

    public init() {
        // Any 32 random bytes are a valid X25519 private key.
        try! self.init(rawRepresentation: SecureRandom.bytes(32))
    }

    public init(rawRepresentation: [UInt8]) throws {
        guard rawRepresentation.count == 32 else {
            throw CryptoError(operation: "X25519 private key", message: "expected 32 bytes, got \(rawRepresentation.count)")
        }
        key = try PKey.rawPrivate(type: fk_evp_pkey_x25519(), rawRepresentation, "X25519 private key")
        self.rawRepresentation = rawRepresentation
        publicKey = try X25519PublicKey(rawRepresentation: key.rawPublicBytes("X25519 public key"))
    }

    /// The Diffie-Hellman shared secret with `peer`.
    public func sharedSecret(with peer: X25519PublicKey) throws -> [UInt8] {
        guard let context = EVP_PKEY_CTX_new(key.pointer, nil) else { throw CryptoError.openssl("X25519 derive") }
        defer { EVP_PKEY_CTX_free(context) }
        try check(EVP_PKEY_derive_init(context), "X25519 derive init")
        try check(EVP_PKEY_derive_set_peer(context, peer.key.pointer), "X25519 peer")
        var length = 32
        var secret = [UInt8](repeating: 0, count: length)
        try check(EVP_PKEY_derive(context, &secret, &length), "X25519 derive")
        return secret
    }
}

/// An X25519 public key, to which secrets can be sealed.
public struct X25519PublicKey: Sendable {
    public let rawRepresentation: [UInt8]
    fileprivate let key: PKey

    public init(rawRepresentation: [UInt8]) throws {
        guard rawRepresentation.count == 32 else {
            throw CryptoError(operation: "X25519 public key", message: "expected 32 bytes, got \(rawRepresentation.count)")
        }
        key = try PKey.rawPublic(type: fk_evp_pkey_x25519(), rawRepresentation, "X25519 public key")
        self.rawRepresentation = rawRepresentation
    }
}

/// Anonymous public-key encryption: only the holder of the recipient's private key can open the box.
/// Format: ephemeral X25519 public key (32 bytes) || AES-256-GCM sealed message, with the key from
/// HKDF-SHA256(DH(ephemeral, recipient), salt: ephemeral || recipient, info: "fleetkeep sealed box v1").
public enum SealedBox {
    private static let info = Array("fleetkeep sealed box v1".utf8)

    public static func seal(_ plaintext: [UInt8], to recipient: X25519PublicKey) throws -> [UInt8] {
        let ephemeral = X25519PrivateKey()
        let shared = try ephemeral.sharedSecret(with: recipient)
        let salt = ephemeral.publicKey.rawRepresentation + recipient.rawRepresentation
        let key = try HKDFSHA256.derive(key: shared, salt: salt, info: info, length: 32)
        return ephemeral.publicKey.rawRepresentation + (try AES256GCM.seal(plaintext, key: key, aad: salt))
    }

    public static func open(_ box: [UInt8], with recipient: X25519PrivateKey) throws -> [UInt8] {
        guard box.count >= 32 + AES256GCM.overhead else {
            throw CryptoError(operation: "sealed box open", message: "box of \(box.count) bytes is too short")
        }
        let ephemeral = try X25519PublicKey(rawRepresentation: Array(box.prefix(32)))
        let shared = try recipient.sharedSecret(with: ephemeral)
        let salt = ephemeral.rawRepresentation + recipient.publicKey.rawRepresentation
        let key = try HKDFSHA256.derive(key: shared, salt: salt, info: info, length: 32)
        return try AES256GCM.open(box.dropFirst(32).withUnsafeBytes { Array($0) }, key: key, aad: salt)
    }
}
