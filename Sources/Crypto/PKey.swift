import CCrypto

/// Owns one libcrypto `EVP_PKEY`. Immutable after creation and only read by libcrypto (sign, verify, derive all take
/// it as input), which OpenSSL documents as safe from several threads; hence `@unchecked Sendable`.
final class PKey: @unchecked Sendable {
    let pointer: OpaquePointer

    init(_ pointer: OpaquePointer) { self.pointer = pointer }

    deinit { EVP_PKEY_free(pointer) }

    static func rawPrivate(type: Int32, _ bytes: [UInt8], _ operation: String) throws -> PKey {
        guard let key = EVP_PKEY_new_raw_private_key(type, nil, bytes, bytes.count) else { throw CryptoError.openssl(operation) }
        return PKey(key)
    }

    static func rawPublic(type: Int32, _ bytes: [UInt8], _ operation: String) throws -> PKey {
        guard let key = EVP_PKEY_new_raw_public_key(type, nil, bytes, bytes.count) else { throw CryptoError.openssl(operation) }
        return PKey(key)
    }

    func rawPublicBytes(_ operation: String) throws -> [UInt8] {
        var length = 32
        var bytes = [UInt8](repeating: 0, count: length)
        try check(EVP_PKEY_get_raw_public_key(pointer, &bytes, &length), operation)
        return Array(bytes.prefix(length))
    }
}
