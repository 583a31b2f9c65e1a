import Foundation
import Synchronization

/// Where a repository's files live: a local directory or a remote SFTP directory.
/// Paths are relative and '/'-separated (`data/ab/abcd…`, `index/…`); implementations refuse anything else.
public protocol RepositoryStorage: Sendable {
    func read(_ path: String) throws -> [UInt8]
    func read(_ path: String, offset: Int, length: Int) throws -> [UInt8]
    /// Atomic: a temporary name, fsync, rename. Creates parent directories.
    func write(_ path: String, _ data: [UInt8]) throws
    /// File names in `directory`; empty when it does not exist.
    func list(_ directory: String) throws -> [String]
    func remove(_ path: String) throws
    /// Size in bytes, nil when missing; throws when the file cannot be looked at.
    func size(_ path: String) throws -> Int?
    /// A human-readable location for messages.
    var location: String { get }
    /// Sends `data` for `path`; it is durable and visible under `path` once the returned write's `commit` returns.
    /// A storage may hold back the flush and rename until then (SFTP, so that an uploader can send several files
    /// before waiting for the remote disk) or write the file at once (a local disk). The off-site push stages packs
    /// and commits them all before it writes the index that names them.
    ///
    /// No default implementation: each storage says how it stages, so that a wrapper that forgot to pass `stage` on
    /// cannot quietly write at once and lose the batched flush of the storage it wraps.
    func stage(_ path: String, _ data: [UInt8]) throws -> any StagedWrite
}

/// A file sent by `RepositoryStorage.stage`. Used by one thread.
public protocol StagedWrite: AnyObject, Sendable {
    var path: String { get }
    var size: Int { get }
    /// Makes the file durable under its name (flush, then rename into place) unless `stage` already did: after this
    /// returns it is.
    func commit() throws
    /// Drops a file that is not yet under its name, best effort.
    func discard()
}

/// What `stage` returns on a storage that wrote the file whole and durably under its name at once: committing has
/// nothing left to do, and a discarded one stays (whole and durable, as after a commit; a later copy finds it by name
/// and size and does not send it again).
public final class CommittedWrite: StagedWrite {
    public let path: String
    public let size: Int

    public init(path: String, size: Int) {
        self.path = path
        self.size = size
    }

    public func commit() {}
    public func discard() {}
}

extension LocalStorage {
    /// Writes the file at once, as `write` does (temporary file, fsync, rename, fsync of the directory): a local
    /// disk has no round trip to overlap, and a commit then has nothing left to make durable.
    public func stage(_ path: String, _ data: [UInt8]) throws -> any StagedWrite {
        try write(path, data)
        return CommittedWrite(path: path, size: data.count)
    }
}

/// A storage failure that names the file and what to do.
public struct StorageError: Error, CustomStringConvertible, Sendable {
    public let path: String
    public let message: String
    public init(path: String, message: String) {
        self.path = path
        self.message = message
    }
    public var description: String { "\(path): \(message)" }
}

/// Checks a repository-relative path: no absolute paths, no `..`, no empty or control-character components.
public func validateRepositoryPath(_ path: String) throws {
    let components = path.split(separator: "/", omittingEmptySubsequences: false)
    guard !path.hasPrefix("/"), !components.isEmpty,
          components.allSatisfy({ !$0.isEmpty && $0 != "." && $0 != ".." && !$0.contains(where: { $0.asciiValue.map { $0 < 32 } ?? false }) }) else {
        throw StorageError(path: path, message: "refusing an unsafe repository path")
    }
}

/// A repository in a local directory. Writes are atomic and durable (temporary file, fsync, rename, fsync directory).
public struct LocalStorage: RepositoryStorage {
    public let root: String
    /// Packs are read a blob at a time, thousands of times per restore; keeping them open saves an open and a
    /// close per blob.
    private let openPacks = OpenFileCache(capacity: 64)
    public init(root: String) { self.root = root }
    public var location: String { root }

    private func full(_ path: String) throws -> String {
        try validateRepositoryPath(path)
        return root + "/" + path
    }

    private func failure(_ path: String, _ action: String) -> StorageError {
        let code = errno
        var message = "\(action) failed: \(String(cString: strerror(code)))"
        if code == ENOSPC { message += " (the disk holding the repository is full; free space and run the command again)" }
        if code == EACCES || code == EPERM { message += " (check permissions of \(root))" }
        return StorageError(path: root + "/" + path, message: message)
    }

    public func read(_ path: String) throws -> [UInt8] {
        guard let size = try size(path) else { throw StorageError(path: root + "/" + path, message: "missing") }
        return try read(path, offset: 0, length: size)
    }

    public func read(_ path: String, offset: Int, length: Int) throws -> [UInt8] {
        let file: OpenFile
        if path.hasPrefix("data/"), let cached = openPacks[path] {
            file = cached
        } else {
            let descriptor = open(try full(path), O_RDONLY | O_CLOEXEC)
            guard descriptor >= 0 else { throw failure(path, "open") }
            file = OpenFile(descriptor)
            // Packs never change once written (their names are random and never reused), so an open one stays valid.
            if path.hasPrefix("data/") { openPacks[path] = file }
        }
        let descriptor = file.descriptor
        return try withExtendedLifetime(file) { try [UInt8](unsafeUninitializedCapacity: max(length, 1)) { buffer, count in
            var done = 0
            while done < length {
                let got = pread(descriptor, buffer.baseAddress! + done, length - done, off_t(offset + done))
                if got < 0 { if errno == EINTR { continue }; throw failure(path, "read") }
                if got == 0 { throw StorageError(path: root + "/" + path, message: "file is shorter than expected (truncated?)") }
                done += got
            }
            count = length
        } }
    }

    public func write(_ path: String, _ data: [UInt8]) throws {
        let relativeDirectory = (path as NSString).deletingLastPathComponent
        let (descriptor, temporary) = try createTemporaryFile(in: relativeDirectory.isEmpty ? nil : relativeDirectory)
        do {
            try writeAll(descriptor, data, path: path)
            // Lock leases are advisory and expire on their own, so they skip the (slow) flushes to disk.
            try commitTemporaryFile(descriptor, temporary, to: path, durable: !path.hasPrefix("locks/"))
        } catch {
            close(descriptor)
            unlink(temporary)
            throw error
        }
    }

    /// Creates `<directory>/.tmp-<random>` (mode 0600) for a file written in pieces; `list` never shows it.
    func createTemporaryFile(in directory: String?) throws -> (descriptor: Int32, path: String) {
        let temporary = try temporaryPath(in: directory)
        let descriptor = open(temporary, O_CREAT | O_EXCL | O_WRONLY | O_CLOEXEC, 0o600)
        guard descriptor >= 0 else { throw failure(directory ?? ".", "create") }
        return (descriptor, temporary)
    }

    /// A new temporary file filled through a `DirectFileWriter` (packs: large, written once, rarely read back soon).
    func createDirectTemporaryFile(in directory: String) throws -> (writer: DirectFileWriter, descriptor: Int32, path: String) {
        let temporary = try temporaryPath(in: directory)
        let (descriptor, direct) = DirectFileWriter.create(temporary)
        guard descriptor >= 0 else { throw failure(directory, "create") }
        return (DirectFileWriter(descriptor: descriptor, direct: direct, path: temporary), descriptor, temporary)
    }

    /// A fresh `.tmp-` name in `directory` (the root when nil), which is created if missing.
    private func temporaryPath(in directory: String?) throws -> String {
        let absolute = try directory.map { try full($0) } ?? root
        do {
            try FileManager.default.createDirectory(atPath: absolute, withIntermediateDirectories: true)
        } catch {
            throw StorageError(path: absolute, message: "cannot create directory: \(error.localizedDescription)")
        }
        return absolute + "/.tmp-" + UUID().uuidString
    }

    /// Writes all of `data`, retrying short writes; names `path` and explains a full disk on failure.
    func writeAll(_ descriptor: Int32, _ data: [UInt8], path: String) throws {
        var done = 0
        while done < data.count {
            let wrote = data.withUnsafeBytes { Glibc.write(descriptor, $0.baseAddress! + done, data.count - done) }
            if wrote < 0 {
                if errno == EINTR { continue }
                throw failure(path, "write")
            }
            done += wrote
        }
    }

    /// fsync, close, rename into place, fsync the directory: after this returns the file survives a power cut.
    /// On failure the descriptor is closed and the temporary file removed.
    func commitTemporaryFile(_ descriptor: Int32, _ temporary: String, to path: String, durable: Bool = true) throws {
        var closed = false
        do {
            let target = try full(path)
            let directory = (target as NSString).deletingLastPathComponent
            guard !durable || fsync(descriptor) == 0 else { throw failure(path, "fsync") }
            closed = true
            guard close(descriptor) == 0 else { throw failure(path, "close") }
            if rename(temporary, target) != 0 {
                guard errno == ENOENT else { throw failure(path, "rename") }
                try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
                guard rename(temporary, target) == 0 else { throw failure(path, "rename") }
            }
            let directoryDescriptor = durable ? open(directory, O_RDONLY | O_DIRECTORY | O_CLOEXEC) : -1
            if directoryDescriptor >= 0 {
                fsync(directoryDescriptor)
                close(directoryDescriptor)
            }
        } catch {
            if !closed { close(descriptor) }
            unlink(temporary)
            throw error
        }
    }

    public func list(_ directory: String) throws -> [String] {
        let path = try full(directory)
        guard let names = try? FileManager.default.contentsOfDirectory(atPath: path) else { return [] }
        return names.filter { !$0.hasPrefix(".tmp-") }.sorted()
    }

    public func remove(_ path: String) throws {
        if unlink(try full(path)) != 0 && errno != ENOENT { throw failure(path, "remove") }
    }

    public func size(_ path: String) throws -> Int? {
        var info = stat()
        guard stat(try full(path), &info) == 0 else {
            // Only a file that is not there is missing: a pack that cannot be looked at (permissions, an I/O error)
            // must not be taken for a lost one.
            if errno == ENOENT || errno == ENOTDIR { return nil }
            throw failure(path, "stat")
        }
        return Int(info.st_size)
    }

    /// Removes temporary files left by an interrupted write (they are never referenced).
    public func removeTemporaryFiles() {
        guard let walker = FileManager.default.enumerator(atPath: root) else { return }
        for case let relative as String in walker where (relative as NSString).lastPathComponent.hasPrefix(".tmp-") {
            unlink(root + "/" + relative)
        }
    }
}

/// A read-only file descriptor, closed when the last user lets go of it.
final class OpenFile: Sendable {
    let descriptor: Int32
    init(_ descriptor: Int32) { self.descriptor = descriptor }
    deinit { close(descriptor) }
}

/// A few recently used open files by path. Readers keep their `OpenFile` while reading, so evicting one never
/// closes a descriptor that is in use.
final class OpenFileCache: Sendable {
    private let capacity: Int
    private let files = Mutex<(byPath: [String: OpenFile], order: [String])>(([:], []))

    init(capacity: Int) { self.capacity = capacity }

    subscript(path: String) -> OpenFile? {
        get { files.withLock { $0.byPath[path] } }
        set {
            files.withLock { files in
                guard let newValue, files.byPath.updateValue(newValue, forKey: path) == nil else { return }
                files.order.append(path)
                if files.order.count > capacity { files.byPath[files.order.removeFirst()] = nil }
            }
        }
    }
}
