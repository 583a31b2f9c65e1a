import CCrypto
import Foundation
import Synchronization

/// AES-256-GCM authenticated encryption. Sealed form: 12-byte random nonce, ciphertext, 16-byte tag.
public enum AES256GCM {
    public static let nonceSize = 12
    public static let tagSize = 16
    /// Bytes a sealed message adds to its plaintext.
    public static let overhead = nonceSize + tagSize

    /// One message with its own key (for many messages under one key, `Key` sets the key up once).
    public static func seal<D: ContiguousBytes>(_ plaintext: D, key: [UInt8], aad: [UInt8] = []) throws -> [UInt8] {
        try Key(key).seal(plaintext, aad: aad)
    }

    /// Decrypts and authenticates; a wrong key or any changed byte throws.
    public static func open<D: ContiguousBytes>(_ sealed: D, key: [UInt8], aad: [UInt8] = []) throws -> [UInt8] {
        try Key(key).open(sealed, aad: aad)
    }

    /// Seals with a context that holds the key: only a fresh nonce is set here.
    fileprivate static func seal<D: ContiguousBytes>(_ plaintext: D, aad: [UInt8], context: OpaquePointer) throws -> [UInt8] {
        let nonce = SecureRandom.bytes(nonceSize)
        try check(EVP_EncryptInit_ex(context, nil, nil, nil, nonce), "AES-256-GCM seal init")
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

    /// Opens with a context that holds the key: only the message's nonce is set here.
    fileprivate static func open<D: ContiguousBytes>(_ sealed: D, aad: [UInt8], context: OpaquePointer) throws -> [UInt8] {
        try sealed.withUnsafeBytes { input -> [UInt8] in
            guard input.count >= overhead else {
                throw CryptoError(operation: "AES-256-GCM open", message: "message of \(input.count) bytes is shorter than nonce and tag")
            }
            let bytes = input.baseAddress!.assumingMemoryBound(to: UInt8.self)
            let count = input.count - overhead
            guard count <= Int(Int32.max) else {
                throw CryptoError(operation: "AES-256-GCM open", message: "message of \(input.count) bytes is larger than 2 GiB; it cannot be one of ours")
            }
            try check(EVP_DecryptInit_ex(context, nil, nil, nil, bytes), "AES-256-GCM open init")
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

    /// One key for many messages (a repository's data key): the key schedule is made once per context, and each
    /// message only sets its nonce. The static `seal`/`open` build a context and expand the key on every call, which
    /// costs about as much as sealing a small file's chunk.
    ///
    /// Thread-safe: each call takes a context of its own from a pool (one for sealing, one for opening).
    public final class Key: Sendable {
        private let sealing: ContextPool
        private let opening: ContextPool

        /// A key of the wrong length is refused by every `seal` and `open`, as the one-shot functions refuse it.
        public init(_ key: [UInt8]) {
            sealing = ContextPool(key: key, encrypting: true)
            opening = ContextPool(key: key, encrypting: false)
        }

        public func seal<D: ContiguousBytes>(_ plaintext: D, aad: [UInt8] = []) throws -> [UInt8] {
            try sealing.with { try AES256GCM.seal(plaintext, aad: aad, context: $0) }
        }

        /// Decrypts and authenticates; a wrong key or any changed byte throws.
        public func open<D: ContiguousBytes>(_ sealed: D, aad: [UInt8] = []) throws -> [UInt8] {
            try opening.with { try AES256GCM.open(sealed, aad: aad, context: $0) }
        }
    }

    fileprivate static func checkKey(_ key: [UInt8], _ operation: String) throws {
        guard key.count == 32 else { throw CryptoError(operation: operation, message: "key must be 32 bytes, got \(key.count)") }
    }
}

/// Cipher contexts keyed once, lent to one thread at a time.
private final class ContextPool: Sendable {
    /// A context moves between threads, each using it alone.
    private struct Context: @unchecked Sendable { let pointer: OpaquePointer }
    private let key: [UInt8]
    private let encrypting: Bool
    private let idle = Mutex<[Context]>([])
    private static let pooledLimit = 64

    init(key: [UInt8], encrypting: Bool) {
        self.key = key
        self.encrypting = encrypting
    }

    deinit {
        for context in idle.withLock({ $0 }) { EVP_CIPHER_CTX_free(context.pointer) }
    }

    func with<Result>(_ body: (OpaquePointer) throws -> Result) throws -> Result {
        let context = try idle.withLock({ $0.popLast() })?.pointer ?? makeContext()
        // A context whose message failed (a bad tag) is as reusable as any: the next call sets a new nonce.
        defer {
            let kept = idle.withLock { idle -> Bool in
                guard idle.count < Self.pooledLimit else { return false }
                idle.append(Context(pointer: context))
                return true
            }
            if !kept { EVP_CIPHER_CTX_free(context) }
        }
        return try body(context)
    }

    private func makeContext() throws -> OpaquePointer {
        try AES256GCM.checkKey(key, encrypting ? "AES-256-GCM seal" : "AES-256-GCM open")
        guard let context = EVP_CIPHER_CTX_new() else { throw CryptoError.openssl("AES-256-GCM context") }
        let keyed = encrypting ? EVP_EncryptInit_ex(context, EVP_aes_256_gcm(), nil, key, nil)
                               : EVP_DecryptInit_ex(context, EVP_aes_256_gcm(), nil, key, nil)
        guard keyed == 1 else {
            EVP_CIPHER_CTX_free(context)
            throw CryptoError.openssl("AES-256-GCM key setup")
        }
        return context
    }
}
