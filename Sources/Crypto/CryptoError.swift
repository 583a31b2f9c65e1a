import CCrypto

/// A failure inside libcrypto, or input that a cryptographic operation refused (a wrong key, a tampered message).
public struct CryptoError: Error, CustomStringConvertible, Sendable {
    /// What we were trying to do, e.g. "AES-256-GCM open".
    public let operation: String
    /// libcrypto's own message, or ours when the input was refused before reaching it.
    public let message: String

    public init(operation: String, message: String) {
        self.operation = operation
        self.message = message
    }

    public var description: String { "\(operation): \(message)" }

    /// Captures and clears libcrypto's thread-local error queue.
    static func openssl(_ operation: String) -> CryptoError {
        var messages: [String] = []
        while true {
            let code = ERR_get_error()
            if code == 0 { break }
            var buffer = [CChar](repeating: 0, count: 256)
            ERR_error_string_n(code, &buffer, buffer.count)
            messages.append(String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self))
        }
        return CryptoError(operation: operation, message: messages.isEmpty ? "libcrypto reported a failure" : messages.joined(separator: "; "))
    }
}

/// Throws a `CryptoError` carrying libcrypto's message unless `result` is 1 (libcrypto's success value).
@inline(__always)
func check(_ result: Int32, _ operation: @autoclosure () -> String) throws {
    if result != 1 { throw CryptoError.openssl(operation()) }
}
