import CSSH2
import Dispatch
import Foundation

/// One authenticated SSH connection: a TCP socket plus a non-blocking `LIBSSH2_SESSION`.
///
/// libssh2 sessions are not thread-safe, so every libssh2 call on this session (and on its `SFTPSession`
/// and `SFTPFile` children) is serialized by one lock. Whenever libssh2 says EAGAIN we poll() the socket
/// in the direction `libssh2_session_block_directions` reports, bounded by the operation timeout (never a
/// busy loop). After a timeout or a connection error the session is broken: its socket is shut down and
/// every later call fails fast with kind `.closed`, because libssh2's state is undefined mid-packet.
/// While idle, a timer sends SSH keepalives (`libssh2_keepalive_send`) at the configured interval.
///
/// `@unchecked Sendable`: all libssh2 access goes through `SessionHandle`, which serializes it with a Mutex.
public final class SSHSession: @unchecked Sendable {
    let handle: SessionHandle
    /// "host:port", for messages.
    public var endpoint: String { handle.endpoint }
    /// The login name used to authenticate.
    public let username: String
    /// The host key the server presented, already verified against the policy.
    public let hostKey: SSHHostKey
    private let keepaliveTimer: (any DispatchSourceTimer)?

    /// Connects, verifies the host key against `options.hostKeyPolicy`, and authenticates.
    /// Throws `SFTPError` with kind `.connect`, `.timeout`, `.hostKey`, `.authentication` or `.invalidArgument`.
    public init(options: SFTPConnectionOptions) throws {
        let deadline = ContinuousClock.now.advanced(by: options.connectTimeout)
        let handle = try SessionHandle(host: options.host, port: options.port, connectTimeout: options.connectTimeout,
                                       operationTimeout: options.operationTimeout)
        let key = try handle.locked("SSH handshake", path: handle.endpoint) { () throws -> SSHHostKey in
            let (key, rawKey, keyType) = try Self.handshake(handle, deadline: deadline)
            try HostKeyVerifier.verify(key, rawKey: rawKey, keyType: keyType, policy: options.hostKeyPolicy,
                                       host: options.host, port: options.port, session: handle.raw)
            try Self.authenticate(handle, username: options.username, credentials: options.credentials, deadline: deadline)
            if let interval = options.keepaliveInterval {
                libssh2_keepalive_config(handle.raw, 1, UInt32(max(1, interval.components.seconds)))
            }
            return key
        }
        self.handle = handle
        self.username = options.username
        self.hostKey = key
        if let interval = options.keepaliveInterval {
            let timer = DispatchSource.makeTimerSource(queue: .global(qos: .utility))
            let ms = Int(max(1, interval.components.seconds)) * 1000
            timer.schedule(deadline: .now() + .milliseconds(ms), repeating: .milliseconds(ms), leeway: .milliseconds(ms / 10))
            timer.setEventHandler { [weak handle] in handle?.sendKeepaliveIfIdle() }
            timer.resume()
            keepaliveTimer = timer
        } else {
            keepaliveTimer = nil
        }
    }

    deinit { keepaliveTimer?.cancel() }

    /// Connects and completes the key exchange only, returning the server's host key without authenticating.
    /// For an explicit, operator-confirmed `trust` step; never pin what this returns without that confirmation.
    public static func fetchHostKey(host: String, port: Int = 22, timeout: Duration = .seconds(15)) throws -> SSHHostKey {
        let deadline = ContinuousClock.now.advanced(by: timeout)
        let handle = try SessionHandle(host: host, port: port, connectTimeout: timeout, operationTimeout: timeout)
        let key = try handle.locked("SSH handshake", path: handle.endpoint) { try handshake(handle, deadline: deadline).0 }
        handle.disconnect()
        return key
    }

    /// Gracefully disconnects. Later calls on this session or its children fail with kind `.closed`.
    public func disconnect() {
        keepaliveTimer?.cancel()
        handle.disconnect()
    }

    // MARK: Connection steps (lock held)

    private static func handshake(_ handle: SessionHandle, deadline: ContinuousClock.Instant) throws -> (SSHHostKey, [UInt8], Int32) {
        let raw = handle.raw, fd = handle.socket
        // Prefer ed25519 like current OpenSSH clients, so the fingerprint is the one an operator gets from
        // `ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub` (libssh2 1.10 would otherwise pick ECDSA first).
        _ = libssh2_session_method_pref(raw, LIBSSH2_METHOD_HOSTKEY,
                                        "ssh-ed25519,ecdsa-sha2-nistp256,ecdsa-sha2-nistp384,ecdsa-sha2-nistp521,ssh-rsa")
        let rc = try handle.call("SSH handshake", path: handle.endpoint, deadline: deadline) { libssh2_session_handshake(raw, fd) }
        try handle.check(rc, "SSH handshake", path: handle.endpoint)
        var length = 0
        var type: Int32 = 0
        guard let keyPointer = libssh2_session_hostkey(raw, &length, &type),
              let hash = libssh2_hostkey_hash(raw, LIBSSH2_HOSTKEY_HASH_SHA256) else {
            throw handle.error(handle.lastErrno, "read host key", path: handle.endpoint)
        }
        let rawKey = [UInt8](UnsafeRawBufferPointer(start: keyPointer, count: length))
        var fingerprint = Data(bytes: hash, count: 32).base64EncodedString()
        while fingerprint.hasSuffix("=") { fingerprint.removeLast() }
        let key = SSHHostKey(algorithm: HostKeyVerifier.algorithmName(type), sha256Fingerprint: fingerprint,
                             publicKeyBase64: Data(rawKey).base64EncodedString())
        return (key, rawKey, type)
    }

    private static func authenticate(_ handle: SessionHandle, username: String, credentials: SSHCredentials,
                                     deadline: ContinuousClock.Instant) throws {
        let raw = handle.raw
        let operation = "authenticate"
        let who = "\(username)@\(handle.endpoint)"
        let userLength = UInt32(username.utf8.count)
        guard !username.isEmpty, !username.utf8.contains(0) else {
            throw SFTPError(kind: .invalidArgument, operation: operation, path: who, message: "the user name is empty or contains NUL")
        }
        let list = try handle.callPointer(operation, path: who, deadline: deadline) {
            libssh2_userauth_list(raw, username, userLength)
        }
        guard let list else {
            if libssh2_userauth_authenticated(raw) != 0 { return }   // the server accepted "none"
            throw handle.error(handle.lastErrno, operation, path: who, kind: .authentication)
        }
        let methods = String(cString: list)
        let offered = methods.split(separator: ",").map(String.init)
        switch credentials {
        case .privateKeyFile(let keyPath, let passphrase):
            guard offered.contains("publickey") else {
                throw SFTPError(kind: .authentication, operation: operation, path: who,
                                message: "the server does not accept public-key login for \(username) (it offers: \(methods))")
            }
            guard FileManager.default.isReadableFile(atPath: keyPath) else {
                throw SFTPError(kind: .authentication, operation: operation, path: who,
                                message: "private key file \(keyPath) does not exist or is not readable")
            }
            let rc = try handle.call(operation, path: who, deadline: deadline) {
                libssh2_userauth_publickey_fromfile_ex(raw, username, userLength, nil, keyPath, passphrase)
            }
            guard rc != 0 else { return }
            let base = handle.error(rc, operation, path: who, kind: .authentication)
            let message: String
            switch rc {
            case LIBSSH2_ERROR_FILE:
                message = "cannot use private key file \(keyPath): wrong passphrase or unsupported key format (\(base.message))"
            case LIBSSH2_ERROR_PUBLICKEY_UNVERIFIED, LIBSSH2_ERROR_AUTHENTICATION_FAILED:
                message = "the server rejected key \(keyPath) for user \(username): add its public key to the server's authorized_keys (RSA keys also need `PubkeyAcceptedAlgorithms +ssh-rsa` on OpenSSH >= 8.8, since libssh2 1.10 signs with SHA-1) (\(base.message))"
            default:
                throw handle.error(rc, operation, path: who)   // connection-level failure during auth
            }
            throw SFTPError(kind: .authentication, operation: operation, path: who, message: message, libssh2Code: rc)
        case .password(let password):
            guard offered.contains("password") else {
                throw SFTPError(kind: .authentication, operation: operation, path: who,
                                message: "the server does not accept password login for \(username) (it offers: \(methods))")
            }
            let rc = try handle.call(operation, path: who, deadline: deadline) {
                libssh2_userauth_password_ex(raw, username, userLength, password, UInt32(password.utf8.count), nil)
            }
            guard rc != 0 else { return }
            switch rc {
            case LIBSSH2_ERROR_AUTHENTICATION_FAILED, LIBSSH2_ERROR_PASSWORD_EXPIRED:
                let base = handle.error(rc, operation, path: who, kind: .authentication)
                throw SFTPError(kind: .authentication, operation: operation, path: who,
                                message: "the server rejected the password for user \(username) (\(base.message))", libssh2Code: rc)
            default:
                throw handle.error(rc, operation, path: who)
            }
        }
    }
}
