import Crypto
import Foundation
import Posix
import SQLite
import Synchronization

/// The controller's privacy key: 32 random bytes in `privacy.key` beside the database (0600), never in it. Separate
/// keys are derived from it for the encrypted personal fields (AES-256-GCM), the erasure ledger and the audit chain
/// (HMAC-SHA256). The database records only the key's id, so a wrong or missing key file is named at start instead
/// of turning personal data into noise.
public struct PrivacyKeys: Sendable {
    public static let fileName = "privacy.key"
    /// The first 16 hex characters of HMAC(key, "key id"): identifies the key without revealing it.
    public let keyID: String
    /// Opens every sealed host name of a 10,000-agent overview: keyed once rather than at every field.
    let fieldCipher: AES256GCM.Key
    let ledgerKey: [UInt8]
    let auditKey: [UInt8]
    /// The format byte in front of every sealed field, so a later format can be told apart.
    static let sealedVersion: UInt8 = 1

    /// `master` is the key file's 32 bytes; each purpose gets its own key, HMAC-SHA256(master, label) (the PRF step
    /// of HKDF-Expand for one block).
    init(master: [UInt8]) {
        func derive(_ label: String) -> [UInt8] { HMACSHA256.authenticate(Array(label.utf8) + [1], key: master) }
        keyID = String(Hex.encode(derive("fleetkeep privacy key id")).prefix(16))
        fieldCipher = AES256GCM.Key(derive("fleetkeep personal fields v1"))
        ledgerKey = derive("fleetkeep erasure ledger v1")
        auditKey = derive("fleetkeep audit chain v1")
    }

    /// A key that lives as long as this process (stores built on a database no `ControllerStore` opened).
    static func ephemeral() -> PrivacyKeys { PrivacyKeys(master: SecureRandom.bytes(32)) }

    // MARK: Sealed fields

    /// Encrypts a personal field. `field` (say `customer.email`) is authenticated with it, so a sealed value cannot be
    /// moved into another column and still open.
    public func seal(_ text: String, field: String) throws -> [UInt8] {
        [Self.sealedVersion] + (try fieldCipher.seal(Array(text.utf8), aad: Array(field.utf8)))
    }

    public func open(_ sealed: [UInt8], field: String) throws -> String {
        guard sealed.first == Self.sealedVersion else { throw ControllerError("sealed \(field) has an unknown format") }
        do {
            return String(decoding: try fieldCipher.open(sealed.dropFirst(), aad: Array(field.utf8)), as: UTF8.self)
        } catch {
            throw ControllerError("sealed \(field) does not open with privacy key \(keyID): the key file or the database was changed")
        }
    }

    func seal(optional text: String?, field: String) throws -> [UInt8]? { try text.map { try seal($0, field: field) } }

    func open(optional sealed: [UInt8]?, field: String) throws -> String? { try sealed.map { try open($0, field: field) } }

    // MARK: Keyed hashes

    /// The erasure ledger's entry for a customer: no personal data, and without the key not even the uid.
    func ledgerHash(customerUID: String) -> String {
        Hex.encode(HMACSHA256.authenticate(Array("customer \(customerUID)".utf8), key: ledgerKey))
    }

    /// One link of the audit chain: HMAC over the previous link and the entry's fields, each length-prefixed.
    func auditMAC(previous: [UInt8], fields: [String]) -> [UInt8] {
        var message = previous
        for field in fields {
            let bytes = Array(field.utf8)
            message += withUnsafeBytes(of: UInt32(clamping: bytes.count).bigEndian, Array.init) + bytes
        }
        return HMACSHA256.authenticate(message, key: auditKey)
    }

    // MARK: The key file

    /// Keys already loaded, by database path, for stores built from a bare `Database` (`SQLiteLicenceStore(database:)`).
    private static let loaded = Mutex<[String: PrivacyKeys]>([:])

    static func registered(for database: Database) -> PrivacyKeys? { loaded.withLock { $0[database.path] } }

    public static func keyPath(forDatabase path: String) -> String {
        Directory.parentDirectory(of: path) + "/" + fileName
    }

    /// Loads the key beside `database`, creating it when the database has never had one. A database that has a key
    /// id but no key file (or another key) is an error: its personal fields could not be read.
    static func open(database: Database) throws -> PrivacyKeys {
        let path = keyPath(forDatabase: database.path)
        let expected = try database.query("SELECT value FROM settings WHERE key = 'privacy_key_id'").first?.string("value")
        let keys: PrivacyKeys
        if let master = try readKeyFile(path) {
            keys = PrivacyKeys(master: master)
        } else {
            if let expected {
                throw ControllerError("privacy key \(path) is missing; the personal data in \(database.path) is encrypted with key \(expected) and cannot be read without it. Restore the key file from your backup")
            }
            keys = PrivacyKeys(master: try createKeyFile(path))
        }
        if let expected, expected != keys.keyID {
            throw ControllerError("privacy key \(path) (key \(keys.keyID)) is not the key of \(database.path) (key \(expected)); restore the matching key file")
        }
        if expected == nil {
            try database.run("INSERT INTO settings (key, value) VALUES ('privacy_key_id', ?) ON CONFLICT(key) DO NOTHING", [.text(keys.keyID)])
            let stored = try database.query("SELECT value FROM settings WHERE key = 'privacy_key_id'").first?.string("value")
            guard stored == keys.keyID else {
                throw ControllerError("another process created privacy key \(stored ?? "?") for \(database.path) at the same time; run the command again")
            }
        }
        loaded.withLock { $0[database.path] = keys }
        return keys
    }

    /// The key's 32 bytes, or nil when there is no file. A key readable by others is refused.
    static func readKeyFile(_ path: String) throws -> [UInt8]? {
        var status = stat()
        guard stat(path, &status) == 0 else {
            if errno == ENOENT { return nil }
            throw ControllerError("cannot read privacy key \(path): \(String(cString: strerror(errno)))")
        }
        guard status.st_mode & 0o077 == 0 else {
            throw ControllerError("privacy key \(path) is readable by others (mode \(String(status.st_mode & 0o777, radix: 8))); run `chmod 600 \(path)`")
        }
        guard let text = try? String(contentsOfFile: path, encoding: .utf8),
              let raw = Base64URL.decode(text.trimmingCharacters(in: .whitespacesAndNewlines)), raw.count == 32 else {
            throw ControllerError("privacy key \(path) is damaged (expected 32 bytes, base64url); restore it from your backup")
        }
        return raw
    }

    /// Creates the key file exclusively (0600): when two processes race, both end up with the first one's key.
    static func createKeyFile(_ path: String) throws -> [UInt8] {
        let master = SecureRandom.bytes(32)
        do throws(Errno) {
            let file = try TemporaryFile.create(in: Directory.parentDirectory(of: path), permissions: 0o600)
            try file.file.write(all: Array((Base64URL.encode(master) + "\n").utf8))
            try file.commitUnlessExists(to: path, durable: true)
            return master
        } catch where error == .exists {
            guard let existing = try readKeyFile(path) else {
                throw ControllerError("cannot create privacy key \(path): it appeared and vanished while being created; run the command again")
            }
            return existing
        } catch {
            throw ControllerError("cannot create privacy key \(path): \(error.operation) failed: \(error.text)")
        }
    }
}

/// IP addresses as the privacy rules allow them outside the encrypted activation record: IPv4 cut to its /24,
/// IPv6 to its /48. Parsing and printing are `inet_pton` and `inet_ntop`.
public enum AddressPrivacy {
    public static func isAddress(_ text: String) -> Bool { parse(text) != nil }

    /// "192.0.2.77" → "192.0.2.0/24", "2001:db8:1:2::5" → "2001:db8:1::/48"; nil for anything else.
    public static func truncate(_ text: String) -> String? {
        guard let (family, parsed) = parse(text) else { return nil }
        var bytes = parsed
        let kept = family == AF_INET ? 3 : 6
        for index in kept..<bytes.count { bytes[index] = 0 }
        var buffer = [CChar](repeating: 0, count: Int(INET6_ADDRSTRLEN) + 1)
        guard inet_ntop(family, bytes, &buffer, socklen_t(buffer.count)) != nil else { return nil }
        return String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self) + (family == AF_INET ? "/24" : "/48")
    }

    /// The form to store or log: the truncated network, or "unknown" for anything that is not an address.
    public static func redacted(_ text: String) -> String { truncate(text) ?? "unknown" }

    static func parse(_ text: String) -> (Int32, [UInt8])? {
        guard text.utf8.count <= 64, !text.contains("%") else { return nil }
        var v4 = [UInt8](repeating: 0, count: 4)
        if inet_pton(AF_INET, text, &v4) == 1 { return (AF_INET, v4) }
        var v6 = [UInt8](repeating: 0, count: 16)
        if inet_pton(AF_INET6, text, &v6) == 1 { return (AF_INET6, v6) }
        return nil
    }
}
