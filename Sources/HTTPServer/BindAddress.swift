import Foundation

/// A numeric socket address to bind, kept as raw sockaddr bytes for libmicrohttpd.
struct BindAddress: Sendable {
    let storage: [UInt8]
    let isIPv6: Bool
    let isLoopback: Bool

    /// Parses a numeric IPv4/IPv6 host ("localhost" is 127.0.0.1); names are rejected so we never bind somewhere unexpected.
    init(host: String, port: UInt16) throws {
        let literal = host == "localhost" ? "127.0.0.1" : host
        var v4 = in_addr()
        var v6 = in6_addr()
        if inet_pton(AF_INET, literal, &v4) == 1 {
            var address = sockaddr_in()
            address.sin_family = sa_family_t(AF_INET)
            address.sin_port = port.bigEndian
            address.sin_addr = v4
            storage = withUnsafeBytes(of: &address) { Array($0) }
            isIPv6 = false
            isLoopback = (UInt32(bigEndian: v4.s_addr) >> 24) == 127
        } else if inet_pton(AF_INET6, literal, &v6) == 1 {
            var address = sockaddr_in6()
            address.sin6_family = sa_family_t(AF_INET6)
            address.sin6_port = port.bigEndian
            address.sin6_addr = v6
            storage = withUnsafeBytes(of: &address) { Array($0) }
            isIPv6 = true
            let bytes = withUnsafeBytes(of: &v6) { Array($0) }
            isLoopback = bytes == [UInt8](repeating: 0, count: 15) + [1]
        } else {
            throw HTTPServerError(operation: "parsing listen host '\(host)'",
                                  message: "not a numeric IPv4 or IPv6 address (use e.g. 127.0.0.1, 0.0.0.0 or ::)")
        }
    }

    /// Renders a peer address as text ("" if unknown).
    static func describe(_ address: UnsafePointer<sockaddr>?) -> String {
        guard let address else { return "" }
        var text = [CChar](repeating: 0, count: Int(INET6_ADDRSTRLEN) + 1)
        let ok: Bool
        switch Int32(address.pointee.sa_family) {
        case AF_INET:
            ok = address.withMemoryRebound(to: sockaddr_in.self, capacity: 1) { v4 in
                var a = v4.pointee.sin_addr
                return inet_ntop(AF_INET, &a, &text, socklen_t(text.count)) != nil
            }
        case AF_INET6:
            ok = address.withMemoryRebound(to: sockaddr_in6.self, capacity: 1) { v6 in
                var a = v6.pointee.sin6_addr
                return inet_ntop(AF_INET6, &a, &text, socklen_t(text.count)) != nil
            }
        default:
            ok = false
        }
        guard ok else { return "" }
        return text.withUnsafeBufferPointer { String(cString: $0.baseAddress!) }
    }
}
