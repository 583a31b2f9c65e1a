import Foundation

/// Sends raw bytes to a loopback TCP port and returns everything the peer sends back until it closes (or the
/// timeout). For requests no HTTP client would produce: malformed request lines, bad Content-Length, bytes that
/// are not UTF-8.
public enum RawSocket {
    public static func exchange(port: Int, _ request: [UInt8], timeoutSeconds: Int = 5) throws -> [UInt8] {
        let socketFD = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard socketFD >= 0 else { throw TestFailure("socket: errno \(errno)") }
        defer { close(socketFD) }
        var timeout = timeval(tv_sec: timeoutSeconds, tv_usec: 0)
        setsockopt(socketFD, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = in_port_t(UInt16(port).bigEndian)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        let connected = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(socketFD, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        guard connected == 0 else { throw TestFailure("connect to 127.0.0.1:\(port): errno \(errno)") }
        var sent = 0
        while sent < request.count {
            let written = request[sent...].withUnsafeBytes { send(socketFD, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
            guard written > 0 else { break }  // the server may answer and close before reading everything
            sent += written
        }
        var reply: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 65536)
        while true {
            let count = buffer.withUnsafeMutableBytes { recv(socketFD, $0.baseAddress, $0.count, 0) }
            guard count > 0 else { break }
            reply.append(contentsOf: buffer[0..<count])
        }
        return reply
    }

    /// The status code and body of a raw HTTP/1.1 reply (headers dropped), or nil when it is not one.
    public static func parse(_ reply: [UInt8]) -> (status: Int, headers: String, body: [UInt8])? {
        let text = reply
        guard let end = (0..<max(text.count - 3, 0)).first(where: { text[$0] == 13 && text[$0 + 1] == 10 && text[$0 + 2] == 13 && text[$0 + 3] == 10 }) else { return nil }
        let head = String(decoding: text[0..<end], as: UTF8.self)
        let parts = head.split(separator: " ", maxSplits: 2)
        guard parts.count >= 2, let status = Int(parts[1]) else { return nil }
        let body = Array(text[(end + 4)...])
        // libmicrohttpd 0.9.75 writes its status line and headers twice when it refuses a Content-Length it cannot
        // parse (its own defect, fixed upstream later); the body after the second copy is the real one.
        if body.starts(with: Array("HTTP/1.1 ".utf8)), let repeated = parse(body) { return repeated }
        return (status, head, body)
    }
}
