import CCrypto
import Foundation

/// An Ed25519 signing key: agents sign requests with it, the controller signs licences with it.
public struct Ed25519PrivateKey: Sendable {
    /// The 32-byte seed.
    public let rawRepresentation: [UInt8]
    public let publicKey: Ed25519PublicKey
    private let key: PKey

    /// Generates a new random key.
    public init() {
        // 32 random bytes are a valid seed, so this cannot fail short of allocation failure.
        try! self.init(rawRepresentation: SecureRandom.bytes(32))
    }

    public init(rawRepresentation: [UInt8]) throws {
        guard rawRepresentation.count == 32 else {
            throw CryptoError(operation: "Ed25519 private key", message: "expected 32 bytes, got \(rawRepresentation.count)")
        }
        key = try PKey.rawPrivate(type: fk_evp_pkey_ed25519(), rawRepresentation, "Ed25519 private key")
        self.rawRepresentation = rawRepresentation
        publicKey = try Ed25519PublicKey(rawRepresentation: key.rawPublicBytes("Ed25519 public key"))
    }

    /// A 64-byte signature over `data`.
    public func signature<D: ContiguousBytes>(for data: D) throws -> [UInt8] {
        guard let context = EVP_MD_CTX_new() else { throw CryptoError.openssl("Ed25519 sign") }
        defer { EVP_MD_CTX_free(context) }
        try check(EVP_DigestSignInit(context, nil, nil, nil, key.pointer), "Ed25519 sign init")
        var signature = [UInt8](repeating: 0, count: 64)
        var length = 64
        try data.withUnsafeBytes { input in
            try check(EVP_DigestSign(context, &signature, &length, input.baseAddress?.assumingMemoryBound(to: UInt8.self), input.count),
                      "Ed25519 sign")
        }
        return signature
    }
}

/// An Ed25519 public key, the identity of an agent.
public struct Ed25519PublicKey: Sendable, Hashable {
    public let rawRepresentation: [UInt8]
    private let key: PKey

    public init(rawRepresentation: [UInt8]) throws {
        guard rawRepresentation.count == 32 else {
            throw CryptoError(operation: "Ed25519 public key", message: "expected 32 bytes, got \(rawRepresentation.count)")
        }
        key = try PKey.rawPublic(type: fk_evp_pkey_ed25519(), rawRepresentation, "Ed25519 public key")
        self.rawRepresentation = rawRepresentation
    }

    public func isValidSignature<D: ContiguousBytes>(_ signature: [UInt8], for data: D) -> Bool {
        guard signature.count == 64, let context = EVP_MD_CTX_new() else { return false }
        defer { EVP_MD_CTX_free(context) }
        guard EVP_DigestVerifyInit(context, nil, nil, nil, key.pointer) == 1 else {
            ERR_clear_error()
            return false
        }
        let result = data.withUnsafeBytes { input in
            EVP_DigestVerify(context, signature, 64, input.baseAddress?.assumingMemoryBound(to: UInt8.self), input.count)
        }
        if result != 1 { ERR_clear_error() }
        return result == 1
    }

    public static func == (lhs: Ed25519PublicKey, rhs: Ed25519PublicKey) -> Bool { lhs.rawRepresentation == rhs.rawRepresentation }
    public func hash(into hasher: inout Hasher) { hasher.combine(rawRepresentation) }
}
