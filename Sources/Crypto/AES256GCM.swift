import CCrypto
import Foundation

/// AES-256-GCM authenticated encryption. Sealed form: 12-byte random nonce, ciphertext, 16-byte tag.
public enum AES256GCM {
    public static let nonceSize = 12
    public static let tagSize = 16
    /// Bytes a sealed message adds to its plaintext.
    public static let overhead = nonceSize + tagSize

    public static func seal<D: ContiguousBytes>(_ plaintext: D, key: [UInt8], aad: [UInt8] = []) throws -> [UInt8] {
        try checkKey(key, "AES-256-GCM seal")
        let nonce = SecureRandom.bytes(nonceSize)
        guard let context = EVP_CIPHER_CTX_new() else { throw CryptoError.openssl("AES-256-GCM seal") }
        defer { EVP_CIPHER_CTX_free(context) }
        try check(EVP_EncryptInit_ex(context, EVP_aes_256_gcm(), nil, key, nonce), "AES-256-GCM seal init")
        var length: Int32 = 0
        if !aad.isEmpty { try check(EVP_EncryptUpdate(context, nil, &length, aad, Int32(aad.count)), "AES-256-GCM aad") }
        return try plaintext.withUnsafeBytes { input -> [UInt8] in
            let count = input.count
            // OpenSSL takes an int length; larger messages are refused rather than truncated or trapped on.
            guard count <= Int(Int32.max) - overhead else {
                throw CryptoError(operation: "AES-256-GCM seal", message: "message of \(count) bytes is larger than 2 GiB")
            }
            return try [UInt8](unsafeUninitializedCapacity: count + overhead) { output, initialized in
                let base = output.baseAddress!
                base.initialize(from: nonce, count: nonceSize)
                var written: Int32 = 0
                if count > 0 {
                    try check(EVP_EncryptUpdate(context, base + nonceSize, &written,
                                                input.baseAddress!.assumingMemoryBound(to: UInt8.self), Int32(count)),
                              "AES-256-GCM encrypt")
                }
                var tail: Int32 = 0
                try check(EVP_EncryptFinal_ex(context, base + nonceSize + Int(written), &tail), "AES-256-GCM finish")
                try check(EVP_CIPHER_CTX_ctrl(context, fk_gcm_get_tag(), Int32(tagSize), base + nonceSize + count), "AES-256-GCM tag")
                initialized = count + overhead
            }
        }
    }

    /// Decrypts and authenticates; a wrong key or any changed byte throws.
    public static func open<D: ContiguousBytes>(_ sealed: D, key: [UInt8], aad: [UInt8] = []) throws -> [UInt8] {
        try checkKey(key, "AES-256-GCM open")
        return try sealed.withUnsafeBytes { input -> [UInt8] in
            guard input.count >= overhead else {
                throw CryptoError(operation: "AES-256-GCM open", message: "message of \(input.count) bytes is shorter than nonce and tag")
            }
            let bytes = input.baseAddress!.assumingMemoryBound(to: UInt8.self)
            let count = input.count - overhead
            guard count <= Int(Int32.max) else {
                throw CryptoError(operation: "AES-256-GCM open", message: "message of \(input.count) bytes is larger than 2 GiB; it cannot be one of ours")
            }
            guard let context = EVP_CIPHER_CTX_new() else { throw CryptoError.openssl("AES-256-GCM open") }
            defer { EVP_CIPHER_CTX_free(context) }
            try check(EVP_DecryptInit_ex(context, EVP_aes_256_gcm(), nil, key, bytes), "AES-256-GCM open init")
            var length: Int32 = 0
            if !aad.isEmpty { try check(EVP_DecryptUpdate(context, nil, &length, aad, Int32(aad.count)), "AES-256-GCM aad") }
            return try [UInt8](unsafeUninitializedCapacity: max(count, 1)) { output, initialized in
                var written: Int32 = 0
                if count > 0 {
                    try check(EVP_DecryptUpdate(context, output.baseAddress!, &written, bytes + nonceSize, Int32(count)), "AES-256-GCM decrypt")
                }
                let tag = UnsafeMutableRawPointer(mutating: bytes + nonceSize + count)
                try check(EVP_CIPHER_CTX_ctrl(context, fk_gcm_set_tag(), Int32(tagSize), tag), "AES-256-GCM tag")
                var tail: Int32 = 0
                guard EVP_DecryptFinal_ex(context, output.baseAddress! + Int(written), &tail) == 1 else {
                    ERR_clear_error()
                    throw CryptoError(operation: "AES-256-GCM open",
                                      message: "authentication failed: wrong key, or the data was changed or damaged")
                }
                initialized = count
            }
        }
    }

    private static func checkKey(_ key: [UInt8], _ operation: String) throws {
        guard key.count == 32 else { throw CryptoError(operation: operation, message: "key must be 32 bytes, got \(key.count)") }
    }
}
