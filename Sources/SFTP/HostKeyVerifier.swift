import CSSH2
import Foundation

/// Checks the key a server offered against an `SSHHostKeyPolicy`, producing errors that say what to do.
enum HostKeyVerifier {
    /// Normalizes a pin: drops a "SHA256:" prefix, surrounding spaces and base64 padding.
    static func normalizedPin(_ pin: String) -> String {
        var text = pin.trimmingCharacters(in: .whitespaces)
        if text.hasPrefix("SHA256:") { text.removeFirst("SHA256:".count) }
        while text.hasSuffix("=") { text.removeLast() }
        return text
    }

    static func verify(_ key: SSHHostKey, rawKey: [UInt8], keyType: Int32, policy: SSHHostKeyPolicy,
                       host: String, port: Int, session: OpaquePointer) throws {
        let endpoint = host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)"
        switch policy {
        case .pinnedSHA256(let pin):
            let expected = normalizedPin(pin)
            // 32 bytes of SHA-256 are 43 base64 characters without padding.
            guard expected.count == 43, Data(base64Encoded: expected + "=") != nil else {
                throw SFTPError(kind: .invalidArgument, operation: "verify host key", path: endpoint,
                                message: "the pinned fingerprint '\(pin)' is not a SHA-256 fingerprint (expected 43 base64 characters as printed by `ssh-keygen -lf` after 'SHA256:')")
            }
            if expected != key.sha256Fingerprint {
                throw SFTPError(kind: .hostKey, operation: "verify host key", path: endpoint,
                                message: "HOST KEY MISMATCH for \(endpoint): the server offered \(key.algorithm) key SHA256:\(key.sha256Fingerprint) but the pinned key is SHA256:\(expected). Someone may be intercepting the connection, or the server's key was replaced. Verify the fingerprint on the server (`ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub`) and only then update the pin.")
            }
        case .knownHosts(let path):
            try verifyKnownHosts(key, rawKey: rawKey, keyType: keyType, path: path, host: host, port: port, endpoint: endpoint, session: session)
        }
    }

    private static func verifyKnownHosts(_ key: SSHHostKey, rawKey: [UInt8], keyType: Int32, path: String,
                                         host: String, port: Int, endpoint: String, session: OpaquePointer) throws {
        guard let contents = FileManager.default.contents(atPath: path) else {
            throw SFTPError(kind: .hostKey, operation: "verify host key", path: endpoint,
                            message: "cannot read known_hosts file \(path). The server \(endpoint) offered \(key.algorithm) key SHA256:\(key.sha256Fingerprint); after verifying it out of band, add this line to \(path): \(key.knownHostsLine(host: host, port: port))")
        }
        guard let hosts = libssh2_knownhost_init(session) else {
            throw SFTPError(kind: .connection, operation: "verify host key", path: endpoint, message: "libssh2_knownhost_init failed")
        }
        defer { libssh2_knownhost_free(hosts) }
        // Line by line, because libssh2_knownhost_readfile gives up on the first line it cannot parse
        // (e.g. sk-ssh-ed25519 or @cert-authority entries), which would hide every valid entry after it.
        for line in String(decoding: contents, as: UTF8.self).split(whereSeparator: \.isNewline) {
            let text = line.trimmingCharacters(in: .whitespaces)
            if text.isEmpty || text.hasPrefix("#") { continue }
            _ = text.withCString { libssh2_knownhost_readline(hosts, $0, strlen($0), LIBSSH2_KNOWNHOST_FILE_OPENSSH) }
        }
        let typeMask = LIBSSH2_KNOWNHOST_TYPE_PLAIN | LIBSSH2_KNOWNHOST_KEYENC_RAW | knownHostKeyType(keyType)
        let result = rawKey.withUnsafeBufferPointer { buffer in
            buffer.withMemoryRebound(to: CChar.self) {
                libssh2_knownhost_checkp(hosts, host, Int32(port), $0.baseAddress, $0.count, typeMask, nil)
            }
        }
        switch result {
        case LIBSSH2_KNOWNHOST_CHECK_MATCH:
            return
        case LIBSSH2_KNOWNHOST_CHECK_MISMATCH:
            throw SFTPError(kind: .hostKey, operation: "verify host key", path: endpoint,
                            message: "HOST KEY CHANGED for \(endpoint): the server offered \(key.algorithm) key SHA256:\(key.sha256Fingerprint), which differs from the entry in \(path). Someone may be intercepting the connection, or the server's key was replaced. Verify the fingerprint on the server and, only if it is genuine, replace the entry with: \(key.knownHostsLine(host: host, port: port))")
        case LIBSSH2_KNOWNHOST_CHECK_NOTFOUND:
            throw SFTPError(kind: .hostKey, operation: "verify host key", path: endpoint,
                            message: "UNKNOWN HOST \(endpoint): no \(key.algorithm) key for it in \(path). The server offered SHA256:\(key.sha256Fingerprint); verify it on the server (`ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub`), then add this line to \(path): \(key.knownHostsLine(host: host, port: port))")
        default:
            throw SFTPError(kind: .hostKey, operation: "verify host key", path: endpoint,
                            message: "libssh2 could not check the host key against \(path)")
        }
    }

    private static func knownHostKeyType(_ hostKeyType: Int32) -> Int32 {
        switch hostKeyType {
        case LIBSSH2_HOSTKEY_TYPE_RSA: return LIBSSH2_KNOWNHOST_KEY_SSHRSA
        case LIBSSH2_HOSTKEY_TYPE_DSS: return LIBSSH2_KNOWNHOST_KEY_SSHDSS
        case LIBSSH2_HOSTKEY_TYPE_ECDSA_256: return LIBSSH2_KNOWNHOST_KEY_ECDSA_256
        case LIBSSH2_HOSTKEY_TYPE_ECDSA_384: return LIBSSH2_KNOWNHOST_KEY_ECDSA_384
        case LIBSSH2_HOSTKEY_TYPE_ECDSA_521: return LIBSSH2_KNOWNHOST_KEY_ECDSA_521
        case LIBSSH2_HOSTKEY_TYPE_ED25519: return LIBSSH2_KNOWNHOST_KEY_ED25519
        default: return LIBSSH2_KNOWNHOST_KEY_UNKNOWN
        }
    }

    static func algorithmName(_ hostKeyType: Int32) -> String {
        switch hostKeyType {
        case LIBSSH2_HOSTKEY_TYPE_RSA: return "ssh-rsa"
        case LIBSSH2_HOSTKEY_TYPE_DSS: return "ssh-dss"
        case LIBSSH2_HOSTKEY_TYPE_ECDSA_256: return "ecdsa-sha2-nistp256"
        case LIBSSH2_HOSTKEY_TYPE_ECDSA_384: return "ecdsa-sha2-nistp384"
        case LIBSSH2_HOSTKEY_TYPE_ECDSA_521: return "ecdsa-sha2-nistp521"
        case LIBSSH2_HOSTKEY_TYPE_ED25519: return "ssh-ed25519"
        default: return "unknown"
        }
    }
}
