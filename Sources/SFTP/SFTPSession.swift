import CSSH2
import Foundation

/// An SFTP channel on an `SSHSession` (`LIBSSH2_SFTP*`), with whole-file and path operations.
///
/// Paths are passed to the server unchanged: absolute, or relative to the login directory.
/// All calls are serialized with the parent session's other calls; the session is kept alive by a strong
/// reference. A timeout or connection loss breaks the parent session (see `SSHSession`).
///
/// `@unchecked Sendable`: `raw` is only used while the parent's session lock is held.
public final class SFTPSession: @unchecked Sendable {
    /// The parent connection.
    public let ssh: SSHSession
    let raw: OpaquePointer
    var handle: SessionHandle { ssh.handle }

    /// Bytes handed to one `libssh2_sftp_write` call. libssh2 1.10 splits them into ~30 KB packets and keeps
    /// them all in flight, so this is the pipelining window (32 KiB: ~35 MB/s, 1 MiB: ~150-180 MB/s on loopback).
    static let writeWindow = 1 << 20
    /// Bytes asked from one `libssh2_sftp_read` call; libssh2 issues read-ahead requests for up to this much
    /// (4 MiB read back ~1.4x faster than 1 MiB on loopback).
    static let readWindow = 4 << 20

    /// Starts the SFTP subsystem on `ssh`.
    public init(ssh: SSHSession) throws {
        self.ssh = ssh
        let handle = ssh.handle
        raw = try handle.locked("start SFTP subsystem", path: handle.endpoint) { () throws -> OpaquePointer in
            guard let sftp = try handle.callPointer("start SFTP subsystem", path: handle.endpoint, { libssh2_sftp_init(handle.raw) }) else {
                throw handle.error(handle.lastErrno, "start SFTP subsystem", path: handle.endpoint)
            }
            return sftp
        }
    }

    /// Connects, verifies the host, authenticates and starts SFTP in one step.
    public static func connect(_ options: SFTPConnectionOptions) throws -> SFTPSession {
        try SFTPSession(ssh: SSHSession(options: options))
    }

    deinit {
        let handle = ssh.handle, raw = raw
        handle.teardown { usable in
            // On a broken socket shutdown fails fast (the socket is shut down) but still frees the channel.
            _ = try? handle.call("stop SFTP subsystem", path: nil, deadline: ContinuousClock.now.advanced(by: .seconds(usable ? 2 : 0))) {
                libssh2_sftp_shutdown(raw)
            }
        }
    }

    // MARK: Metadata

    /// Attributes of `path` (following symlinks), or nil if it does not exist.
    public func stat(_ path: String) throws -> SFTPFileInfo? {
        try locked("stat", path) { try statLocked(path) }
    }

    /// Creates one directory; fails if it exists or its parent is missing.
    public func makeDirectory(_ path: String, mode: Int = 0o755) throws {
        try locked("mkdir", path) {
            let rc = try mkdirLocked(path, mode: mode)
            try handle.check(rc, "mkdir", path: path, sftp: raw)
        }
    }

    /// Creates `path` and any missing parents (`mkdir -p`). Succeeds if it already is a directory;
    /// fails naming the component that exists but is not a directory.
    public func makeDirectories(_ path: String, mode: Int = 0o755) throws {
        try locked("mkdir -p", path) { try ensureDirectoryLocked(path, mode: mode) }
    }

    /// Directory entries of `path` with safe names only (see `isSafeName`); "." and ".." and any hostile
    /// names are left out. Use `listDirectoryRejecting` to also learn what was rejected.
    public func listDirectory(_ path: String) throws -> [SFTPDirectoryEntry] {
        try listDirectoryRejecting(path).entries
    }

    /// Names in directory `path` (safe names only, no "." / ".."), in server order.
    public func listNames(_ path: String) throws -> [String] {
        try listDirectory(path).map(\.name)
    }

    /// Directory listing plus the raw names that were rejected as unsafe (lossily decoded, for a warning).
    public func listDirectoryRejecting(_ path: String) throws -> (entries: [SFTPDirectoryEntry], rejected: [String]) {
        try locked("list directory", path) {
            let dir = try openLocked(path, flags: 0, mode: 0, type: LIBSSH2_SFTP_OPENDIR, operation: "open directory")
            defer { closeLocked(dir, path: path) }
            var entries: [SFTPDirectoryEntry] = []
            var rejected: [String] = []
            var buffer = [CChar](repeating: 0, count: 4097)
            while true {
                var attributes = LIBSSH2_SFTP_ATTRIBUTES()
                let rc = try buffer.withUnsafeMutableBufferPointer { name in
                    try handle.call("read directory", path: path) {
                        libssh2_sftp_readdir_ex(dir, name.baseAddress, name.count - 1, nil, 0, &attributes)
                    }
                }
                if rc == 0 { break }
                try handle.check(rc, "read directory", path: path, sftp: raw)
                let bytes = buffer[0..<Int(rc)].map { UInt8(bitPattern: $0) }
                if bytes == [0x2E] || bytes == [0x2E, 0x2E] { continue }
                if Self.isSafeName(bytes) {
                    entries.append(SFTPDirectoryEntry(name: String(decoding: bytes, as: UTF8.self), info: SFTPFileInfo(attributes)))
                } else {
                    rejected.append(String(decoding: bytes, as: UTF8.self))
                }
            }
            return (entries, rejected)
        }
    }

    // MARK: Whole-file transfers

    /// Reads the whole remote file.
    public func readFile(_ path: String) throws -> [UInt8] {
        try locked("read", path) {
            let file = try openLocked(path, flags: UInt(LIBSSH2_FXF_READ), mode: 0, type: LIBSSH2_SFTP_OPENFILE, operation: "open for reading")
            defer { closeLocked(file, path: path) }
            var attributes = LIBSSH2_SFTP_ATTRIBUTES()
            let rc = try handle.call("fstat", path: path) { libssh2_sftp_fstat_ex(file, &attributes, 0) }
            try handle.check(rc, "fstat", path: path, sftp: raw)
            // The size is the server's claim: it only sizes the first allocation, capped, and the result grows with the
            // bytes actually received.
            let hint = min(SFTPFileInfo(attributes).size.map { Int(clamping: $0) } ?? 0, Self.largestSizeHint)
            return try readLocked(file, path: path, limit: nil, sizeHint: hint)
        }
    }

    /// Reads up to `length` bytes starting at `offset`; fewer only if the file ends first.
    public func read(_ path: String, offset: UInt64, length: Int) throws -> [UInt8] {
        guard length >= 0 else {
            throw SFTPError(kind: .invalidArgument, operation: "read range", path: path, message: "negative length \(length)")
        }
        return try locked("read range", path) {
            let file = try openLocked(path, flags: UInt(LIBSSH2_FXF_READ), mode: 0, type: LIBSSH2_SFTP_OPENFILE, operation: "open for reading")
            defer { closeLocked(file, path: path) }
            libssh2_sftp_seek64(file, offset)
            return try readLocked(file, path: path, limit: length, sizeHint: length)
        }
    }

    /// Creates or truncates `path` and uploads `data` with pipelined writes. With `fsync`, asks the server to
    /// flush it to disk (if it supports fsync@openssh.com) before closing. Not atomic: see `writeFileAtomically`.
    public func writeFile(_ path: String, _ data: some ContiguousBytes, mode: Int = 0o644, fsync: Bool = false) throws {
        try locked("write", path) {
            let flags = UInt(LIBSSH2_FXF_WRITE | LIBSSH2_FXF_CREAT | LIBSSH2_FXF_TRUNC)
            let file = try openLocked(path, flags: flags, mode: mode, type: LIBSSH2_SFTP_OPENFILE, operation: "open for writing")
            var closed = false
            defer { if !closed { closeLocked(file, path: path) } }
            try data.withUnsafeBytes { try writeAllLocked(file, $0, path: path) }
            if fsync { _ = try fsyncLocked(file, path: path) }
            closed = true
            try closeCheckedLocked(file, path: path)
        }
    }

    /// Writes `data` to a temporary name in the same directory, optionally fsyncs it, then renames it over
    /// `path`, so readers see the old or the new content, never a partial file. Parent directories are
    /// created. On OpenSSH the final replace of an existing file is remove-then-rename (see `rename`).
    public func writeFileAtomically(_ path: String, _ data: some ContiguousBytes, mode: Int = 0o644, fsync: Bool = true) throws {
        let (directory, name) = Self.split(path)
        guard !name.isEmpty else {
            throw SFTPError(kind: .invalidArgument, operation: "atomic write", path: path, message: "the path has no file name")
        }
        let suffix = (0..<8).map { _ in String(UInt8.random(in: 0...255), radix: 16) }.joined()
        let temporary = (directory.map { $0 + "/" } ?? "") + ".\(name).tmp-\(suffix)"
        if let directory, !directory.isEmpty { try makeDirectories(directory) }
        do {
            try writeFile(temporary, data, mode: mode, fsync: fsync)
            try rename(temporary, to: path, overwrite: true)
        } catch let error as SFTPError {
            if error.kind == .server { try? remove(temporary) }
            throw error
        }
    }

    // MARK: Namespace changes

    /// Renames `source` to `destination`. With `overwrite`, an existing destination file is replaced: libssh2
    /// asks for OVERWRITE|ATOMIC|NATIVE, but SFTP v3 servers (OpenSSH) ignore those flags and refuse an existing
    /// target, and libssh2 1.10 has no posix-rename@openssh.com; so we then remove the target and rename again.
    /// That fallback is not atomic: a crash between the two steps leaves the target missing (the source survives).
    public func rename(_ source: String, to destination: String, overwrite: Bool = true) throws {
        try locked("rename", source) {
            let flags = overwrite ? Int(LIBSSH2_SFTP_RENAME_OVERWRITE | LIBSSH2_SFTP_RENAME_ATOMIC | LIBSSH2_SFTP_RENAME_NATIVE) : 0
            var rc = try renameLocked(source, destination, flags: flags)
            if rc < 0, overwrite, rc == LIBSSH2_ERROR_SFTP_PROTOCOL {
                let status = SFTPStatus(rawValue: libssh2_sftp_last_error(raw))
                if status == .failure || status == .fileAlreadyExists,
                   let existing = try statLocked(destination), !existing.isDirectory,
                   try statLocked(source) != nil {
                    let removed = try unlinkLocked(destination)
                    try handle.check(removed, "remove rename target", path: destination, sftp: raw)
                    rc = try renameLocked(source, destination, flags: flags)
                }
            }
            if rc < 0 {
                let base = handle.error(rc, "rename", path: source, sftp: raw)
                throw SFTPError(kind: base.kind, operation: "rename", path: "\(source) -> \(destination)",
                                message: base.message, libssh2Code: base.libssh2Code, status: base.status)
            }
        }
    }

    /// Removes a file.
    public func remove(_ path: String) throws {
        try locked("remove", path) {
            try handle.check(try unlinkLocked(path), "remove", path: path, sftp: raw)
        }
    }

    /// Removes an empty directory.
    public func removeDirectory(_ path: String) throws {
        try locked("rmdir", path) {
            let rc = try withPath(path) { p, n in try handle.call("rmdir", path: path) { libssh2_sftp_rmdir_ex(raw, p, n) } }
            try handle.check(rc, "rmdir", path: path, sftp: raw)
        }
    }

    /// Opens a file handle for streaming access.
    public func open(_ path: String, flags: SFTPOpenFlags, mode: Int = 0o644) throws -> SFTPFile {
        let file = try locked("open", path) {
            try openLocked(path, flags: flags.rawValue, mode: mode, type: LIBSSH2_SFTP_OPENFILE, operation: "open")
        }
        return SFTPFile(sftp: self, handle: file, path: path)
    }

    /// Ends the SSH connection (see `SSHSession.disconnect`).
    public func disconnect() { ssh.disconnect() }

    // MARK: Lock-held helpers

    func locked<T>(_ operation: String, _ path: String, _ body: () throws -> T) throws -> T {
        guard !path.isEmpty, !path.utf8.contains(0), path.utf8.count < UInt32.max else {
            throw SFTPError(kind: .invalidArgument, operation: operation, path: path, message: "the remote path is empty or contains NUL")
        }
        return try handle.locked(operation, path: path, body)
    }

    func withPath<T>(_ path: String, _ body: (UnsafePointer<CChar>, UInt32) throws -> T) throws -> T {
        var path = path
        return try path.withUTF8 { utf8 in
            try utf8.withMemoryRebound(to: CChar.self) { try body($0.baseAddress!, UInt32(utf8.count)) }
        }
    }

    func statLocked(_ path: String) throws -> SFTPFileInfo? {
        var attributes = LIBSSH2_SFTP_ATTRIBUTES()
        let rc = try withPath(path) { p, n in
            try handle.call("stat", path: path) { libssh2_sftp_stat_ex(raw, p, n, LIBSSH2_SFTP_STAT, &attributes) }
        }
        if rc < 0 {
            let error = handle.error(rc, "stat", path: path, sftp: raw)
            if error.isNotFound { return nil }
            throw error
        }
        return SFTPFileInfo(attributes)
    }

    private func mkdirLocked(_ path: String, mode: Int) throws -> Int32 {
        try withPath(path) { p, n in try handle.call("mkdir", path: path) { libssh2_sftp_mkdir_ex(raw, p, n, mode) } }
    }

    /// Bottom-up: try mkdir first (one round trip in the common case), recurse to the parent only when missing.
    private func ensureDirectoryLocked(_ path: String, mode: Int) throws {
        let rc = try mkdirLocked(path, mode: mode)
        if rc == 0 { return }
        let failure = handle.error(rc, "mkdir -p", path: path, sftp: raw)
        guard failure.kind == .server else { throw failure }
        if let info = try statLocked(path) {
            if info.isDirectory { return }
            throw SFTPError(kind: .server, operation: "mkdir -p", path: path, message: "'\(path)' exists and is not a directory",
                            libssh2Code: failure.libssh2Code, status: failure.status)
        }
        let (parent, _) = Self.split(path)
        guard failure.isNotFound, let parent, !parent.isEmpty, parent != path else { throw failure }
        try ensureDirectoryLocked(parent, mode: mode)
        let again = try mkdirLocked(path, mode: mode)
        if again < 0, try statLocked(path)?.isDirectory != true {
            throw handle.error(again, "mkdir -p", path: path, sftp: raw)
        }
    }

    private func renameLocked(_ source: String, _ destination: String, flags: Int) throws -> Int32 {
        try withPath(source) { s, sn in
            try withPath(destination) { d, dn in
                try handle.call("rename", path: source) { libssh2_sftp_rename_ex(raw, s, sn, d, dn, flags) }
            }
        }
    }

    private func unlinkLocked(_ path: String) throws -> Int32 {
        try withPath(path) { p, n in try handle.call("remove", path: path) { libssh2_sftp_unlink_ex(raw, p, n) } }
    }

    func openLocked(_ path: String, flags: UInt, mode: Int, type: Int32, operation: String) throws -> OpaquePointer {
        let file = try withPath(path) { p, n in
            try handle.callPointer(operation, path: path) { libssh2_sftp_open_ex(raw, p, n, flags, mode, type) }
        }
        guard let file else { throw handle.error(handle.lastErrno, operation, path: path, sftp: raw) }
        return file
    }

    /// Best-effort close for error paths and deinit.
    func closeLocked(_ file: OpaquePointer, path: String) {
        _ = try? handle.call("close", path: path) { libssh2_sftp_close_handle(file) }
    }

    /// Close whose result matters: for writes, the server reports deferred errors (e.g. disk full) here.
    func closeCheckedLocked(_ file: OpaquePointer, path: String) throws {
        let rc = try handle.call("close", path: path) { libssh2_sftp_close_handle(file) }
        try handle.check(rc, "close", path: path, sftp: raw)
    }

    /// Writes all of `buffer`, at most `writeWindow` bytes per libssh2 call, advancing by what libssh2 accepted.
    func writeAllLocked(_ file: OpaquePointer, _ buffer: UnsafeRawBufferPointer, path: String) throws {
        guard let base = buffer.baseAddress?.assumingMemoryBound(to: CChar.self) else { return }
        var offset = 0
        while offset < buffer.count {
            let count = min(buffer.count - offset, Self.writeWindow)
            let written = try handle.call("write", path: path) { libssh2_sftp_write(file, base + offset, count) }
            if written < 0 { throw handle.error(Int32(written), "write", path: path, sftp: raw) }
            if written == 0 {
                throw SFTPError(kind: .connection, operation: "write", path: path, message: "libssh2 accepted no bytes; the channel is stalled")
            }
            offset += written
        }
    }

    /// The most a server-reported size may pre-allocate before a byte arrives.
    static let largestSizeHint = 64 << 20

    /// Reads until EOF or `limit` bytes, straight into the result array.
    func readLocked(_ file: OpaquePointer, path: String, limit: Int?, sizeHint: Int) throws -> [UInt8] {
        var result = [UInt8](repeating: 0, count: max(0, min(sizeHint, limit ?? Int.max)))
        var filled = 0
        while limit.map({ filled < $0 }) ?? true {
            if filled == result.count {
                let grow = max(Self.readWindow, result.count / 2)
                result.append(contentsOf: repeatElement(0, count: min(grow, (limit ?? Int.max) - filled)))
            }
            let want = min(result.count - filled, Self.readWindow)
            let got = try result.withUnsafeMutableBytes { bytes in
                let target = bytes.baseAddress!.advanced(by: filled).assumingMemoryBound(to: CChar.self)
                return try handle.call("read", path: path) { libssh2_sftp_read(file, target, want) }
            }
            if got < 0 { throw handle.error(Int32(got), "read", path: path, sftp: raw) }
            if got == 0 { break }
            filled += got
        }
        result.removeSubrange(filled...)
        return result
    }

    /// Returns false when the server lacks fsync@openssh.com (OP_UNSUPPORTED) or its administrator denied
    /// the request (OpenSSH `sftp-server -P fsync` answers PERMISSION_DENIED); there is nothing to do then.
    func fsyncLocked(_ file: OpaquePointer, path: String) throws -> Bool {
        let rc = try handle.call("fsync", path: path) { libssh2_sftp_fsync(file) }
        if rc == 0 { return true }
        let error = handle.error(rc, "fsync", path: path, sftp: raw)
        if error.status == .operationUnsupported || error.status == .permissionDenied { return false }
        throw error
    }

    /// Splits "a/b/c" into ("a/b", "c"); "c" into (nil, "c"); "/c" into ("/", "c").
    static func split(_ path: String) -> (directory: String?, name: String) {
        var trimmed = Substring(path)
        while trimmed.count > 1, trimmed.hasSuffix("/") { trimmed.removeLast() }
        guard let slash = trimmed.lastIndex(of: "/") else { return (nil, String(trimmed)) }
        let directory = trimmed[..<slash]
        return (directory.isEmpty ? "/" : String(directory), String(trimmed[trimmed.index(after: slash)...]))
    }
}

/// Flags for `SFTPSession.open` (SSH_FXF_*).
public struct SFTPOpenFlags: OptionSet, Sendable, Hashable {
    public let rawValue: UInt
    public init(rawValue: UInt) { self.rawValue = rawValue }
    public static let read = SFTPOpenFlags(rawValue: UInt(LIBSSH2_FXF_READ))
    public static let write = SFTPOpenFlags(rawValue: UInt(LIBSSH2_FXF_WRITE))
    public static let append = SFTPOpenFlags(rawValue: UInt(LIBSSH2_FXF_APPEND))
    public static let create = SFTPOpenFlags(rawValue: UInt(LIBSSH2_FXF_CREAT))
    public static let truncate = SFTPOpenFlags(rawValue: UInt(LIBSSH2_FXF_TRUNC))
    public static let exclusive = SFTPOpenFlags(rawValue: UInt(LIBSSH2_FXF_EXCL))
}
