import BackupEngine
import Foundation
import Posix
import SFTP
import Synchronization

/// Where the off-site copy goes: `sftp://user@host:port/path`.
public struct OffsiteTarget: Sendable, Equatable {
    public var user: String
    public var host: String
    public var port: Int
    public var path: String

    public init(url: String) throws {
        guard url.hasPrefix("sftp://") else { throw AgentError("off-site target '\(url)' must look like sftp://user@host:port/path") }
        let rest = url.dropFirst("sftp://".count)
        guard let slash = rest.firstIndex(of: "/"), let at = rest[..<slash].lastIndex(of: "@") else {
            throw AgentError("off-site target '\(url)' must look like sftp://user@host:port/path (user and path are required)")
        }
        user = String(rest[..<at])
        var hostPort = String(rest[rest.index(after: at)..<slash])
        port = 22
        if let colon = hostPort.lastIndex(of: ":"), !hostPort.hasSuffix("]") {
            guard let number = Int(hostPort[hostPort.index(after: colon)...]), (1...65535).contains(number) else {
                throw AgentError("off-site target '\(url)' has a bad port")
            }
            port = number
            hostPort = String(hostPort[..<colon])
        }
        host = hostPort.trimmingCharacters(in: CharacterSet(charactersIn: "[]"))
        path = String(rest[slash...])
        guard !user.isEmpty, !host.isEmpty, path.count > 1, !path.split(separator: "/").contains("..") else {
            throw AgentError("off-site target '\(url)' needs a user, a host and a path without '..'")
        }
    }

    public var description: String { "sftp://\(user)@\(host):\(port)\(path)" }
}

/// A repository directory on an SFTP server. Files are uploaded under a temporary name and renamed, so an
/// interrupted upload never leaves a partial file under a real name; names the server lists that could not
/// have been written by us (hostile names) are refused.
///
/// `@unchecked Sendable`: the SFTP session serializes every call on its own lock.
public final class SFTPStorage: RepositoryStorage, @unchecked Sendable {
    let session: SFTPSession
    let base: String
    public var location: String
    /// Remote directories known to exist: a push writes hundreds of packs into 256 `data/XX` directories, and
    /// asking for each one again cost two round trips per pack (a refused mkdir, then a stat).
    private let madeDirectories = Mutex(Set<String>())

    public init(session: SFTPSession, target: OffsiteTarget) {
        self.session = session
        base = target.path.hasSuffix("/") ? String(target.path.dropLast()) : target.path
        location = target.description
    }

    private func full(_ path: String) throws -> String {
        try validateRepositoryPath(path)
        return base + "/" + path
    }

    fileprivate func wrap<T>(_ path: String, _ body: () throws -> T) throws -> T {
        do {
            return try body()
        } catch let error as SFTPError {
            var message = error.message
            if error.status == .permissionDenied { message += " (the remote user cannot write there; fix permissions on the off-site host)" }
            if error.status == .noSpaceOnFilesystem || error.status == .quotaExceeded { message += " (the off-site host is out of space)" }
            throw StorageError(path: location + "/" + path, message: message)
        }
    }

    public func read(_ path: String) throws -> [UInt8] {
        let full = try full(path)
        return try wrap(path) { try session.readFile(full) }
    }

    public func read(_ path: String, offset: Int, length: Int) throws -> [UInt8] {
        let full = try full(path)
        let bytes = try wrap(path) { try session.read(full, offset: UInt64(offset), length: length) }
        guard bytes.count == length else { throw StorageError(path: location + "/" + path, message: "remote file is shorter than expected (truncated?)") }
        return bytes
    }

    public func write(_ path: String, _ data: [UInt8]) throws {
        let full = try full(path)
        try wrap(path) { try session.writeFileAtomically(full, data, mode: 0o600, fsync: true) }
    }

    /// Uploads under a temporary name and leaves the file open: the flush and rename wait for `commit`, so that a
    /// connection can send several packs before it waits for the server's disk.
    public func stage(_ path: String, _ data: [UInt8]) throws -> any StagedWrite {
        let full = try full(path)
        return try wrap(path) {
            let directory = Directory.parentDirectory(of: full)
            if !madeDirectories.withLock({ $0.contains(directory) }) {
                try session.makeDirectories(directory)
                madeDirectories.withLock { _ = $0.insert(directory) }
            }
            return StagedSFTPWrite(upload: try session.beginAtomicWrite(full, data, mode: 0o600), path: path, storage: self)
        }
    }

    public func list(_ directory: String) throws -> [String] {
        let full = try full(directory)
        do {
            let (entries, rejected) = try session.listDirectoryRejecting(full)
            if !rejected.isEmpty {
                throw StorageError(path: location + "/" + directory,
                                   message: "the server lists file names that are not safe (\(rejected.prefix(3).map(\.debugDescription).joined(separator: ", "))); refusing to use this directory")
            }
            // Names starting with '.' are our own in-progress uploads.
            return entries.map(\.name).filter { !$0.hasPrefix(".") }.sorted()
        } catch let error as SFTPError where error.isNotFound {
            return []
        } catch let error as SFTPError {
            throw StorageError(path: location + "/" + directory, message: error.message)
        }
    }

    public func remove(_ path: String) throws {
        let full = try full(path)
        do { try session.remove(full) } catch let error as SFTPError where error.isNotFound {}
    }

    public func size(_ path: String) throws -> Int? {
        let full = try full(path)
        guard let reported = try wrap(path, { try session.stat(full)?.size }) else { return nil }
        // The server's number: a size no file can have is refused, not converted into a trap.
        guard let size = Int(exactly: reported), size <= Int(Int64.max / 2) else {
            throw StorageError(path: location + "/" + path, message: "the SFTP server reports an impossible size (\(reported) bytes); check the server")
        }
        return size
    }

    /// Removes leftover temporary uploads in every `data/XX` directory (one listing each, 256 in a full repository).
    func removeTemporaryUploadsInPackDirectories() {
        guard let subdirectories = try? list("data") else { return }
        for subdirectory in subdirectories where subdirectory.count == 2 { removeTemporaryUploads(in: "data/" + subdirectory) }
    }

    /// Removes leftover temporary uploads (from an interrupted push) in `directory`.
    func removeTemporaryUploads(in directory: String) {
        guard let full = try? full(directory), let entries = try? session.listDirectory(full) else { return }
        for entry in entries where entry.name.hasPrefix(".") && entry.name.contains(".tmp-") {
            try? session.remove(full + "/" + entry.name)
        }
    }
}

/// A pack sent to the SFTP server but not yet flushed or renamed (see `RepositoryStorage.stage`).
///
/// `@unchecked Sendable`: used by the one upload lane that staged it; the SFTP objects serialize their own calls.
final class StagedSFTPWrite: StagedWrite, @unchecked Sendable {
    let upload: SFTPPendingUpload
    let path: String
    let storage: SFTPStorage
    var size: Int { upload.size }

    init(upload: SFTPPendingUpload, path: String, storage: SFTPStorage) {
        self.upload = upload
        self.path = path
        self.storage = storage
    }

    func commit() throws { try storage.wrap(path) { try upload.finish(fsync: true) } }
    func discard() { upload.abandon() }
}
