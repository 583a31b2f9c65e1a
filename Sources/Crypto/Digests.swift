import CCrypto
import Foundation

/// SHA-256 digests.
public enum SHA256 {
    public static let byteCount = 32

    public static func hash<D: ContiguousBytes>(_ data: D) -> [UInt8] {
        var digest = [UInt8](repeating: 0, count: byteCount)
        data.withUnsafeBytes { input in
            // EVP_Digest only fails on allocation failure, which Swift treats as fatal anyway.
            let ok = EVP_Digest(input.baseAddress, input.count, &digest, nil, EVP_sha256(), nil)
            precondition(ok == 1, "EVP_Digest(SHA-256) failed")
        }
        return digest
    }

    /// Lowercase hex of the digest.
    public static func hex<D: ContiguousBytes>(_ data: D) -> String { Hex.encode(hash(data)) }
}

/// Incremental SHA-256 over data that arrives in pieces. One owner at a time, so not Sendable.
public final class SHA256Hasher {
    private let context: OpaquePointer

    public init() {
        context = EVP_MD_CTX_new()
        precondition(EVP_DigestInit_ex(context, EVP_sha256(), nil) == 1, "EVP_DigestInit_ex(SHA-256) failed")
    }

    deinit { EVP_MD_CTX_free(context) }

    public func update<D: ContiguousBytes>(_ data: D) {
        data.withUnsafeBytes { input in
            precondition(EVP_DigestUpdate(context, input.baseAddress, input.count) == 1, "EVP_DigestUpdate failed")
        }
    }

    public func finalize() -> [UInt8] {
        var digest = [UInt8](repeating: 0, count: SHA256.byteCount)
        var length: UInt32 = 0
        precondition(EVP_DigestFinal_ex(context, &digest, &length) == 1, "EVP_DigestFinal_ex failed")
        return digest
    }
}

/// HMAC-SHA256 message authentication (and keyed hashing of chunk contents).
public enum HMACSHA256 {
    public static func authenticate<D: ContiguousBytes>(_ data: D, key: [UInt8]) -> [UInt8] {
        var mac = [UInt8](repeating: 0, count: SHA256.byteCount)
        var length: UInt32 = 0
        data.withUnsafeBytes { input in
            key.withUnsafeBytes { keyBytes in
                let result = HMAC(EVP_sha256(), keyBytes.baseAddress, Int32(keyBytes.count),
                                  input.baseAddress?.assumingMemoryBound(to: UInt8.self), input.count, &mac, &length)
                precondition(result != nil, "HMAC-SHA256 failed")
            }
        }
        return mac
    }

    /// Compares two MACs in constant time.
    public static func equal(_ a: [UInt8], _ b: [UInt8]) -> Bool {
        guard a.count == b.count else { return false }
        return CRYPTO_memcmp(a, b, a.count) == 0
    }
}

/// Cryptographically secure random bytes from OpenSSL's DRBG.
public enum SecureRandom {
    public static func bytes(_ count: Int) -> [UInt8] {
        var bytes = [UInt8](repeating: 0, count: count)
        if count > 0 { precondition(RAND_bytes(&bytes, Int32(count)) == 1, "RAND_bytes failed") }
        return bytes
    }
}
