import Foundation
import Posix

/// Files of one controller's data directory.
public struct ControllerPaths: Sendable {
    public static let defaultDirectory = "/var/lib/fleetkeep-controller"
    public let directory: String
    public init(directory: String) { self.directory = directory }

    public var database: String { directory + "/controller.db" }
    public var signingKey: String { directory + "/signing.key" }
    public var certificate: String { directory + "/tls.crt" }
    public var privateKey: String { directory + "/tls.key" }
}

/// A controller-side failure with a message that names the input and the next step.
public struct ControllerError: Error, CustomStringConvertible, Sendable {
    public let message: String
    public init(_ message: String) { self.message = message }
    public var description: String { message }
}

/// Writes `contents` to `path` with mode 0600, atomically and durably (the whole new content or the old one, even
/// after a crash).
func writePrivateFile(_ path: String, _ contents: [UInt8]) throws {
    do throws(Errno) {
        try AtomicFile.write(contents, to: path, permissions: 0o600, durable: true)
    } catch {
        throw ControllerError("cannot write \(path): \(error.operation) failed: \(error.text)")
    }
}
