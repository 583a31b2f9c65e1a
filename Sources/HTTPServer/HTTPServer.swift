import CMicroHTTPD
// Linked for its MHD_create_response_from_buffer, which turns libmicrohttpd's own HTML errors into JSON.
import CMicroHTTPDErrorBodies
import Foundation
import Synchronization

/// An HTTP/1.1 (optionally TLS) server on libmicrohttpd with a pool of `configuration.threads` epoll I/O threads.
/// Handlers run inline on those threads (fastest), or with `handlerThreads > 0` on a separate pool while the
/// request's connection is suspended, so a slow handler never stalls the other connections of its I/O thread.
///
/// `@unchecked Sendable`: the daemon pointer and PEM buffers are only touched under `state`'s lock (start/shutdown/deinit);
/// libmicrohttpd itself is thread-safe for these calls, and request handling state lives in the Sendable dispatcher.
public final class HTTPServer: @unchecked Sendable {
    private struct State {
        var daemon: OpaquePointer?
        var port: UInt16 = 0
        var started = false
    }

    private let configuration: HTTPServerConfiguration
    private let bindAddress: BindAddress
    private let dispatcher: RequestDispatcher
    /// strdup'ed PEM texts handed to libmicrohttpd; freed in deinit after the daemon is stopped.
    private let certificatePEM: UnsafeMutablePointer<CChar>?
    private let privateKeyPEM: UnsafeMutablePointer<CChar>?
    private let state = Mutex(State())

    /// Validates the configuration and loads TLS files. Throws for plain HTTP on a non-loopback host, a missing
    /// or unreadable TLS file, or only one of certificate/key given.
    public init(configuration: HTTPServerConfiguration, router: Router) throws {
        self.configuration = configuration
        bindAddress = try BindAddress(host: configuration.host, port: configuration.port)
        guard configuration.threads >= 1, configuration.maxConnections >= 1, configuration.maxBodyBytes >= 0,
              configuration.connectionTimeoutSeconds >= 0, configuration.handlerThreads >= 0 else {
            throw HTTPServerError(operation: "validating configuration",
                                  message: "threads and maxConnections must be >= 1; maxBodyBytes, connectionTimeoutSeconds and handlerThreads >= 0")
        }
        switch (configuration.tlsCertificatePath, configuration.tlsPrivateKeyPath) {
        case let (certificatePath?, keyPath?):
            let certificate = try Self.readPEM(certificatePath, what: "TLS certificate")
            let key = try Self.readPEM(keyPath, what: "TLS private key")
            certificatePEM = strdup(certificate)
            privateKeyPEM = strdup(key)
        case (nil, nil):
            guard bindAddress.isLoopback else {
                throw HTTPServerError(operation: "configuring listener on \(configuration.host)",
                                      message: "refusing plain HTTP on a non-loopback host; set tlsCertificatePath and tlsPrivateKeyPath")
            }
            certificatePEM = nil
            privateKeyPEM = nil
        default:
            throw HTTPServerError(operation: "configuring TLS",
                                  message: "tlsCertificatePath and tlsPrivateKeyPath must be set together")
        }
        dispatcher = RequestDispatcher(router: router, maxBodyBytes: configuration.maxBodyBytes,
                                       handlerThreads: configuration.handlerThreads)
    }

    deinit {
        shutdown()
        free(certificatePEM)
        free(privateKeyPEM)
    }

    /// Binds and starts serving. Throws if the address is in use, TLS material is rejected, or already started.
    public func start() throws {
        try state.withLock { state in
            guard !state.started else {
                throw HTTPServerError(operation: "starting", message: "server was already started")
            }
            var flags = MHD_USE_INTERNAL_POLLING_THREAD.rawValue | MHD_USE_EPOLL.rawValue | MHD_USE_ITC.rawValue
                | MHD_USE_ERROR_LOG.rawValue | MHD_USE_TURBO.rawValue
            // Always: deferred routes (long polls) suspend their connection even without a handler pool.
            flags |= MHD_ALLOW_SUSPEND_RESUME.rawValue
            if certificatePEM != nil { flags |= MHD_USE_TLS.rawValue }
            if bindAddress.isIPv6 { flags |= MHD_USE_IPv6.rawValue }
            let context = Unmanaged.passUnretained(dispatcher).toOpaque()
            dispatcher.log("")
            dispatcher.startHandlers(threads: configuration.handlerThreads)
            let daemon = bindAddress.storage.withUnsafeBytes { raw in
                fk_mhd_start_daemon(
                    UInt32(flags), raw.baseAddress!.assumingMemoryBound(to: sockaddr.self),
                    MHDCallbacks.acceptPolicy, context, MHDCallbacks.access, context, MHDCallbacks.completed, context, MHDCallbacks.log, context,
                    UInt32(clamping: configuration.threads), UInt32(clamping: configuration.maxConnections),
                    UInt32(clamping: configuration.connectionTimeoutSeconds), 32 * 1024,
                    certificatePEM, privateKeyPEM)
            }
            guard let daemon else {
                dispatcher.stopHandlers()
                let reason = dispatcher.lastLogMessage.withLock { $0 }
                let scheme = certificatePEM == nil ? "http" : "https"
                throw HTTPServerError(operation: "starting \(scheme) listener on \(configuration.host):\(configuration.port)",
                                      message: reason.isEmpty ? "MHD_start_daemon failed (errno \(errno): \(String(cString: strerror(errno))))" : reason)
            }
            state.daemon = daemon
            state.port = fk_mhd_bound_port(daemon)
            state.started = true
        }
    }

    /// The bound port after `start()` (the chosen one when configured with 0); 0 before start.
    public var port: UInt16 { state.withLock { $0.port } }

    /// Stops accepting connections, waits (at most `connectionTimeoutSeconds`) for requests already received to be
    /// answered, then stops the daemon and closes idle keep-alive connections. Safe to call more than once.
    public func shutdown() {
        let daemon: OpaquePointer? = state.withLock { state in
            let daemon = state.daemon
            state.daemon = nil
            return daemon
        }
        guard let daemon else { return }
        // Not MHD_quiesce_daemon: on an epoll daemon with a thread pool, libmicrohttpd 0.9.75 races a woken worker
        // to remove the listening socket from its epoll set, and the loser aborts the process. Connections that
        // arrive from now on are closed as soon as they are accepted instead.
        dispatcher.acceptingConnections.store(false, ordering: .sequentiallyConsistent)
        // Long polls would wait for work that will not come: answer them now (and again below, for any that arrived
        // on a kept-alive connection in between).
        for responder in dispatcher.outstanding.withLock({ Array($0.values) }) { responder.respond(.error(503, "server is shutting down")) }
        let deadline = ContinuousClock.now + .seconds(configuration.connectionTimeoutSeconds)
        while dispatcher.inFlight.load(ordering: .relaxed) > 0 && ContinuousClock.now < deadline {
            usleep(2_000)
        }
        // Stopping libmicrohttpd with a suspended connection is undefined behaviour, so running handlers are
        // always waited for, even past the deadline.
        dispatcher.stopping.store(true, ordering: .sequentiallyConsistent)
        // Long polls would wait for work that will not come: answer them now.
        for responder in dispatcher.outstanding.withLock({ Array($0.values) }) { responder.respond(.error(503, "server is shutting down")) }
        while dispatcher.suspended.load(ordering: .sequentiallyConsistent) > 0 { usleep(2_000) }
        MHD_stop_daemon(daemon)
        dispatcher.stopHandlers()
    }

    private static func readPEM(_ path: String, what: String) throws -> String {
        let text: String
        do {
            text = try String(contentsOfFile: path, encoding: .utf8)
        } catch {
            throw HTTPServerError(operation: "reading \(what) \(path)", message: "\(error.localizedDescription)")
        }
        guard text.contains("-----BEGIN ") else {
            throw HTTPServerError(operation: "reading \(what) \(path)", message: "file is not PEM (no -----BEGIN line)")
        }
        return text
    }
}
