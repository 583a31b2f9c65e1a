import Foundation

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

/// Writes `contents` to `path` with mode 0600, atomically (temporary file, then rename).
func writePrivateFile(_ path: String, _ contents: [UInt8]) throws {
    let temporary = path + ".tmp"
    let descriptor = open(temporary, O_CREAT | O_TRUNC | O_WRONLY | O_CLOEXEC, 0o600)
    guard descriptor >= 0 else { throw ControllerError("cannot create \(temporary): \(String(cString: strerror(errno)))") }
    defer { close(descriptor) }
    let written = contents.withUnsafeBytes { write(descriptor, $0.baseAddress, $0.count) }
    guard written == contents.count, fsync(descriptor) == 0, rename(temporary, path) == 0 else {
        unlink(temporary)
        throw ControllerError("cannot write \(path): \(String(cString: strerror(errno)))")
    }
}
