import Foundation
import Posix
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
    /// Where a backup writes its next pack. A local disk streams it into a temporary file as blobs arrive, so no pack
    /// is held in memory; a storage that can only write whole files gets the default, which buffers the pack.
    ///
    /// This and the two below have defaults (for remote storages), unlike `stage`: a storage that wraps another must
    /// forward all three, or it quietly buffers whole packs and loses the wrapped storage's caches.
    func makePackSink() throws -> any PackSink
    /// The directory on this machine that holds the repository's caches (index, snapshots, directory listings) when
    /// its opener names none, or nil: a remote storage has no such place, and its opener chooses one.
    var defaultCacheDirectory: String? { get }
    /// Removes what interrupted writes left under temporary names. Such files are never referenced.
    func removeTemporaryFiles()
    /// A hint that `length` bytes at `offset` of `path` will be read soon: a storage that can start reading them
    /// without waiting does (a local disk asks the kernel); the default does nothing. Never fails: a hint that cannot
    /// be given costs only the wait it would have saved.
    func prefetch(_ path: String, offset: Int, length: Int)
    /// Writes several files, each as `write` does: whole and durable under its name once this returns. A local disk
    /// makes them durable together (`AtomicFile.writeTogether`); the default writes them one after another.
    /// `madeDurable` is called with how many files, from the first, are durable so far; if this throws, those are in
    /// place, and some of the others may be, each of them whole.
    func writeTogether(_ files: [(path: String, data: [UInt8])], madeDurable: (Int) -> Void) throws
}

extension RepositoryStorage {
    public func makePackSink() throws -> any PackSink { MemoryPackSink(storage: self) }
    public var defaultCacheDirectory: String? { nil }
    /// Nothing to do by default: a remote storage's leftover temporary names are removed by its own next write
    /// session (the off-site push does so).
    public func removeTemporaryFiles() {}
    public func prefetch(_ path: String, offset: Int, length: Int) {}
    public func writeTogether(_ files: [(path: String, data: [UInt8])], madeDurable: (Int) -> Void) throws {
        for (index, file) in files.enumerated() {
            try write(file.path, file.data)
            madeDurable(index + 1)
        }
    }
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
    public var defaultCacheDirectory: String? { root + "/cache" }
    public func makePackSink() throws -> any PackSink { try FilePackSink(storage: self) }

    private func full(_ path: String) throws -> String {
        try validateRepositoryPath(path)
        return root + "/" + path
    }

    /// The failed system call as a storage error on the repository file `path`, with the next step when the cause
    /// is the disk or permissions rather than the repository.
    private func failure(_ path: String, _ error: Errno) -> StorageError {
        var message = "\(error.operation) failed: \(error.text)"
        if error == .noSpace { message += " (the disk holding the repository is full; free space and run the command again)" }
        if error == .accessDenied || error == .notPermitted { message += " (check permissions of \(root))" }
        return StorageError(path: root + "/" + path, message: message)
    }

    public func read(_ path: String) throws -> [UInt8] {
        guard let size = try size(path) else { throw StorageError(path: root + "/" + path, message: "missing") }
        return try read(path, offset: 0, length: size)
    }

    public func read(_ path: String, offset: Int, length: Int) throws -> [UInt8] {
        let file = try openForReading(path)
        let bytes: [UInt8]?
        do throws(Errno) {
            bytes = try file.descriptor.read(count: length, at: offset)
        } catch {
            throw failure(path, error)
        }
        guard let bytes else { throw StorageError(path: root + "/" + path, message: "file is shorter than expected (truncated?)") }
        return bytes
    }

    /// posix_fadvise(WILLNEED): the kernel starts reading the range into the page cache and returns at once.
    public func prefetch(_ path: String, offset: Int, length: Int) {
        guard offset >= 0, length > 0, let file = try? openForReading(path) else { return }
        _ = posix_fadvise(file.descriptor.rawValue, off_t(offset), off_t(length), POSIX_FADV_WILLNEED)
    }

    /// `path` opened for reading: a pack from the cache of open packs, anything else opened anew.
    private func openForReading(_ path: String) throws -> OpenFile {
        if path.hasPrefix("data/"), let cached = openPacks[path] { return cached }
        let absolute = try full(path)
        let file: OpenFile
        let info: stat
        do throws(Errno) {
            // O_NONBLOCK: opening a FIFO put in a repository file's place would wait for a writer for ever.
            file = OpenFile(try FileDescriptor.open(absolute, O_RDONLY | O_NONBLOCK))
            info = try file.descriptor.status()
        } catch {
            throw failure(path, error)
        }
        guard info.st_mode & S_IFMT == S_IFREG else {
            throw StorageError(path: root + "/" + path, message: "is not a regular file (something else stands where the repository "
                + "keeps this file); move it away, then run `fleetkeep-agent verify`")
        }
        // Packs never change once written (their names are random and never reused), so an open one stays valid.
        if path.hasPrefix("data/") { openPacks[path] = file }
        return file
    }

    public func write(_ path: String, _ data: [UInt8]) throws {
        let target = try full(path)
        do throws(Errno) {
            // Lock leases are advisory and expire on their own, so they skip the (slow) flushes to disk.
            try AtomicFile.write(data, to: target, permissions: 0o600, durable: !path.hasPrefix("locks/"),
                                 missingDirectory: .create(permissions: 0o777))
        } catch {
            throw failure(path, error)
        }
    }

    /// The files are synced as a group, renamed, and then each directory is synced once (`AtomicFile.writeTogether`).
    public func writeTogether(_ files: [(path: String, data: [UInt8])], madeDurable: (Int) -> Void) throws {
        let targets = try files.map { (path: try full($0.path), bytes: $0.data) }
        do throws(Errno) {
            try AtomicFile.writeTogether(targets, permissions: 0o600, missingDirectory: .create(permissions: 0o777),
                                         madeDurable: madeDurable)
        } catch {
            // The Errno names the absolute path; the storage error names it relative to the repository.
            let prefix = root + "/"
            throw failure(error.path.hasPrefix(prefix) ? String(error.path.dropFirst(prefix.count)) : error.path, error)
        }
    }

    /// A new temporary file in `data/` for a pack, filled through a `DirectFileWriter` (packs: large, written once,
    /// rarely read back soon). `list` never shows it; `commit` puts it in place.
    func createPackFile() throws -> TemporaryFile {
        let directory = try full("data")
        do throws(Errno) {
            try Directory.create(directory, permissions: 0o777, withParents: true, durable: true)
            return try DirectFileWriter.createTemporaryFile(in: directory)
        } catch {
            throw failure("data", error)
        }
    }

    /// Puts `file` in place as `path`, durably (fsync, rename, fsync of the directory, which is created if
    /// missing): after this returns the file survives a power cut. On failure the temporary file is removed.
    func commit(_ file: consuming TemporaryFile, to path: String) throws {
        let target = try full(path)
        do throws(Errno) {
            try file.commit(to: target, durable: true, missingDirectory: .create(permissions: 0o777))
        } catch {
            throw failure(path, error)
        }
    }

    public func list(_ directory: String) throws -> [String] {
        let path = try full(directory)
        let entries: [DirectoryEntry]
        do throws(Errno) {
            entries = try Directory.entries(at: path)
        } catch where error == .notFound || error == .notDirectory {
            return []
        } catch {
            // An unreadable directory is not an empty one: taken for empty, its packs would look lost.
            throw failure(directory, error)
        }
        // Repository files have ASCII names; anything else in here is not ours.
        return entries.compactMap(\.name).filter { !$0.hasPrefix(TemporaryFile.namePrefix) }.sorted()
    }

    public func remove(_ path: String) throws {
        let absolute = try full(path)
        if unlink(absolute) != 0 && errno != ENOENT { throw failure(path, Errno.current("remove", path: absolute)) }
    }

    public func size(_ path: String) throws -> Int? {
        let absolute = try full(path)
        var info = stat()
        guard stat(absolute, &info) == 0 else {
            let error = Errno.current("stat", path: absolute)
            // Only a file that is not there is missing: a pack that cannot be looked at (permissions, an I/O error)
            // must not be taken for a lost one.
            if error == .notFound || error == .notDirectory { return nil }
            throw failure(path, error)
        }
        return Int(info.st_size)
    }

    /// Removes temporary files left by an interrupted write (they are never referenced). The caches are left
    /// alone: every process that opens the repository writes them, without a lock, so one may be writing now.
    public func removeTemporaryFiles() {
        guard let walker = FileManager.default.enumerator(atPath: root) else { return }
        for case let relative as String in walker {
            if relative == "cache" {
                walker.skipDescendants()
            } else if (relative as NSString).lastPathComponent.hasPrefix(TemporaryFile.namePrefix) {
                unlink(root + "/" + relative)
            }
        }
    }
}

/// A read-only file shared by the threads reading it, closed when the last one lets go of it.
final class OpenFile: Sendable {
    let descriptor: FileDescriptor
    init(_ descriptor: consuming FileDescriptor) { self.descriptor = descriptor }
}

/// A few recently used open files by path. Readers keep their `OpenFile` while reading, so evicting one never
/// closes a descriptor that is in use.
final class OpenFileCache: Sendable {
    private let capacity: Int
    /// Read-mostly: a backup's scanner threads each look up a pack for every parent tree they load, and under a
    /// mutex they queued for each other.
    private let files = ReadWriteLock<(byPath: [String: OpenFile], order: [String])>(([:], []))

    init(capacity: Int) { self.capacity = capacity }

    subscript(path: String) -> OpenFile? {
        get { files.read { $0.byPath[path] } }
        set {
            files.write { files in
                guard let newValue, files.byPath.updateValue(newValue, forKey: path) == nil else { return }
                files.order.append(path)
                if files.order.count > capacity { files.byPath[files.order.removeFirst()] = nil }
            }
        }
    }
}
