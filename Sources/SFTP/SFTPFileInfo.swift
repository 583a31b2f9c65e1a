import CSSH2
import Foundation

/// The attributes of a remote path that callers need (from SFTP stat / readdir attributes).
public struct SFTPFileInfo: Sendable, Hashable {
    /// Size in bytes (nil if the server did not send it).
    public let size: UInt64?
    /// POSIX mode bits including the file type (nil if not sent).
    public let permissions: UInt32?
    /// Modification time (nil if not sent).
    public let modificationTime: Date?

    public init(size: UInt64?, permissions: UInt32?, modificationTime: Date?) {
        self.size = size
        self.permissions = permissions
        self.modificationTime = modificationTime
    }

    init(_ attributes: LIBSSH2_SFTP_ATTRIBUTES) {
        let flags = attributes.flags
        size = flags & UInt(LIBSSH2_SFTP_ATTR_SIZE) != 0 ? attributes.filesize : nil
        permissions = flags & UInt(LIBSSH2_SFTP_ATTR_PERMISSIONS) != 0 ? UInt32(truncatingIfNeeded: attributes.permissions) : nil
        modificationTime = flags & UInt(LIBSSH2_SFTP_ATTR_ACMODTIME) != 0 ? Date(timeIntervalSince1970: TimeInterval(attributes.mtime)) : nil
    }

    private var type: UInt32? { permissions.map { $0 & UInt32(LIBSSH2_SFTP_S_IFMT) } }
    public var isDirectory: Bool { type == UInt32(LIBSSH2_SFTP_S_IFDIR) }
    public var isRegularFile: Bool { type == UInt32(LIBSSH2_SFTP_S_IFREG) }
    public var isSymbolicLink: Bool { type == UInt32(LIBSSH2_SFTP_S_IFLNK) }
}

/// One entry of a directory listing whose name passed `SFTPSession.isSafeName`.
public struct SFTPDirectoryEntry: Sendable, Hashable {
    public let name: String
    public let info: SFTPFileInfo
}
