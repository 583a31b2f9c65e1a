/// How an `HTTPServer` listens. Plain HTTP is only accepted on loopback hosts; anything else needs both TLS files.
public struct HTTPServerConfiguration: Sendable {
    /// Numeric IPv4/IPv6 address to bind ("localhost" means 127.0.0.1).
    public var host: String = "127.0.0.1"
    /// 0 picks a free ephemeral port; read `HTTPServer.port` after `start()`.
    public var port: UInt16 = 0
    /// PEM certificate file. Both this and `tlsPrivateKeyPath` set -> HTTPS.
    public var tlsCertificatePath: String?
    /// PEM private key file (unencrypted).
    public var tlsPrivateKeyPath: String?
    /// Larger request bodies get 413 without reaching the handler.
    public var maxBodyBytes: Int = 1 << 20
    public var maxConnections: Int = 2048
    /// Idle connections are closed after this long; also bounds how long `shutdown()` waits for in-flight requests.
    public var connectionTimeoutSeconds: Int = 30
    /// Size of libmicrohttpd's I/O thread pool. With `handlerThreads == 0` handlers run inline on these threads, so
    /// this is also the handler concurrency, and a slow handler delays the other connections of its thread.
    public var threads: Int = 2
    /// 0 (default, fastest: about twice the single-connection request rate): handlers run inline on the I/O threads.
    /// N > 0: handlers run on N dedicated threads while the connection is suspended; use for handlers that may block.
    public var handlerThreads: Int = 0

    public init(host: String = "127.0.0.1", port: UInt16 = 0, tlsCertificatePath: String? = nil, tlsPrivateKeyPath: String? = nil,
                maxBodyBytes: Int = 1 << 20, maxConnections: Int = 2048, connectionTimeoutSeconds: Int = 30, threads: Int = 2,
                handlerThreads: Int = 0) {
        self.host = host
        self.port = port
        self.tlsCertificatePath = tlsCertificatePath
        self.tlsPrivateKeyPath = tlsPrivateKeyPath
        self.maxBodyBytes = maxBodyBytes
        self.maxConnections = maxConnections
        self.connectionTimeoutSeconds = connectionTimeoutSeconds
        self.threads = threads
        self.handlerThreads = handlerThreads
    }
}

/// A server setup or startup failure: what we were doing and why.
public struct HTTPServerError: Error, Sendable, CustomStringConvertible {
    public let operation: String
    public let message: String

    public init(operation: String, message: String) {
        self.operation = operation
        self.message = message
    }

    public var description: String { "HTTP server: \(operation) failed: \(message)" }
}
