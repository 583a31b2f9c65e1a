import CCrypto
import Foundation
import Synchronization

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

extension HMACSHA256 {
    /// One key for many messages (a repository's blob ids): the key is set up once, and each message costs a reset of
    /// an already keyed context. The one-shot `authenticate(_:key:)` makes OpenSSL look up the algorithm and key a
    /// new context on every call, which cost more than hashing a small file's chunk.
    ///
    /// Thread-safe: each call takes a context of its own from a small pool (a context is never used by two threads at
    /// once), and the pool grows to as many threads as ask at the same time.
    public final class Key: @unchecked Sendable {
        // @unchecked: `template` is only read (duplicated) with `idle` locked; a pooled context is used by the one
        // thread that took it.
        private let algorithm: OpaquePointer
        private let template: OpaquePointer
        private let idle = Mutex<[Context]>([])
        /// A context, for the pool: it moves between threads, each using it alone.
        private struct Context: @unchecked Sendable { let pointer: OpaquePointer }
        private static let pooledLimit = 64

        public init(_ key: [UInt8]) {
            guard let algorithm = EVP_MAC_fetch(nil, "HMAC", nil), let template = EVP_MAC_CTX_new(algorithm) else {
                preconditionFailure("OpenSSL has no HMAC (out of memory, or a broken libcrypto)")
            }
            let keyed = "SHA256".withCString { digest in
                var parameters = [OSSL_PARAM_construct_utf8_string("digest", UnsafeMutablePointer(mutating: digest), 0),
                                  OSSL_PARAM_construct_end()]
                return key.withUnsafeBufferPointer { EVP_MAC_init(template, $0.baseAddress, $0.count, &parameters) }
            }
            precondition(keyed == 1, "EVP_MAC_init(HMAC-SHA256) failed")
            self.algorithm = algorithm
            self.template = template
        }

        deinit {
            for context in idle.withLock({ $0 }) { EVP_MAC_CTX_free(context.pointer) }
            EVP_MAC_CTX_free(template)
            EVP_MAC_free(algorithm)
        }

        public func authenticate<D: ContiguousBytes>(_ data: D) -> [UInt8] {
            let taken = idle.withLock { idle -> Context? in
                if let context = idle.popLast() { return context }
                return EVP_MAC_CTX_dup(template).map(Context.init)
            }
            guard let context = taken?.pointer else { preconditionFailure("EVP_MAC_CTX_dup failed (out of memory)") }
            let mac = Self.authenticate(data, with: context)
            let kept = idle.withLock { idle -> Bool in
                guard idle.count < Self.pooledLimit else { return false }
                idle.append(Context(pointer: context))
                return true
            }
            if !kept { EVP_MAC_CTX_free(context) }
            return mac
        }

        /// A context of this key for one thread, which then authenticates without taking the pool's lock. For a
        /// thread that authenticates many short messages in a row: a backup's directory listers each compute two MACs
        /// per directory, and taking and returning pooled contexts under one lock made them queue for it.
        public func makeThreadContext() -> ThreadContext {
            guard let pointer = idle.withLock({ _ in EVP_MAC_CTX_dup(template) }) else {
                preconditionFailure("EVP_MAC_CTX_dup failed (out of memory)")
            }
            return ThreadContext(key: self, pointer: pointer)
        }

        /// `data`'s MAC with `context`, a keyed context no other thread is using.
        fileprivate static func authenticate<D: ContiguousBytes>(_ data: D, with context: OpaquePointer) -> [UInt8] {
            var mac = [UInt8](repeating: 0, count: SHA256.byteCount)
            var length = 0
            // A null key re-keys with the one set in `init` (OpenSSL keeps the prepared inner and outer states).
            let ok = data.withUnsafeBytes { input in
                EVP_MAC_init(context, nil, 0, nil) == 1
                    && EVP_MAC_update(context, input.baseAddress?.assumingMemoryBound(to: UInt8.self), input.count) == 1
                    && EVP_MAC_final(context, &mac, &length, mac.count) == 1
            }
            precondition(ok && length == SHA256.byteCount, "HMAC-SHA256 failed")
            return mac
        }
    }

    /// A keyed context used by one thread only (not `Sendable`), from `Key.makeThreadContext`. It gives the same MACs
    /// as its key.
    public final class ThreadContext {
        /// Held as every child handle here holds its parent. OpenSSL's duplicate has its own copy of the keyed state,
        /// so this is for the rule's sake, not the context's.
        private let key: Key
        private let pointer: OpaquePointer

        fileprivate init(key: Key, pointer: OpaquePointer) {
            self.key = key
            self.pointer = pointer
        }

        deinit { EVP_MAC_CTX_free(pointer) }

        public func authenticate<D: ContiguousBytes>(_ data: D) -> [UInt8] { Key.authenticate(data, with: pointer) }
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
