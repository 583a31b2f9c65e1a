import CSSH2
import Foundation

/// An open remote file (`LIBSSH2_SFTP_HANDLE*`), closed in deinit if not closed explicitly.
///
/// `@unchecked Sendable`: the handle and `isClosed` are only touched while the session lock is held.
public final class SFTPFile: @unchecked Sendable {
    /// The parent SFTP channel, kept alive while the file is open.
    public let sftp: SFTPSession
    /// The remote path this handle was opened with.
    public let path: String
    private let raw: OpaquePointer
    private var isClosed = false

    init(sftp: SFTPSession, handle: OpaquePointer, path: String) {
        self.sftp = sftp
        self.raw = handle
        self.path = path
    }

    deinit {
        let sftp = sftp, raw = raw, path = path, isClosed = isClosed
        guard !isClosed else { return }
        sftp.handle.teardown { usable in
            if usable { sftp.closeLocked(raw, path: path) }
            // On a broken session the close request cannot be sent; libssh2 1.10 then keeps the handle
            // until the session is freed.
        }
    }

    private func locked<T>(_ operation: String, _ body: () throws -> T) throws -> T {
        try sftp.locked(operation, path) {
            guard !isClosed else {
                throw SFTPError(kind: .closed, operation: operation, path: path, message: "the file handle is already closed")
            }
            return try body()
        }
    }

    /// Reads up to `count` bytes at the current position; returns fewer only at end of file ([] at EOF).
    public func read(upTo count: Int) throws -> [UInt8] {
        try locked("read") { try sftp.readLocked(raw, path: path, limit: max(0, count), sizeHint: max(0, count)) }
    }

    /// Writes all bytes at the current position, pipelined.
    public func write(_ data: some ContiguousBytes) throws {
        try locked("write") { try data.withUnsafeBytes { try sftp.writeAllLocked(raw, $0, path: path) } }
    }

    /// Moves the position for the next read or write.
    public func seek(to offset: UInt64) throws {
        try locked("seek") { libssh2_sftp_seek64(raw, offset) }
    }

    /// Current attributes of the open file.
    public func stat() throws -> SFTPFileInfo {
        try locked("fstat") {
            var attributes = LIBSSH2_SFTP_ATTRIBUTES()
            let rc = try sftp.handle.call("fstat", path: path) { libssh2_sftp_fstat_ex(raw, &attributes, 0) }
            try sftp.handle.check(rc, "fstat", path: path, sftp: sftp.raw)
            return SFTPFileInfo(attributes)
        }
    }

    /// Asks the server to flush the file to disk (fsync@openssh.com). Returns false if the server lacks or denies it.
    @discardableResult
    public func fsync() throws -> Bool {
        try locked("fsync") { try sftp.fsyncLocked(raw, path: path) }
    }

    /// Closes the handle, reporting errors the server deferred until close. Idempotent.
    public func close() throws {
        try sftp.locked("close", path) {
            guard !isClosed else { return }
            isClosed = true
            try sftp.closeCheckedLocked(raw, path: path)
        }
    }
}
