import CSSH2

/// An SFTP status code sent by the server (SSH_FX_*), named like the draft spec so logs are greppable.
public struct SFTPStatus: RawRepresentable, Sendable, Hashable, CustomStringConvertible {
    public let rawValue: UInt
    public init(rawValue: UInt) { self.rawValue = rawValue }

    public static let ok = SFTPStatus(rawValue: LIBSSH2_FX_OK)
    public static let eof = SFTPStatus(rawValue: LIBSSH2_FX_EOF)
    public static let noSuchFile = SFTPStatus(rawValue: LIBSSH2_FX_NO_SUCH_FILE)
    public static let permissionDenied = SFTPStatus(rawValue: LIBSSH2_FX_PERMISSION_DENIED)
    public static let failure = SFTPStatus(rawValue: LIBSSH2_FX_FAILURE)
    public static let badMessage = SFTPStatus(rawValue: LIBSSH2_FX_BAD_MESSAGE)
    public static let noConnection = SFTPStatus(rawValue: LIBSSH2_FX_NO_CONNECTION)
    public static let connectionLost = SFTPStatus(rawValue: LIBSSH2_FX_CONNECTION_LOST)
    public static let operationUnsupported = SFTPStatus(rawValue: LIBSSH2_FX_OP_UNSUPPORTED)
    public static let noSuchPath = SFTPStatus(rawValue: LIBSSH2_FX_NO_SUCH_PATH)
    public static let fileAlreadyExists = SFTPStatus(rawValue: LIBSSH2_FX_FILE_ALREADY_EXISTS)
    public static let writeProtect = SFTPStatus(rawValue: LIBSSH2_FX_WRITE_PROTECT)
    public static let noSpaceOnFilesystem = SFTPStatus(rawValue: LIBSSH2_FX_NO_SPACE_ON_FILESYSTEM)
    public static let quotaExceeded = SFTPStatus(rawValue: LIBSSH2_FX_QUOTA_EXCEEDED)
    public static let directoryNotEmpty = SFTPStatus(rawValue: LIBSSH2_FX_DIR_NOT_EMPTY)
    public static let notADirectory = SFTPStatus(rawValue: LIBSSH2_FX_NOT_A_DIRECTORY)

    private static let names: [UInt: String] = [
        0: "OK", 1: "EOF", 2: "NO_SUCH_FILE", 3: "PERMISSION_DENIED", 4: "FAILURE", 5: "BAD_MESSAGE",
        6: "NO_CONNECTION", 7: "CONNECTION_LOST", 8: "OP_UNSUPPORTED", 9: "INVALID_HANDLE", 10: "NO_SUCH_PATH",
        11: "FILE_ALREADY_EXISTS", 12: "WRITE_PROTECT", 13: "NO_MEDIA", 14: "NO_SPACE_ON_FILESYSTEM",
        15: "QUOTA_EXCEEDED", 16: "UNKNOWN_PRINCIPAL", 17: "LOCK_CONFLICT", 18: "DIR_NOT_EMPTY",
        19: "NOT_A_DIRECTORY", 20: "INVALID_FILENAME", 21: "LINK_LOOP",
    ]

    /// The spec name, e.g. `NO_SUCH_FILE`.
    public var name: String { Self.names[rawValue] ?? "STATUS_\(rawValue)" }
    public var description: String { name }
}

/// Every failure of the SFTP module: what we were doing, on which remote path, and what libssh2 / the server said.
public struct SFTPError: Error, Sendable, CustomStringConvertible {
    /// Broad class of failure, for callers that branch (retry on `.connection`/`.timeout`, ask the user on `.hostKey`).
    public enum Kind: Sendable, Hashable {
        /// TCP connect / name resolution failed.
        case connect
        /// The server's host key is not the trusted one (pin mismatch, unknown or changed in known_hosts).
        case hostKey
        /// The server refused our credentials, or the key file could not be used.
        case authentication
        /// No progress within the configured timeout.
        case timeout
        /// The connection broke (peer closed, socket error, protocol error). The session is unusable afterwards.
        case connection
        /// The server answered an SFTP request with an error status (see `status`).
        case server
        /// A local problem with the arguments (bad path, bad pin format).
        case invalidArgument
        /// The session was closed or broken by an earlier error.
        case closed
    }

    public let kind: Kind
    /// What we were doing, e.g. "open for writing", "rename", "authenticate".
    public let operation: String
    /// The remote path concerned (or "host:port" for session-level failures).
    public let path: String?
    /// Human-readable explanation, including libssh2's last error message when there is one.
    public let message: String
    /// libssh2's error code (LIBSSH2_ERROR_*), when the failure came from libssh2.
    public let libssh2Code: Int32?
    /// The SFTP status the server returned, when the failure is an SFTP status.
    public let status: SFTPStatus?

    public init(kind: Kind, operation: String, path: String?, message: String, libssh2Code: Int32? = nil, status: SFTPStatus? = nil) {
        self.kind = kind
        self.operation = operation
        self.path = path
        self.message = message
        self.libssh2Code = libssh2Code
        self.status = status
    }

    /// True when the server said the path (or a parent) does not exist.
    public var isNotFound: Bool { status == .noSuchFile || status == .noSuchPath }

    public var description: String {
        var text = "SFTP \(operation)"
        if let path { text += " '\(path)'" }
        text += " failed"
        if let status { text += " [\(status.name)]" }
        text += ": \(message)"
        if let libssh2Code, status == nil { text += " (libssh2 error \(libssh2Code))" }
        return text
    }
}
