import Crypto
import Foundation
import Posix

/// What unlocks a repository: a key file holding a random secret (created by `repo init`), or a passphrase.
public enum KeySource: Sendable {
    case keyFile(String)
    case passphrase(String)

    /// Reads the key file's secret; with `create`, makes a new 0600 file holding 32 random bytes if none exists.
    func secret(create: Bool) throws -> [UInt8] {
        switch self {
        case .passphrase(let text):
            return Array(text.utf8)
        case .keyFile(let path):
            if !FileManager.default.fileExists(atPath: path) {
                guard create else { throw RepositoryError("key file \(path) does not exist; pass the --key-file used with `repo init`") }
                let directory = Directory.parentDirectory(of: path)
                // Created in place, exclusively (never over a key that appeared meanwhile), rather than renamed:
                // a key file may live on a file system without hard links or atomic replace (a USB stick).
                let text = Array((Base64URL.encode(SecureRandom.bytes(32)) + "\n").utf8)
                do throws(Errno) {
                    // Without its key the repository cannot be read, so the key must outlive a power cut as surely
                    // as the repository: its directory (made if missing) and its own name are synced into their
                    // parents, not only its bytes.
                    try Directory.create(directory, permissions: 0o777, withParents: true, durable: true)
                    let file = try FileDescriptor.open(path, O_CREAT | O_EXCL | O_WRONLY, permissions: 0o600)
                    try file.write(all: text)
                    try file.sync()
                    try file.close()
                    try Directory.sync(directory)
                } catch {
                    let step = error.path == path ? "\(error.operation) failed: \(error.text)" : error.description
                    throw RepositoryError("cannot create key file \(path): \(step)")
                }
            }
            var info = stat()
            guard stat(path, &info) == 0 else {
                throw RepositoryError("key file \(path) cannot be read: \(String(cString: strerror(errno)))")
            }
            if info.st_mode & S_IFMT == S_IFDIR {
                throw RepositoryError("key file \(path) is a directory, not a key file; pass the key file itself with --key-file FILE")
            }
            guard info.st_mode & S_IFMT == S_IFREG else {
                throw RepositoryError("key file \(path) is not a regular file; pass the key file itself with --key-file FILE")
            }
            if info.st_mode & 0o077 != 0 {
                throw RepositoryError("key file \(path) is readable by other users (mode \(String(info.st_mode & 0o777, radix: 8))); run `chmod 600 \(path)`")
            }
            guard let data = FileManager.default.contents(atPath: path),
                  let secret = Base64URL.decode(String(decoding: data, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)),
                  secret.count >= 32 else {
                throw RepositoryError("key file \(path) is unreadable or damaged")
            }
            return secret
        }
    }
}

/// The repository's own keys, stored sealed in `keys/`.
struct MasterKeys: Codable {
    /// AES-256-GCM key for every blob, index and snapshot.
    var dataKey: [UInt8]
    /// HMAC-SHA256 key for blob ids, so ids reveal nothing about content.
    var idKey: [UInt8]
    /// Seed of the chunker's gear table, so chunk boundaries are repository-specific.
    var chunkerSeed: [UInt8]

    static func generate() -> MasterKeys {
        MasterKeys(dataKey: SecureRandom.bytes(32), idKey: SecureRandom.bytes(32), chunkerSeed: SecureRandom.bytes(32))
    }
}

/// One entry of `keys/`: master keys sealed by a key derived from a key file (HKDF) or a passphrase (scrypt).
struct SealedKeyFile: Codable {
    var kdf: String
    var salt: [UInt8]
    var scryptN: UInt64?
    var sealed: [UInt8]

    static func seal(_ keys: MasterKeys, with source: KeySource, secret: [UInt8]) throws -> SealedKeyFile {
        let salt = SecureRandom.bytes(32)
        var file = SealedKeyFile(kdf: "", salt: salt, scryptN: nil, sealed: [])
        switch source {
        case .keyFile: file.kdf = "hkdf-sha256"
        case .passphrase: file.kdf = "scrypt"; file.scryptN = 1 << 15
        }
        let key = try file.derive(secret)
        file.sealed = try AES256GCM.seal(try JSONEncoder().encode(keys), key: key, aad: Array("fleetkeep keys v1".utf8))
        return file
    }

    func derive(_ secret: [UInt8]) throws -> [UInt8] {
        switch kdf {
        case "hkdf-sha256": return try HKDFSHA256.derive(key: secret, salt: salt, info: Array("fleetkeep repository key v1".utf8), length: 32)
        case "scrypt": return try PasswordKDF.scrypt(password: secret, salt: salt, n: scryptN ?? (1 << 15))
        default: throw RepositoryError("key entry uses unknown key derivation '\(kdf)'")
        }
    }

    /// Sizes a key entry we wrote always has: a salt of 32 bytes, sealed keys of a nonce, JSON and a tag.
    /// A scrypt cost from the repository is checked before use: N is a power of two, and at most 2^20 (1 GiB of
    /// memory), so a damaged or hostile entry cannot make the key derivation overflow or exhaust memory.
    var isWellFormed: Bool {
        guard salt.count == 32, sealed.count > 12 + 16 else { return false }
        guard let n = scryptN else { return true }
        return n >= 2 && n <= 1 << 20 && n & (n - 1) == 0
    }

    func open(_ secret: [UInt8]) throws -> MasterKeys? {
        guard let plain = try? AES256GCM.open(sealed, key: try derive(secret), aad: Array("fleetkeep keys v1".utf8)) else { return nil }
        guard let keys = try? JSONDecoder().decode(MasterKeys.self, from: Data(plain)),
              keys.dataKey.count == 32, keys.idKey.count == 32, !keys.chunkerSeed.isEmpty else {
            throw RepositoryError("a key entry opens with the given key but does not hold keys (written by another program?)")
        }
        return keys
    }
}

/// A repository-level failure with a message that names the input and the next step.
public struct RepositoryError: Error, CustomStringConvertible, Sendable {
    public let message: String
    public init(_ message: String) { self.message = message }
    public var description: String { message }
}
