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
    /// whole. Listings read here are small; the backup's tree walk, which lists every directory of a server, has
    /// its own reader.
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

    /// Creates the directory `path` with `permissions` (less the umask), and its missing parents when
    /// `withParents`. A directory already there is fine; anything else there is `EEXIST`.
    public static func create(_ path: String, permissions: mode_t, withParents: Bool) throws(Errno) {
        if mkdir(path, permissions) == 0 { return }
        var failure = Errno.current("create directory", path: path)
        if failure == .notFound && withParents {
            let parent = parentDirectory(of: path)
            if parent != path {
                try create(parent, permissions: permissions, withParents: true)
                if mkdir(path, permissions) == 0 { return }
                failure = Errno.current("create directory", path: path)
            }
        }
        // Another process may have made it meanwhile; only a directory will do.
        if failure == .exists && isDirectory(path) { return }
        throw failure
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
