import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// Opens a non-blocking TCP connection with a deadline (getaddrinfo, then each address in turn).
enum TCPConnector {
    static func connect(host: String, port: Int, timeout: Duration) throws -> Int32 {
        let endpoint = host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)"
        guard (1...65535).contains(port) else {
            throw SFTPError(kind: .invalidArgument, operation: "connect", path: endpoint, message: "port \(port) is out of range 1-65535")
        }
        let deadline = ContinuousClock.now.advanced(by: timeout)
        var hints = addrinfo()
        hints.ai_family = AF_UNSPEC
        hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
        var list: UnsafeMutablePointer<addrinfo>?
        let rc = getaddrinfo(host, String(port), &hints, &list)
        guard rc == 0, let first = list else {
            throw SFTPError(kind: .connect, operation: "resolve host", path: endpoint, message: String(cString: gai_strerror(rc)))
        }
        defer { freeaddrinfo(first) }
        var lastError = "no addresses"
        var cursor: UnsafeMutablePointer<addrinfo>? = first
        while let info = cursor {
            cursor = info.pointee.ai_next
            let fd = socket(info.pointee.ai_family, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_NONBLOCK.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
            if fd < 0 { lastError = String(cString: strerror(errno)); continue }
            if Glibc.connect(fd, info.pointee.ai_addr, info.pointee.ai_addrlen) == 0 {
                configure(fd)
                return fd
            }
            guard errno == EINPROGRESS else { lastError = String(cString: strerror(errno)); close(fd); continue }
            switch Poller.wait(fd: fd, events: Int16(POLLOUT), deadline: deadline) {
            case .ready:
                var soError: Int32 = 0
                var len = socklen_t(MemoryLayout<Int32>.size)
                getsockopt(fd, SOL_SOCKET, SO_ERROR, &soError, &len)
                if soError == 0 { configure(fd); return fd }
                lastError = String(cString: strerror(soError))
                close(fd)
            case .timedOut:
                close(fd)
                throw SFTPError(kind: .timeout, operation: "connect", path: endpoint,
                                message: "no TCP connection within \(timeout)")
            case .failed(let err):
                lastError = String(cString: strerror(err))
                close(fd)
            }
        }
        throw SFTPError(kind: .connect, operation: "connect", path: endpoint, message: lastError)
    }

    /// Small SFTP requests are latency-bound, so Nagle only hurts.
    private static func configure(_ fd: Int32) {
        var one: Int32 = 1
        setsockopt(fd, Int32(IPPROTO_TCP), TCP_NODELAY, &one, socklen_t(MemoryLayout<Int32>.size))
    }
}

/// poll() on one descriptor until a deadline, retrying on EINTR.
enum Poller {
    enum Outcome { case ready, timedOut, failed(Int32) }

    static func wait(fd: Int32, events: Int16, deadline: ContinuousClock.Instant) -> Outcome {
        while true {
            let remaining = ContinuousClock.now.duration(to: deadline)
            if remaining <= .zero { return .timedOut }
            let (seconds, attoseconds) = remaining.components
            // Round up so we never spin on a sub-millisecond remainder.
            let ms = min(Int64(Int32.max), seconds * 1000 + (attoseconds + 999_999_999_999_999) / 1_000_000_000_000_000)
            var pfd = pollfd(fd: fd, events: events, revents: 0)
            let rc = poll(&pfd, 1, Int32(ms))
            if rc > 0 { return .ready }   // POLLERR/POLLHUP also count: the next call reports the actual error
            if rc == 0 { continue }       // loop re-checks the deadline
            if errno == EINTR { continue }
            return .failed(errno)
        }
    }
}
