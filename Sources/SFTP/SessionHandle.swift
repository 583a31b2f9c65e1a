import CSSH2
import Foundation
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// Owns the socket and the `LIBSSH2_SESSION*`, the lock that serializes every libssh2 call on them,
/// and the EAGAIN/poll() loop. Freed (disconnect, session_free, close) in deinit.
///
/// `@unchecked Sendable`: `raw` and `socket` are only used while `state` is locked (or in deinit).
final class SessionHandle: @unchecked Sendable {
    struct State {
        /// The error that broke the session (timeout or connection loss); later calls fail fast.
        var failure: SFTPError?
        var disconnected = false
        var usable: Bool { failure == nil && !disconnected }
    }

    let raw: OpaquePointer
    let socket: Int32
    let endpoint: String
    let operationTimeout: Duration
    private let state = Mutex(State())

    init(host: String, port: Int, connectTimeout: Duration, operationTimeout: Duration) throws {
        try LibSSH2Runtime.ensureInitialized()
        endpoint = host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)"
        let fd = try TCPConnector.connect(host: host, port: port, timeout: connectTimeout)
        guard let raw = libssh2_session_init_ex(nil, nil, nil, nil) else {
            close(fd)
            throw SFTPError(kind: .connection, operation: "create SSH session", path: endpoint, message: "libssh2_session_init_ex failed (out of memory?)")
        }
        libssh2_session_set_blocking(raw, 0)
        self.raw = raw
        self.socket = fd
        self.operationTimeout = operationTimeout
    }

    deinit {
        let usable = state.withLock { $0.usable }
        let deadline = ContinuousClock.now.advanced(by: min(operationTimeout, .seconds(2)))
        if usable {
            _ = try? call("disconnect", path: endpoint, deadline: deadline) {
                libssh2_session_disconnect_ex(raw, SSH_DISCONNECT_BY_APPLICATION, "closing", "")
            }
        }
        // With the socket shut down nothing in session_free can wait on the network.
        shutdown(socket, Int32(SHUT_RDWR))
        _ = try? call("free session", path: endpoint, deadline: deadline) { libssh2_session_free(raw) }
        close(socket)
    }

    // MARK: Serialization

    /// Runs `body` holding the session lock. A timeout or connection error marks the session broken.
    func locked<T>(_ operation: String, path: String?, _ body: () throws -> T) throws -> T {
        try state.withLock { (state: inout State) throws -> T in
            if let failure = state.failure {
                throw SFTPError(kind: .closed, operation: operation, path: path,
                                message: "the SSH session to \(endpoint) is unusable after an earlier failure (\(failure.message)); reconnect")
            }
            if state.disconnected {
                throw SFTPError(kind: .closed, operation: operation, path: path, message: "the SSH session to \(endpoint) was disconnected")
            }
            do {
                return try body()
            } catch let error as SFTPError where error.kind == .timeout || error.kind == .connection {
                state.failure = error
                shutdown(socket, Int32(SHUT_RDWR))
                throw error
            }
        }
    }

    /// Runs cleanup code (closing handles) holding the lock; `usable` says whether network calls make sense.
    func teardown(_ body: (_ usable: Bool) -> Void) {
        state.withLock { body($0.usable) }
    }

    /// Sends a keepalive if no packet went out for the configured interval; skipped while an operation runs
    /// (the connection is not idle then, and we must not block the timer thread on the lock).
    func sendKeepaliveIfIdle() {
        _ = state.withLockIfAvailable { (state: inout State) -> Void in
            guard state.usable else { return }
            var next: Int32 = 0
            do {
                let rc = try call("keepalive", path: endpoint) { libssh2_keepalive_send(raw, &next) }
                if rc < 0 { throw error(rc, "keepalive", path: endpoint) }
            } catch let error as SFTPError {
                state.failure = error
                shutdown(socket, Int32(SHUT_RDWR))
            } catch {}
        }
    }

    /// Gracefully ends the SSH connection; later calls fail with `.closed`.
    func disconnect() {
        state.withLock { state in
            guard state.usable else { return }
            let deadline = ContinuousClock.now.advanced(by: min(operationTimeout, .seconds(2)))
            _ = try? call("disconnect", path: endpoint, deadline: deadline) {
                libssh2_session_disconnect_ex(raw, SSH_DISCONNECT_BY_APPLICATION, "closing", "")
            }
            state.disconnected = true
            shutdown(socket, Int32(SHUT_RDWR))
        }
    }

    // MARK: EAGAIN handling (callers hold the lock)

    /// Repeats a libssh2 call returning an integer while it says EAGAIN, waiting on the socket in between.
    /// libssh2 requires the identical call to be repeated after EAGAIN, which is what `body` does.
    func call<R: BinaryInteger>(_ operation: String, path: String?, deadline: ContinuousClock.Instant? = nil,
                                _ body: () -> R) throws -> R {
        let deadline = deadline ?? ContinuousClock.now.advanced(by: operationTimeout)
        while true {
            let rc = body()
            if rc != R(LIBSSH2_ERROR_EAGAIN) { return rc }
            try waitForSocket(operation, path: path, deadline: deadline)
        }
    }

    /// Like `call` for libssh2 functions returning a pointer (NULL + last_errno EAGAIN means "again").
    /// Returns nil on a real failure; build the error with `error(lastErrno, ...)`.
    func callPointer<P>(_ operation: String, path: String?, deadline: ContinuousClock.Instant? = nil,
                        _ body: () -> P?) throws -> P? {
        let deadline = deadline ?? ContinuousClock.now.advanced(by: operationTimeout)
        while true {
            if let pointer = body() { return pointer }
            guard libssh2_session_last_errno(raw) == LIBSSH2_ERROR_EAGAIN else { return nil }
            try waitForSocket(operation, path: path, deadline: deadline)
        }
    }

    var lastErrno: Int32 { libssh2_session_last_errno(raw) }

    private func waitForSocket(_ operation: String, path: String?, deadline: ContinuousClock.Instant) throws {
        let directions = libssh2_session_block_directions(raw)
        var events: Int16 = 0
        if directions & LIBSSH2_SESSION_BLOCK_INBOUND != 0 { events |= Int16(POLLIN) }
        if directions & LIBSSH2_SESSION_BLOCK_OUTBOUND != 0 { events |= Int16(POLLOUT) }
        if events == 0 { events = Int16(POLLIN) }
        switch Poller.wait(fd: socket, events: events, deadline: deadline) {
        case .ready:
            return
        case .timedOut:
            throw SFTPError(kind: .timeout, operation: operation, path: path,
                            message: "no progress from \(endpoint) within the timeout (operation timeout \(operationTimeout)); the server or network is stalled", libssh2Code: LIBSSH2_ERROR_TIMEOUT)
        case .failed(let err):
            throw SFTPError(kind: .connection, operation: operation, path: path,
                            message: "poll() on the connection to \(endpoint) failed: \(String(cString: strerror(err)))")
        }
    }

    // MARK: Errors

    /// Builds an error from a negative libssh2 return code, with libssh2's message and, for SFTP status
    /// failures, the server's status code.
    func error(_ code: Int32, _ operation: String, path: String?, sftp: OpaquePointer? = nil, kind: SFTPError.Kind? = nil) -> SFTPError {
        var messagePointer: UnsafeMutablePointer<CChar>?
        var length: Int32 = 0
        _ = libssh2_session_last_error(raw, &messagePointer, &length, 0)
        let libMessage = messagePointer.map {
            String(decoding: UnsafeRawBufferPointer(start: $0, count: Int(length)), as: UTF8.self)
        } ?? "libssh2 error \(code)"
        if code == LIBSSH2_ERROR_SFTP_PROTOCOL, let sftp {
            let status = SFTPStatus(rawValue: libssh2_sftp_last_error(sftp))
            return SFTPError(kind: kind ?? .server, operation: operation, path: path,
                             message: "\(Self.explain(status)) (libssh2: \(libMessage))", libssh2Code: code, status: status)
        }
        let derived: SFTPError.Kind
        switch code {
        case LIBSSH2_ERROR_TIMEOUT, LIBSSH2_ERROR_SOCKET_TIMEOUT: derived = .timeout
        case LIBSSH2_ERROR_INVAL, LIBSSH2_ERROR_BUFFER_TOO_SMALL, LIBSSH2_ERROR_BAD_USE, LIBSSH2_ERROR_OUT_OF_BOUNDARY: derived = .invalidArgument
        default: derived = .connection
        }
        let suffix = derived == .connection ? " (connection to \(endpoint) lost or unusable)" : ""
        return SFTPError(kind: kind ?? derived, operation: operation, path: path, message: libMessage + suffix, libssh2Code: code)
    }

    func check(_ rc: Int32, _ operation: String, path: String?, sftp: OpaquePointer? = nil) throws {
        if rc < 0 { throw error(rc, operation, path: path, sftp: sftp) }
    }

    private static func explain(_ status: SFTPStatus) -> String {
        switch status {
        case .noSuchFile, .noSuchPath: return "no such file or directory"
        case .permissionDenied: return "permission denied by the server"
        case .failure: return "the server reported a failure (OpenSSH uses this e.g. for 'already exists' or 'directory not empty')"
        case .operationUnsupported: return "the server does not support this operation"
        case .noSpaceOnFilesystem: return "no space left on the server's filesystem"
        case .quotaExceeded: return "quota exceeded on the server"
        case .fileAlreadyExists: return "the target already exists"
        case .writeProtect: return "the server's filesystem is write-protected"
        default: return "the server returned \(status.name)"
        }
    }
}
