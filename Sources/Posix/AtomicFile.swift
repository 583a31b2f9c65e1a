import Glibc

/// What to do when the directory a file goes into does not exist.
public enum MissingDirectory: Sendable {
    /// Fail with `ENOENT`: the directory's absence is an error worth reporting (a wrong --state directory).
    case fail
    /// Create it and its missing parents with these permissions (less the umask). When the write is durable, so is
    /// each directory made: it is synced into its parent.
    case create(permissions: mode_t)
}

/// Replaces whole files so that a reader, or the file after a crash, is either the old content or the new one,
/// never a mix or a truncated file.
public enum AtomicFile {
    /// Writes `bytes` to a new temporary file next to `path`, with exactly `permissions` (0600 for secrets, whatever
    /// the umask), and renames it over `path`. When `durable`, the file and then its directory are synced, so the
    /// new content survives a power cut once this returns; caches that can be rebuilt skip that cost. On failure
    /// `path` is untouched and the temporary file removed; the `Errno` names the step and the file.
    public static func write(_ bytes: [UInt8], to path: String, permissions: mode_t, durable: Bool,
                             missingDirectory: MissingDirectory = .fail) throws(Errno) {
        do throws(Errno) {
            let directory = Directory.parentDirectory(of: path)
            if case .create(let directoryPermissions) = missingDirectory {
                try Directory.create(directory, permissions: directoryPermissions, withParents: true, durable: durable)
            }
            let temporary = try TemporaryFile.create(in: directory, permissions: permissions)
            try temporary.file.write(all: bytes)
            try temporary.commit(to: path, durable: durable)
        } catch {
            // The caller asked for `path`; the temporary name it never saw would only confuse the message.
            throw Errno(code: error.code, operation: error.operation, path: path)
        }
    }

    /// How many files `writeTogether` holds open at once: a backup of thousands of accounts records thousands of
    /// snapshots in one commit, and the descriptor limit may be 1,024.
    static let filesPerGroup = 256

    /// Writes several files as `write` does with `durable`, but makes them durable together: every file of a group
    /// (up to 256 files, in order) is written, then each is synced, then all are renamed into place, then each
    /// directory they went into is synced once. One after another, each file cost two syncs that waited for the device
    /// (its own and its directory's); together, a journalling file system commits many files' changes in one go, and
    /// the directories are synced once per group instead of once per file. `madeDurable` is called after each group
    /// with how many files, from the first, are now durable in place.
    ///
    /// A failure before a group's renames (a write, a sync, a missing directory) leaves every target of that group as
    /// it was and no temporary file; the groups before it stay in place, durable. A rename that fails leaves the files
    /// of its group renamed before it in place, whole (their directories are synced, best effort), and the rest as
    /// they were. The `Errno` names the file, or the directory whose sync failed.
    public static func writeTogether(_ files: [(path: String, bytes: [UInt8])], permissions: mode_t,
                                     missingDirectory: MissingDirectory = .fail,
                                     madeDurable: (Int) -> Void = { _ in }) throws(Errno) {
        try writeTogether(files, permissions: permissions, missingDirectory: missingDirectory, groupSize: filesPerGroup,
                          madeDurable: madeDurable)
    }

    /// `writeTogether` with another group size, for tests.
    static func writeTogether(_ files: [(path: String, bytes: [UInt8])], permissions: mode_t, missingDirectory: MissingDirectory,
                              groupSize: Int, madeDurable: (Int) -> Void) throws(Errno) {
        var start = files.startIndex
        while start < files.endIndex {
            let end = min(files.endIndex, start + max(1, groupSize))
            try writeGroup(files[start..<end], permissions: permissions, missingDirectory: missingDirectory)
            madeDurable(end - files.startIndex)
            start = end
        }
    }

    /// A written temporary file waiting to be put in place; its temporary name is removed if it never is.
    private final class PendingFile {
        var temporary: TemporaryFile?
        let target: String

        init(_ temporary: consuming TemporaryFile, target: String) {
            self.temporary = consume temporary
            self.target = target
        }
    }

    private static func writeGroup(_ files: ArraySlice<(path: String, bytes: [UInt8])>, permissions: mode_t,
                                   missingDirectory: MissingDirectory) throws(Errno) {
        var pending: [PendingFile] = []
        pending.reserveCapacity(files.count)
        var directories: [String] = []
        for (path, bytes) in files {
            do throws(Errno) {
                let directory = Directory.parentDirectory(of: path)
                if !directories.contains(directory) {
                    if case .create(let directoryPermissions) = missingDirectory {
                        try Directory.create(directory, permissions: directoryPermissions, withParents: true, durable: true)
                    }
                    directories.append(directory)
                }
                let temporary = try TemporaryFile.create(in: directory, permissions: permissions)
                try temporary.file.write(all: bytes)
                pending.append(PendingFile(temporary, target: path))
            } catch {
                throw Errno(code: error.code, operation: error.operation, path: path)
            }
        }
        for file in pending {
            do throws(Errno) {
                try file.temporary?.file.sync()
            } catch {
                throw Errno(code: error.code, operation: error.operation, path: file.target)
            }
        }
        do throws(Errno) {
            for file in pending {
                guard let temporary = file.temporary.take() else { continue }
                try temporary.commit(to: file.target, durable: false)
            }
        } catch {
            // The files renamed before the failure stay: make them as durable as can be before reporting it.
            for directory in directories { try? Directory.sync(directory) }
            throw error
        }
        for directory in directories { try Directory.sync(directory) }
    }
}

/// A new file under a temporary name (`.tmp-` and 16 random hex digits), for content written in pieces (a pack
/// streamed as blobs arrive) and then put in place whole by `commit`. Dropped without a commit, it is closed and
/// removed, so no failure path can leave one behind.
public struct TemporaryFile: ~Copyable, Sendable {
    /// The prefix of every temporary name, so listings can leave them out and cleanups find them.
    public static let namePrefix = ".tmp-"

    public let file: FileDescriptor
    /// Set by a successful `commit`: the name is then the target's and must not be removed.
    private var isCommitted = false

    public var path: String { file.path }

    private init(file: consuming FileDescriptor) {
        self.file = file
    }

    /// Creates the file in `directory` (which must exist) with exactly `permissions`. `flags` are added to
    /// `O_CREAT | O_EXCL`; give at least the access mode (`O_WRONLY` or `O_RDWR`), and `O_DIRECT` for unbuffered
    /// writes.
    public static func create(in directory: String, permissions: mode_t, flags: Int32 = O_WRONLY) throws(Errno) -> TemporaryFile {
        var attempts = 0
        while true {
            let path = directory + "/" + namePrefix + randomSuffix()
            let file: FileDescriptor
            do throws(Errno) {
                file = try FileDescriptor.open(path, flags | O_CREAT | O_EXCL, permissions: permissions)
            } catch where error == .exists && attempts < 8 {
                // Sixty-four random bits collide only when something else is making these names; try another.
                attempts += 1
                continue
            } catch {
                throw Errno(code: error.code, operation: "create temporary file", path: path)
            }
            let temporary = TemporaryFile(file: file)
            // The umask may have removed bits that were asked for.
            try temporary.file.setPermissions(permissions)
            return temporary
        }
    }

    /// Puts the file in place as `target`: fsync (when `durable`), rename over `target`, fsync `target`'s directory
    /// (when `durable`). `target` may be in another directory of the same file system; `missingDirectory` says
    /// what to do when that directory does not exist. On failure the temporary file is removed and `target` keeps
    /// what it had.
    public consuming func commit(to target: String, durable: Bool, missingDirectory: MissingDirectory = .fail) throws(Errno) {
        if durable { try file.sync() }
        if rename(path, target) != 0 {
            let failure = Errno.current("rename", path: target)
            guard failure == .notFound, case .create(let permissions) = missingDirectory else { throw failure }
            try Directory.create(Directory.parentDirectory(of: target), permissions: permissions, withParents: true, durable: durable)
            guard rename(path, target) == 0 else { throw Errno.current("rename", path: target) }
        }
        isCommitted = true
        // The descriptor closes when this returns, unchecked: after a sync close has nothing left to report, and
        // without one nothing was promised.
        if durable { try Directory.sync(Directory.parentDirectory(of: target)) }
    }

    /// Puts the file in place as `target` only when nothing is there yet (`link`, then the temporary name goes):
    /// for files that must never be replaced, such as a key. Throws `EEXIST` when `target` exists; of two
    /// processes racing, exactly one wins.
    public consuming func commitUnlessExists(to target: String, durable: Bool) throws(Errno) {
        if durable { try file.sync() }
        guard link(path, target) == 0 else { throw Errno.current("link", path: target) }
        // The temporary name is removed when this returns (it is not `isCommitted`); the file lives on as `target`.
        if durable { try Directory.sync(Directory.parentDirectory(of: target)) }
    }

    deinit {
        if !isCommitted { unlink(path) }
    }

    private static func randomSuffix() -> String {
        let digits = String(UInt64.random(in: .min ... .max), radix: 16)
        return String(repeating: "0", count: 16 - digits.count) + digits
    }
}
