import CCrypto

/// Password-based key derivation (scrypt), for repository keys sealed by a passphrase.
public enum PasswordKDF {
    public static func scrypt(password: [UInt8], salt: [UInt8], n: UInt64 = 1 << 15, r: UInt64 = 8, p: UInt64 = 1,
                              length: Int = 32) throws -> [UInt8] {
        // The parameters come from key files, which are not authenticated: only sane costs are run, and the memory
        // bound is computed without overflow.
        guard n >= 2, n & (n - 1) == 0, n <= 1 << 22, (1...32).contains(r), (1...16).contains(p), (16...64).contains(length) else {
            throw CryptoError(operation: "scrypt key derivation", message: "parameters N=\(n) r=\(r) p=\(p) are outside the supported range (N a power of two up to 2^22)")
        }
        var output = [UInt8](repeating: 0, count: length)
        // scrypt needs 128·N·r·p bytes; allow twice that so the default parameters always fit.
        let maxMemory = 256 * n * r * p
        let passwordChars = password.map { CChar(bitPattern: $0) }
        try check(EVP_PBE_scrypt(passwordChars, password.count, salt, salt.count, n, r, p, maxMemory, &output, length),
                  "scrypt key derivation")
        return output
    }
}

/// HKDF with SHA-256 (RFC 5869), for deriving separate keys from one secret.
public enum HKDFSHA256 {
    public static func derive(key: [UInt8], salt: [UInt8], info: [UInt8], length: Int) throws -> [UInt8] {
        guard let context = EVP_PKEY_CTX_new_id(fk_evp_pkey_hkdf(), nil) else { throw CryptoError.openssl("HKDF") }
        defer { EVP_PKEY_CTX_free(context) }
        try check(EVP_PKEY_derive_init(context), "HKDF init")
        try check(EVP_PKEY_CTX_set_hkdf_md(context, EVP_sha256()), "HKDF digest")
        // An empty salt means "no salt" to HKDF (a string of zeros), but OpenSSL rejects a zero-length buffer.
        let effectiveSalt = salt.isEmpty ? [UInt8](repeating: 0, count: SHA256.byteCount) : salt
        try check(EVP_PKEY_CTX_set1_hkdf_salt(context, effectiveSalt, Int32(effectiveSalt.count)), "HKDF salt")
        try check(EVP_PKEY_CTX_set1_hkdf_key(context, key, Int32(key.count)), "HKDF key")
        if !info.isEmpty { try check(EVP_PKEY_CTX_add1_hkdf_info(context, info, Int32(info.count)), "HKDF info") }
        var output = [UInt8](repeating: 0, count: length)
        var outputLength = length
        try check(EVP_PKEY_derive(context, &output, &outputLength), "HKDF derive")
        return output
    }
}
