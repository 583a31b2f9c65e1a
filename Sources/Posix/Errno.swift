import Glibc

/// A failed system call: the `errno` code, what was being done and to which file.
///
/// Two values are equal when their codes are, whatever the operation and path, so a caller can test
/// `error == .notFound` the way it would test `errno == ENOENT`.
public struct Errno: Error, Equatable, CustomStringConvertible, Sendable {
    public let code: Int32
    /// The step that failed, as a verb: "open", "write", "fsync", "rename", "list" …; empty for the constants.
    public let operation: String
    /// The file or directory the step concerned; empty for the constants.
    public let path: String

    public init(code: Int32, operation: String = "", path: String = "") {
        self.code = code
        self.operation = operation
        self.path = path
    }

    /// The `errno` the last system call left, for `operation` on `path`. Call it straight after the failed call:
    /// almost anything else (even a `print`) may overwrite `errno`.
    public static func current(_ operation: String, path: String) -> Errno {
        Errno(code: errno, operation: operation, path: path)
    }

    /// The C library's text for the code ("No space left on device").
    public var text: String { String(cString: strerror(code)) }

    /// "/var/lib/x/state.json: rename failed: Permission denied"
    public var description: String {
        if operation.isEmpty && path.isEmpty { return text }
        return "\(path): \(operation) failed: \(text)"
    }

    public static func == (left: Errno, right: Errno) -> Bool { left.code == right.code }

    // The codes callers here decide on; add one when a caller needs it.
    public static let notPermitted = Errno(code: EPERM)
    public static let notFound = Errno(code: ENOENT)
    public static let interrupted = Errno(code: EINTR)
    public static let badDescriptor = Errno(code: EBADF)
    public static let accessDenied = Errno(code: EACCES)
    public static let exists = Errno(code: EEXIST)
    public static let notDirectory = Errno(code: ENOTDIR)
    public static let isDirectory = Errno(code: EISDIR)
    public static let invalidArgument = Errno(code: EINVAL)
    public static let noSpace = Errno(code: ENOSPC)
    public static let readOnlyFilesystem = Errno(code: EROFS)
    public static let quotaExceeded = Errno(code: EDQUOT)

    /// True when the disk (or the user's quota on it) is full: the one failure whose next step is to free space.
    public var isDiskFull: Bool { self == .noSpace || self == .quotaExceeded }
}
