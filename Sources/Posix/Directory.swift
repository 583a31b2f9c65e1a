import CLinux
import Glibc

/// One name in a directory, as `readdir` gave it.
public struct DirectoryEntry: Hashable, Sendable {
    public enum Kind: Hashable, Sendable {
        case regular, directory, symbolicLink, other
        /// The file system does not say (some network and older file systems); `stat` the entry to know.
        case unknown
    }

    /// The name's bytes without the terminating NUL. Linux names are bytes: they need not be UTF-8.
    public let nameBytes: [UInt8]
    public let kind: Kind

    public init(nameBytes: [UInt8], kind: Kind) {
        self.nameBytes = nameBytes
        self.kind = kind
    }

    /// The name as text; nil when its bytes are not UTF-8 (never a lossy guess that would name another file).
    public var name: String? { String(validating: nameBytes, as: UTF8.self) }
}

public enum Directory {
    /// The entries of the directory `path`, without "." and "..", in the order the file system gives them.
    ///
    /// An array rather than a lazy sequence: `readdir` can fail half way (an I/O error, a directory removed while
    /// being read), and an iterator's `next` could not throw it, so a caller would take a partial listing for the
    /// whole. Listings read here are small; the backup's tree walk, which lists every directory of a server, uses
    /// `names(inOpen:path:)`.
    public static func entries(at path: String) throws(Errno) -> [DirectoryEntry] {
        guard let stream = opendir(path) else { throw Errno.current("list", path: path) }
        defer { closedir(stream) }
        var entries: [DirectoryEntry] = []
        while true {
            // readdir returns nil both at the end and on an error; only errno tells them apart.
            errno = 0
            guard let entry = readdir(stream) else {
                if errno != 0 { throw Errno.current("list", path: path) }
                return entries
            }
            let nameBytes = withUnsafeBytes(of: entry.pointee.d_name) { raw in Array(raw.prefix { $0 != 0 }) }
            if nameBytes == [0x2E] || nameBytes == [0x2E, 0x2E] { continue }
            entries.append(DirectoryEntry(nameBytes: nameBytes, kind: kind(ofDirectoryEntryType: entry.pointee.d_type)))
        }
    }

    /// The names in the directory open at `descriptor`, each with its terminating NUL (for the `*at` calls), in the
    /// order the file system gives them, without "." and "..". `path` names it in errors.
    ///
    /// Read with getdents64 from the descriptor's current offset, which it moves to the end: `fdopendir` would take
    /// the descriptor over, so a caller that keeps using it (for `fstatat` and `openat`) needed a duplicate, and a
    /// dup, two fcntl, an fstat and a close more per directory were a fifth of the system calls of a backup's
    /// unchanged re-run. A directory removed after it was opened lists as empty: getdents64 says ENOENT, which
    /// readdir(3) also takes for the end. A record the kernel returns malformed (a broken file system driver) is
    /// `EIO`, never a read outside the buffer.
    public static func names(inOpen descriptor: Int32, path: String) throws(Errno) -> [[CChar]] {
        // glibc's readdir reads 32 KiB at a time as well.
        let bufferSize = 32 << 10
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: bufferSize, alignment: 8)
        defer { buffer.deallocate() }
        guard let base = buffer.baseAddress else { return [] }
        // Offsets in a struct linux_dirent64: d_ino (8 bytes), d_off (8), d_reclen (2), d_type (1), d_name.
        let lengthOffset = 16, nameOffset = 19
        var names: [[CChar]] = []
        while true {
            let filled = fleetkeep_getdents64(descriptor, base, UInt(bufferSize))
            if filled == 0 { break }
            if filled < 0 {
                if errno == ENOENT { break }
                // FUSE and NFS may be interrupted by a signal; the offset has not moved.
                if errno == EINTR { continue }
                throw Errno.current("list", path: path)
            }
            guard filled <= bufferSize else { throw Errno(code: EIO, operation: "list", path: path) }
            var offset = 0
            while offset < filled {
                guard filled - offset > nameOffset else { break }
                let length = Int(buffer.loadUnaligned(fromByteOffset: offset + lengthOffset, as: UInt16.self))
                guard length > nameOffset, length <= filled - offset else { throw Errno(code: EIO, operation: "list", path: path) }
                let name = (base + offset + nameOffset).assumingMemoryBound(to: CChar.self)
                let nameLength = strnlen(name, length - nameOffset)
                // A name must end inside its record: the NUL copied below is the record's own.
                guard nameLength < length - nameOffset else { throw Errno(code: EIO, operation: "list", path: path) }
                offset += length
                if nameLength == 0 || (name[0] == 0x2E && (nameLength == 1 || (nameLength == 2 && name[1] == 0x2E))) { continue }
                names.append(Array(UnsafeBufferPointer(start: name, count: nameLength + 1)))
            }
        }
        return names
    }

    /// Creates the directory `path` with `permissions` (less the umask), and its missing parents when
    /// `withParents`. A directory already there is fine; anything else there is `EEXIST`.
    ///
    /// When `durable`, every directory this call makes is synced into its parent (the parent is synced right after
    /// the `mkdir`, from the top down). Syncing a file, or a directory, does not sync the entry that names it: a file
    /// synced into a new directory whose own entry was never synced is lost with that directory after a power cut.
    public static func create(_ path: String, permissions: mode_t, withParents: Bool, durable: Bool = false) throws(Errno) {
        try create(path, permissions: permissions, withParents: withParents,
                   syncParent: durable ? { parent throws(Errno) in try sync(parent) } : nil)
    }

    /// A directory for secrets (an agent's state, a controller's data): made with mode 0700 (missing parents 0755),
    /// durably, and an existing one tightened to 0700.
    public static func createPrivate(_ path: String) throws(Errno) {
        let parent = parentDirectory(of: path)
        if parent != path { try create(parent, permissions: 0o755, withParents: true, durable: true) }
        try create(path, permissions: 0o700, withParents: false, durable: true)
        guard chmod(path, 0o700) == 0 else { throw Errno.current("chmod", path: path) }
    }

    /// `create` with the parent's sync given, for tests.
    static func create(_ path: String, permissions: mode_t, withParents: Bool,
                       syncParent: ((String) throws(Errno) -> Void)?) throws(Errno) {
        if try makeDirectory(path, permissions: permissions, syncParent: syncParent) { return }
        var failure = Errno.current("create directory", path: path)
        if failure == .notFound && withParents {
            let parent = parentDirectory(of: path)
            if parent != path {
                try create(parent, permissions: permissions, withParents: true, syncParent: syncParent)
                if try makeDirectory(path, permissions: permissions, syncParent: syncParent) { return }
                failure = Errno.current("create directory", path: path)
            }
        }
        // Another process may have made it meanwhile; only a directory will do. (Its entry is that process's to sync.)
        if failure == .exists && isDirectory(path) { return }
        throw failure
    }

    /// One `mkdir`; false (with `errno` set) when it failed. A made directory is synced into its parent when asked.
    private static func makeDirectory(_ path: String, permissions: mode_t,
                                      syncParent: ((String) throws(Errno) -> Void)?) throws(Errno) -> Bool {
        guard mkdir(path, permissions) == 0 else { return false }
        try syncParent?(parentDirectory(of: path))
        return true
    }

    /// Waits until the directory's entries (a rename or a new file in it) are on the disk.
    /// File systems that cannot sync a directory (EINVAL) are taken as having nothing to sync.
    public static func sync(_ path: String) throws(Errno) {
        do throws(Errno) {
            try FileDescriptor.open(path, O_RDONLY | O_DIRECTORY).sync()
        } catch where error == .invalidArgument {
            return
        } catch {
            throw Errno(code: error.code, operation: "sync directory", path: path)
        }
    }

    /// The directory holding `path`: "/a/b" → "/a", "b" → ".", "/b" → "/". Trailing slashes are not a name.
    public static func parentDirectory(of path: String) -> String {
        var trimmed = Substring(path)
        while trimmed.count > 1 && trimmed.hasSuffix("/") { trimmed.removeLast() }
        guard let slash = trimmed.lastIndex(of: "/") else { return "." }
        var parent = trimmed[..<slash]
        while parent.count > 1 && parent.hasSuffix("/") { parent.removeLast() }
        return parent.isEmpty ? "/" : String(parent)
    }

    static func isDirectory(_ path: String) -> Bool {
        var info = stat()
        return stat(path, &info) == 0 && info.st_mode & S_IFMT == S_IFDIR
    }

    private static func kind(ofDirectoryEntryType type: UInt8) -> DirectoryEntry.Kind {
        switch Int(type) {
        case Int(DT_REG): .regular
        case Int(DT_DIR): .directory
        case Int(DT_LNK): .symbolicLink
        case Int(DT_UNKNOWN): .unknown
        default: .other
        }
    }
}
