/// How the server's host key is trusted. There is deliberately no "accept anything" case.
public enum SSHHostKeyPolicy: Sendable, Hashable {
    /// Trust exactly one key: the base64 SHA-256 of the host key as `ssh-keygen -lf` prints it after "SHA256:".
    /// A leading "SHA256:" and trailing '=' padding are tolerated.
    case pinnedSHA256(String)
    /// Trust keys listed in an OpenSSH known_hosts file (plain or hashed host names, `[host]:port` for non-22 ports).
    /// Lines libssh2 1.10 cannot parse (e.g. security-key types) are skipped, not fatal.
    case knownHosts(path: String)
}

/// Authentication material for the SSH login.
public enum SSHCredentials: Sendable, Hashable {
    /// An OpenSSH or PEM private key file (ed25519 or RSA). The public key is derived from it.
    /// Note: libssh2 1.10 signs RSA user auth with `ssh-rsa` (SHA-1) only; OpenSSH >= 8.8 servers need
    /// `PubkeyAcceptedAlgorithms +ssh-rsa` to accept that, so prefer ed25519 keys.
    case privateKeyFile(path: String, passphrase: String?)
    /// A password (callers read it from a file so it never appears in a process listing or config).
    case password(String)
}

/// Everything needed to open an SSH session to one server.
public struct SFTPConnectionOptions: Sendable, Hashable {
    public var host: String
    public var port: Int
    public var username: String
    public var hostKeyPolicy: SSHHostKeyPolicy
    public var credentials: SSHCredentials
    /// Bound on TCP connect plus SSH handshake and authentication.
    public var connectTimeout: Duration
    /// Bound on each individual libssh2 call (one request/response or one <= 1 MiB write window). A stalled
    /// server makes the operation fail with `.timeout` after at most this long; the session is unusable afterwards.
    public var operationTimeout: Duration
    /// SSH keepalive interval while the session is idle; nil disables keepalives.
    public var keepaliveInterval: Duration?

    public init(host: String, port: Int = 22, username: String, hostKeyPolicy: SSHHostKeyPolicy,
                credentials: SSHCredentials, connectTimeout: Duration = .seconds(15),
                operationTimeout: Duration = .seconds(60), keepaliveInterval: Duration? = .seconds(30)) {
        self.host = host
        self.port = port
        self.username = username
        self.hostKeyPolicy = hostKeyPolicy
        self.credentials = credentials
        self.connectTimeout = connectTimeout
        self.operationTimeout = operationTimeout
        self.keepaliveInterval = keepaliveInterval
    }

    /// "host:port", for messages.
    public var endpoint: String { host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)" }
}

/// The host key a server offered, for an explicit `trust` step before pinning.
public struct SSHHostKey: Sendable, Hashable {
    /// OpenSSH algorithm name, e.g. "ssh-ed25519".
    public let algorithm: String
    /// Base64 SHA-256 without padding, exactly as `ssh-keygen -lf` prints after "SHA256:".
    public let sha256Fingerprint: String
    /// The raw public key blob, base64 (the second field of a known_hosts line).
    public let publicKeyBase64: String

    public init(algorithm: String, sha256Fingerprint: String, publicKeyBase64: String) {
        self.algorithm = algorithm
        self.sha256Fingerprint = sha256Fingerprint
        self.publicKeyBase64 = publicKeyBase64
    }

    /// A line to append to a known_hosts file for `host`/`port`.
    public func knownHostsLine(host: String, port: Int) -> String {
        let name = port == 22 ? host : "[\(host)]:\(port)"
        return "\(name) \(algorithm) \(publicKeyBase64)"
    }
}
