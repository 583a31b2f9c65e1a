import CLinux
import Glibc

// Descriptor-relative file-system calls: the one way restore touches anything below its target. Every name is one
// component, resolved in a directory that is already open, and never through a symlink; whatever stands where a
// restored entry goes is removed and made again, never followed or written through. Why: an account owner controls
// the directories in their home and can plant symlinks and hard links there at any time, even during a restore.
//
// openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS) would do the walk in one call, but it needs Linux 5.6 and we support
// 4.18; one openat per directory, with the directory held open while its entries are made, costs about the same.

/// A failed system call on a file: what was being done and errno, so callers can branch on the cause.
public struct FileSystemError: Error, CustomStringConvertible, Sendable {
    public let operation: String
    public let code: Int32

    public init(_ operation: String, code: Int32) {
        self.operation = operation
        self.code = code
    }

    public var description: String {
        switch code {
        case ENOTEMPTY: return "\(operation): a directory with contents is in its place"
        default: return "\(operation): \(String(cString: strerror(code)))"
        }
    }
}

/// Where a file is on its file system (device and inode): the same for as long as the file exists, whatever name
/// it has meanwhile.
public struct FileIdentity: Hashable, Sendable {
    public let device: UInt64
    public let inode: UInt64
}

/// A user and group as the kernel checks file access and owns new files with: a thread's fsuid and fsgid.
public struct FilesystemIdentity: Hashable, Sendable {
    public let uid: uid_t
    public let gid: gid_t

    public init(uid: uid_t, gid: gid_t) {
        self.uid = uid
        self.gid = gid
    }
}

/// The calling thread's file-system identity, switched with setfsuid/setfsgid (on Linux these act on one thread
/// only, unlike setuid) and only when it changes. Create one per thread and use it on that thread alone; `reset` gives
/// the thread the process's identity back and must run before the thread does anything else (reads a repository
/// that only root may read, say). Only root can switch: for anyone else `use` changes nothing, which is right, since
/// such a process lends no rights that the owner of the directory lacks.
public final class ThreadFilesystemIdentity {
    public let process: FilesystemIdentity
    public let canSwitch: Bool
    /// The identity name lookups and new files get now.
    public private(set) var current: FilesystemIdentity

    public init() {
        process = FilesystemIdentity(uid: geteuid(), gid: getegid())
        canSwitch = process.uid == 0
        current = process
    }

    /// Makes `identity` (nil: the process's own) the thread's file-system identity.
    public func use(_ identity: FilesystemIdentity?) throws {
        let wanted = identity ?? process
        guard canSwitch, wanted != current else { return }
        _ = fleetkeep_setfsgid(wanted.gid)
        _ = fleetkeep_setfsuid(wanted.uid)
        // Both calls return the previous value and cannot report a refusal; reading back (with -1, which changes
        // nothing) does. The kernel refuses an id it cannot map, inside a user namespace.
        let user = UInt32(bitPattern: fleetkeep_setfsuid(UInt32.max))
        let group = UInt32(bitPattern: fleetkeep_setfsgid(UInt32.max))
        if user == wanted.uid && group == wanted.gid {
            current = wanted
            return
        }
        current = FilesystemIdentity(uid: user, gid: group)
        reset()
        throw FileSystemError("cannot act as uid \(wanted.uid), gid \(wanted.gid) (the kernel refused setfsuid/setfsgid)", code: EPERM)
    }

    /// Gives the thread the process's own identity back.
    public func reset() {
        guard canSwitch, current != process else { return }
        _ = fleetkeep_setfsuid(process.uid)
        _ = fleetkeep_setfsgid(process.gid)
        current = process
    }
}

/// An open directory, closed when the last reference goes. The descriptor never changes while open, so threads may
/// share it: every call here names one entry inside it and follows no symlink.
public final class DirectoryDescriptor: @unchecked Sendable {
    public let descriptor: Int32
    /// The directory's owner, group and mode when it was opened.
    public let owner: uid_t
    public let group: gid_t
    public let mode: mode_t
    public let identity: FileIdentity

    /// Takes ownership of `descriptor` (an open directory), closing it if it cannot be read.
    init(adopting descriptor: Int32, what: String) throws {
        var info = stat()
        guard fstat(descriptor, &info) == 0 else {
            let code = errno
            close(descriptor)
            throw FileSystemError("cannot read \(FileName.printable(what))", code: code)
        }
        self.descriptor = descriptor
        owner = info.st_uid
        group = info.st_gid
        mode = info.st_mode
        identity = FileIdentity(device: UInt64(info.st_dev), inode: UInt64(info.st_ino))
    }

    deinit { close(descriptor) }

    /// Opens the directory at `path`, following symlinks on the way: only for a path an operator chose (a restore
    /// target given on the command line), never for one inside it.
    public convenience init(trustedPath path: String) throws {
        let descriptor = FileName.withPath(path) { open($0, O_RDONLY | O_DIRECTORY | O_CLOEXEC) }
        guard descriptor >= 0 else { throw FileSystemError("cannot open directory \(FileName.printable(path))", code: errno) }
        try self.init(adopting: descriptor, what: path)
    }

    /// Calls `body` with `name` as a C string and returns 0 when it returned 0, else errno (read before anything
    /// else can change it).
    private func call(_ name: String, _ body: (UnsafePointer<CChar>) -> Int32) -> Int32 {
        FileName.withPath(name) { body($0) == 0 ? 0 : errno }
    }

    /// Opens the directory `name` in this one. A symlink there is not followed (ELOOP); nor is anything else that
    /// is not a directory (ENOTDIR).
    public func openDirectory(_ name: String) throws -> DirectoryDescriptor {
        let opened = FileName.withPath(name) { openat(descriptor, $0, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC) }
        guard opened >= 0 else { throw FileSystemError("cannot open directory \(FileName.printable(name))", code: errno) }
        return try DirectoryDescriptor(adopting: opened, what: name)
    }

    /// Opens the directory `name` in this one, making it with `mode` when it is missing. A symlink or anything else
    /// that is not a directory in its place is removed first (only that name: a file with other hard links keeps
    /// them). Names are made and removed as `creator` (nil: the process's identity) on `thread`; an existing
    /// directory that `creator` may not read is opened as the process, which reads it without writing.
    public func makeDirectory(_ name: String, mode: mode_t, creator: FilesystemIdentity?,
                              thread: ThreadFilesystemIdentity) throws -> (directory: DirectoryDescriptor, made: Bool) {
        try thread.use(creator)
        // A few rounds: whoever controls this directory may put something back between our calls.
        for _ in 0..<4 {
            let madeCode = call(name) { mkdirat(descriptor, $0, mode) }
            guard madeCode == 0 || madeCode == EEXIST else {
                throw FileSystemError("cannot create directory \(FileName.printable(name))", code: madeCode)
            }
            var opened = FileName.withPath(name) { openat(descriptor, $0, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC) }
            var code = opened < 0 ? errno : 0
            if code == EACCES && thread.current != thread.process {
                try thread.use(nil)
                opened = FileName.withPath(name) { openat(descriptor, $0, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC) }
                code = opened < 0 ? errno : 0
                try thread.use(creator)
            }
            if opened >= 0 { return (try DirectoryDescriptor(adopting: opened, what: name), madeCode == 0) }
            switch code {
            case ELOOP, ENOTDIR: try removeEntry(name)
            case ENOENT: continue
            default: throw FileSystemError("cannot open directory \(FileName.printable(name))", code: code)
            }
        }
        throw FileSystemError("cannot create directory \(FileName.printable(name)): something else keeps taking its place", code: EAGAIN)
    }

    /// Opens (making what is missing) the directories `components` below this one, one at a time, each as
    /// `makeDirectory` does. A directory is made as the owner of the one it is made in when that is not root, so
    /// root's rights are not lent to a directory someone else controls.
    ///
    /// These are the components between an operator's path and what is restored (`home/USER` below a `--target`).
    /// A symlink among them is followed only when root placed it: it is root's, in a directory that is root's and
    /// that no one else may change (an operator's `/home -> /data/home`). The path it names is walked by the same
    /// rules and nothing is made along it. Any other symlink is replaced by a directory.
    /// `made`: for each component, whether it was made here (not there before, nor reached through a symlink).
    public func makeDirectories(_ components: [String], mode: mode_t,
                                thread: ThreadFilesystemIdentity) throws -> (directory: DirectoryDescriptor, made: [Bool]) {
        var directory = self
        var made: [Bool] = []
        for component in components {
            if directory.isRootPlacedSymlink(component) {
                directory = try directory.followRootPlacedSymlink(component, depth: 0)
                made.append(false)
                continue
            }
            let creator = directory.owner == 0 ? nil : FilesystemIdentity(uid: directory.owner, gid: directory.group)
            let step = try directory.makeDirectory(component, mode: mode, creator: creator, thread: thread)
            directory = step.directory
            made.append(step.made)
        }
        return (directory, made)
    }

    /// Whether no one but root can add, remove or rename entries here: root's, and writable by no one else unless
    /// sticky (then others cannot touch root's entries).
    private var onlyRootChangesEntries: Bool { owner == 0 && (mode & 0o022 == 0 || mode & S_ISVTX != 0) }

    /// Whether `name` here is a symlink that root placed (see `makeDirectories`).
    private func isRootPlacedSymlink(_ name: String) -> Bool {
        var info = stat()
        return FileName.withPath(name, { fstatat(descriptor, $0, &info, AT_SYMLINK_NOFOLLOW) }) == 0
            && info.st_mode & S_IFMT == S_IFLNK && info.st_uid == 0 && onlyRootChangesEntries
    }

    /// The directory the root-placed symlink `name` here names, walked one component at a time: a component that is
    /// a symlink is followed only if root placed it too (at most 8 deep), and nothing is made.
    private func followRootPlacedSymlink(_ name: String, depth: Int) throws -> DirectoryDescriptor {
        guard depth < 8 else { throw FileSystemError("cannot follow \(FileName.printable(name))", code: ELOOP) }
        var buffer = [CChar](repeating: 0, count: Int(PATH_MAX) + 1)
        let length = FileName.withPath(name) { readlinkat(descriptor, $0, &buffer, buffer.count - 1) }
        guard length > 0 else { throw FileSystemError("cannot read symlink \(FileName.printable(name))", code: length < 0 ? errno : ENOENT) }
        let target = FileName.string(from: buffer[0..<length].map { UInt8(bitPattern: $0) })
        var directory = target.hasPrefix("/") ? try DirectoryDescriptor(trustedPath: "/") : self
        for component in target.split(separator: "/").map(String.init) where component != "." {
            if component == ".." {
                directory = try directory.openDirectory("..")
            } else if directory.isRootPlacedSymlink(component) {
                directory = try directory.followRootPlacedSymlink(component, depth: depth + 1)
            } else {
                // A symlink here that root did not place is refused (ELOOP), not followed.
                directory = try directory.openDirectory(component)
            }
        }
        return directory
    }

    /// Removes the entry `name` here, whatever it is (a directory only when empty); a missing one is no error.
    public func removeEntry(_ name: String) throws {
        var code = call(name) { unlinkat(descriptor, $0, 0) }
        if code == EISDIR { code = call(name) { unlinkat(descriptor, $0, AT_REMOVEDIR) } }
        guard code == 0 || code == ENOENT else { throw FileSystemError("cannot replace \(FileName.printable(name))", code: code) }
    }

    /// Creates `name` here as a new, empty file open for writing (`O_CREAT|O_EXCL|O_NOFOLLOW`) with `mode`, as
    /// `creator` on `thread`. Whatever is there first (a symlink, a file with other hard links, an empty directory) is
    /// removed, never followed or written through. The caller closes the returned descriptor.
    public func createFile(_ name: String, mode: mode_t, creator: FilesystemIdentity?, thread: ThreadFilesystemIdentity) throws -> Int32 {
        try thread.use(creator)
        for _ in 0..<4 {
            let created = FileName.withPath(name) { openat(descriptor, $0, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, mode) }
            if created >= 0 { return created }
            let code = errno
            guard code == EEXIST else { throw FileSystemError("cannot create", code: code) }
            try removeEntry(name)
        }
        throw FileSystemError("cannot create: something else keeps taking its place", code: EAGAIN)
    }

    /// Makes `name` here a symlink to `target`, as `creator` on `thread`, replacing whatever is there.
    public func makeSymlink(_ name: String, to target: String, creator: FilesystemIdentity?, thread: ThreadFilesystemIdentity) throws {
        try thread.use(creator)
        for _ in 0..<4 {
            let code = call(name) { link in FileName.withPath(target) { symlinkat($0, descriptor, link) } }
            if code == 0 { return }
            guard code == EEXIST else { throw FileSystemError("cannot create symlink", code: code) }
            try removeEntry(name)
        }
        throw FileSystemError("cannot create symlink: something else keeps taking its place", code: EAGAIN)
    }

    /// Makes `name` here a hard link to `sourceName` in `source` (never following a symlink there), as `creator`
    /// on `thread`, replacing whatever is at `name`.
    public func makeHardLink(_ name: String, to sourceName: String, in source: DirectoryDescriptor, creator: FilesystemIdentity?,
                             thread: ThreadFilesystemIdentity) throws {
        try thread.use(creator)
        for _ in 0..<4 {
            let code = call(name) { link in FileName.withPath(sourceName) { linkat(source.descriptor, $0, descriptor, link, 0) } }
            if code == 0 { return }
            guard code == EEXIST else { throw FileSystemError("cannot create hard link", code: code) }
            try removeEntry(name)
        }
        throw FileSystemError("cannot create hard link: something else keeps taking its place", code: EAGAIN)
    }

    /// Makes `name` here a FIFO with `mode`, as `creator` on `thread`, replacing whatever is there.
    public func makeFIFO(_ name: String, mode: mode_t, creator: FilesystemIdentity?, thread: ThreadFilesystemIdentity) throws {
        try thread.use(creator)
        for _ in 0..<4 {
            let code = call(name) { mkfifoat(descriptor, $0, mode) }
            if code == 0 { return }
            guard code == EEXIST else { throw FileSystemError("cannot create FIFO", code: code) }
            try removeEntry(name)
        }
        throw FileSystemError("cannot create FIFO: something else keeps taking its place", code: EAGAIN)
    }

    /// Sets the access and modification times of `name` here (a symlink itself, not what it points at), with the
    /// thread's current identity.
    public func setTimes(_ name: String, modified nanoseconds: Int64) throws {
        var times = timestamps(nanoseconds)
        let code = call(name) { utimensat(descriptor, $0, &times, AT_SYMLINK_NOFOLLOW) }
        guard code == 0 else { throw FileSystemError("cannot set times", code: code) }
    }

    /// Sets the owner of the symlink `name` here through a descriptor of the link itself (`O_PATH|O_NOFOLLOW`),
    /// once that descriptor shows a symlink: if the name was swapped for another file (a hard link to something
    /// outside, say), nothing is changed.
    public func setSymlinkOwner(_ name: String, uid: uid_t, gid: gid_t) throws {
        try setOwner(name, kind: S_IFLNK, uid: uid, gid: gid)
    }

    /// Sets the owner of `name` here, a file of type `kind` (`S_IFLNK`, `S_IFIFO`), through a descriptor of the
    /// entry itself (`O_PATH|O_NOFOLLOW`, which opens neither a link's target nor a FIFO), once that descriptor
    /// shows that type: if the name was swapped for another file, nothing is changed.
    public func setOwner(_ name: String, kind: mode_t, uid: uid_t, gid: gid_t) throws {
        let link = FileName.withPath(name) { openat(descriptor, $0, fleetkeep_o_path() | O_NOFOLLOW | O_CLOEXEC) }
        guard link >= 0 else { throw FileSystemError("cannot set owner", code: errno) }
        defer { close(link) }
        var info = stat()
        guard fstat(link, &info) == 0 else { throw FileSystemError("cannot set owner", code: errno) }
        guard info.st_mode & S_IFMT == kind else { throw FileSystemError("cannot set owner: it was replaced by another kind of file", code: EAGAIN) }
        // Just made here, it has one name. A second one means the name was swapped for a hard link to someone else's
        // file of the same kind, whose owner must not change.
        guard info.st_nlink == 1 else { throw FileSystemError("cannot set owner: it was replaced by a hard link", code: EAGAIN) }
        guard fchownat(link, "", uid, gid, fleetkeep_at_empty_path()) == 0 else { throw FileSystemError("cannot set owner", code: errno) }
    }

    /// Writes the file `name` here through a new temporary name (`O_CREAT|O_EXCL|O_NOFOLLOW`, `mode` from its
    /// creation, owned by the thread's identity) that `write` fills and that is then renamed over whatever is at
    /// `name`. What was there is replaced, never followed or written through, and a reader sees either it or the
    /// whole new file. On failure the temporary file is removed.
    public func replaceFile(_ name: String, mode: mode_t, _ write: (Int32) throws -> Void) throws {
        var random = SystemRandomNumberGenerator()
        let temporary = ".\(name).fleetkeep-\(String(random.next() as UInt64, radix: 16))"
        let file = FileName.withPath(temporary) { openat(descriptor, $0, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, mode) }
        guard file >= 0 else { throw FileSystemError("cannot create \(FileName.printable(name))", code: errno) }
        var open = true
        do {
            try write(file)
            // The umask may have narrowed `mode` at creation.
            guard fchmod(file, mode) == 0 else { throw FileSystemError("cannot set the mode of \(FileName.printable(name))", code: errno) }
            open = false
            guard close(file) == 0 else { throw FileSystemError("cannot write \(FileName.printable(name))", code: errno) }
            let code = call(temporary) { from in FileName.withPath(name) { renameat(descriptor, from, descriptor, $0) } }
            guard code == 0 else { throw FileSystemError("cannot put \(FileName.printable(name)) in place", code: code) }
        } catch {
            if open { close(file) }
            _ = call(temporary) { unlinkat(descriptor, $0, 0) }
            throw error
        }
    }
}

/// Access and modification times, both `nanoseconds` since the epoch, for utimensat/futimens.
func timestamps(_ nanoseconds: Int64) -> [timespec] {
    // Rounded down, so a time before 1970 keeps its nanoseconds in 0..<1e9 as the kernel requires.
    var seconds = nanoseconds / 1_000_000_000, rest = nanoseconds % 1_000_000_000
    if rest < 0 { seconds -= 1; rest += 1_000_000_000 }
    let time = timespec(tv_sec: Int(seconds), tv_nsec: Int(rest))
    return [time, time]
}
