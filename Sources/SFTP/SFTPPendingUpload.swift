import Foundation

/// A file uploaded under a temporary name and still open on the server, not yet flushed to disk nor renamed into
/// place (`SFTPSession.beginAtomicWrite`). `finish` makes it durable and visible; `abandon` throws it away.
///
/// This exists so that a caller can upload several files and then flush them together: a flush waits for the
/// server's disk, and an upload that flushed each file before sending the next left its connection (and a core)
/// idle during every one of those waits.
///
/// `@unchecked Sendable`: `done` is only touched by the one thread that uploads (an upload lane owns its pending
/// files); the file and its session serialize their own libssh2 calls.
public final class SFTPPendingUpload: @unchecked Sendable {
    /// The name the file gets once finished.
    public let path: String
    /// Where the bytes are until then (a dot name in the same directory).
    public let temporaryPath: String
    /// Bytes uploaded.
    public let size: Int
    private let file: SFTPFile
    private var done = false

    init(file: SFTPFile, path: String, temporaryPath: String, size: Int) {
        self.file = file
        self.path = path
        self.temporaryPath = temporaryPath
        self.size = size
    }

    /// Flushes the file to the server's disk (fsync@openssh.com, when `fsync` and the server offers it), closes it,
    /// and renames it over `path`. After a failure the temporary file is removed if the connection still works.
    public func finish(fsync: Bool = true) throws {
        guard !done else {
            throw SFTPError(kind: .closed, operation: "finish upload", path: path, message: "the upload was already finished or abandoned")
        }
        done = true
        let sftp = file.sftp
        do {
            if fsync { try file.fsync() }
            try file.close()
            try sftp.rename(temporaryPath, to: path, overwrite: true)
        } catch let error as SFTPError {
            if error.kind == .server {
                try? file.close()
                try? sftp.remove(temporaryPath)
            }
            throw error
        }
    }

    /// Closes and removes the temporary file, best effort (the connection may be gone; a later push removes
    /// leftover temporary names).
    public func abandon() {
        guard !done else { return }
        done = true
        try? file.close()
        try? file.sftp.remove(temporaryPath)
    }
}

extension SFTPSession {
    /// Uploads `data` to a temporary name beside `path` (whose directory must exist) and returns it still open:
    /// nothing is visible under `path` until `finish`. See `SFTPPendingUpload`.
    public func beginAtomicWrite(_ path: String, _ data: some ContiguousBytes, mode: Int = 0o644) throws -> SFTPPendingUpload {
        let (directory, name) = Self.split(path)
        guard !name.isEmpty else {
            throw SFTPError(kind: .invalidArgument, operation: "atomic write", path: path, message: "the path has no file name")
        }
        let temporary = (directory.map { $0 == "/" ? "/" : $0 + "/" } ?? "") + ".\(name).tmp-\(Self.temporarySuffix())"
        let file = try open(temporary, flags: [.write, .create, .truncate], mode: mode)
        do {
            try file.write(data)
        } catch let error as SFTPError {
            try? file.close()
            if error.kind == .server { try? remove(temporary) }
            throw error
        }
        let size = data.withUnsafeBytes { $0.count }
        return SFTPPendingUpload(file: file, path: path, temporaryPath: temporary, size: size)
    }

    /// 16 random hex digits for a temporary name.
    static func temporarySuffix() -> String {
        (0..<8).map { _ in
            let byte = UInt8.random(in: 0...255)
            return (byte < 16 ? "0" : "") + String(byte, radix: 16)
        }.joined()
    }
}
