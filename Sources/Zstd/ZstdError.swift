import CZstd

/// A zstd failure with the library's message and what we were doing.
public struct ZstdError: Error, CustomStringConvertible, Sendable {
    public let operation: String
    public let message: String

    public init(operation: String, message: String) {
        self.operation = operation
        self.message = message
    }

    public var description: String { "zstd \(operation): \(message)" }

    /// Turns a zstd `size_t` result into a value or a `ZstdError` carrying `ZSTD_getErrorName`.
    static func check(_ code: Int, _ operation: @autoclosure () -> String) throws -> Int {
        if ZSTD_isError(code) != 0 {
            throw ZstdError(operation: operation(), message: String(cString: ZSTD_getErrorName(code)))
        }
        return code
    }
}
