import Dispatch
import Foundation
import Synchronization
import Zstd

/// Figures from one restore. `errors` lists files that could not be restored (damaged data, I/O errors).
public struct RestoreSummary: Codable, Sendable {
    public var files = 0
    public var directories = 0
    public var symlinks = 0
    public var hardlinks = 0
    public var bytes: Int64 = 0
    public var errors: [String] = []
}

extension Repository {
    /// Restores `snapshot` (or only `subpath` inside it) under `target`. Never writes outside `target`: names from
    /// the snapshot are validated, directories are created by us, and existing symlinks are never followed.
    /// Damaged files are listed in `errors`; everything else is restored.
    public func restore(_ snapshot: Snapshot, subpath: String? = nil, target: String) throws -> RestoreSummary {
        var root = try loadTree(snapshot.tree)
        var prefix = ""
        if let subpath, !subpath.isEmpty, subpath != "/" {
            let components = subpath.split(separator: "/").map(String.init)
            for (index, component) in components.enumerated() {
                guard let node = root.nodes.first(where: { $0.name == component }) else {
                    throw RepositoryError("path \(subpath) is not in snapshot \(snapshot.shortID)")
                }
                if index == components.count - 1 && node.kind != .directory {
                    root = Tree(nodes: [node])
                } else {
                    guard node.kind == .directory, let subtree = node.subtree else { throw RepositoryError("\(subpath) is not a directory in snapshot \(snapshot.shortID)") }
                    root = try loadTree(subtree)
                    prefix = prefix.isEmpty ? component : prefix + "/" + component
                }
            }
        }
        do {
            try FileManager.default.createDirectory(atPath: target, withIntermediateDirectories: true)
        } catch {
            throw RepositoryError("cannot create restore target \(target): \(error.localizedDescription)")
        }
        var plan = RestorePlan()
        try plan.collect(tree: root, directory: target, relative: prefix, repository: self)
        return try plan.execute(repository: self, target: target, prefix: prefix)
    }

    /// Writes the single file of a stream snapshot (a database dump) to `descriptor`.
    public func restoreStream(_ snapshot: Snapshot, to descriptor: Int32) throws {
        let root = try loadTree(snapshot.tree)
        guard root.nodes.count == 1, let node = root.nodes.first, node.kind == .file else {
            throw RepositoryError("snapshot \(snapshot.shortID) is not a single-stream snapshot")
        }
        let decompressor = ZstdDecompressor()
        for hex in node.content ?? [] {
            guard let id = BlobID(hex: hex) else { throw RepositoryError("snapshot \(snapshot.shortID) has a malformed blob id") }
            let bytes = try loadBlob(id, decompressor: decompressor)
            try writeAll(descriptor, bytes, what: "output")
        }
    }
}

func writeAll(_ descriptor: Int32, _ bytes: [UInt8], what: String) throws {
    var done = 0
    while done < bytes.count {
        let wrote = bytes.withUnsafeBytes { write(descriptor, $0.baseAddress! + done, bytes.count - done) }
        if wrote < 0 {
            if errno == EINTR { continue }
            throw RepositoryError("writing \(what) failed: \(String(cString: strerror(errno)))")
        }
        done += wrote
    }
}

/// Creates a directory, refusing to reuse anything that is not a real directory (a symlink could lead outside).
func makeDirectory(_ path: String) throws {
    if mkdir(path, 0o700) == 0 { return }
    guard errno == EEXIST else { throw RepositoryError("cannot create directory \(path): \(String(cString: strerror(errno)))") }
    var info = stat()
    guard lstat(path, &info) == 0, info.st_mode & S_IFMT == S_IFDIR else {
        throw RepositoryError("refusing to restore into \(path): it exists and is not a directory (possibly a symlink)")
    }
}

/// The restore, planned first (directories, links) and then executed (file contents in parallel, metadata last).
struct RestorePlan {
    struct FileJob { let path: String; let relative: String; let node: TreeNode }
    var files: [FileJob] = []
    var directories: [(path: String, node: TreeNode)] = []
    var symlinks: [(path: String, node: TreeNode)] = []
    var hardlinks: [(path: String, relative: String, target: String)] = []
    var others: [(path: String, node: TreeNode)] = []

    mutating func collect(tree: Tree, directory: String, relative: String, repository: Repository) throws {
        var seen = Set<String>()
        for node in tree.nodes {
            try validateTreeName(node.name)
            guard seen.insert(node.name).inserted else {
                throw RepositoryError("snapshot lists \(node.name.debugDescription) twice in one directory; refusing to restore it (damaged or tampered)")
            }
            let path = directory + "/" + node.name
            let childRelative = relative.isEmpty ? node.name : relative + "/" + node.name
            switch node.kind {
            case .directory:
                try makeDirectory(path)
                directories.append((path, node))
                if let subtree = node.subtree { try collect(tree: try repository.loadTree(subtree), directory: path, relative: childRelative, repository: repository) }
            case .file: files.append(FileJob(path: path, relative: childRelative, node: node))
            case .symlink: symlinks.append((path, node))
            case .hardlink:
                guard let target = node.target, !target.split(separator: "/").contains(where: { $0 == ".." || $0 == "." }), !target.hasPrefix("/") else {
                    throw RepositoryError("hard link \(childRelative) points at an unsafe path; refusing to restore the snapshot")
                }
                hardlinks.append((path, childRelative, target))
            case .other: others.append((path, node))
            }
        }
    }

    func execute(repository: Repository, target: String, prefix: String) throws -> RestoreSummary {
        let summary = Mutex(RestoreSummary())
        let next = Atomic<Int>(0)
        let isRoot = getuid() == 0
        let workers = max(2, ProcessInfo.processInfo.activeProcessorCount + 1)
        DispatchQueue.concurrentPerform(iterations: workers) { _ in
            let decompressor = ZstdDecompressor()
            while true {
                let index = next.wrappingAdd(1, ordering: .relaxed).oldValue
                guard index < files.count else { return }
                let job = files[index]
                do {
                    let bytes = try restoreFile(job, repository: repository, decompressor: decompressor, isRoot: isRoot)
                    summary.withLock { $0.files += 1; $0.bytes += bytes }
                } catch {
                    unlink(job.path)
                    summary.withLock { $0.errors.append("\(job.relative): \(error)") }
                }
            }
        }
        var result = summary.withLock { $0 }
        for (path, node) in symlinks {
            unlink(path)
            guard symlink(node.target ?? "", path) == 0 else {
                result.errors.append("\(path): cannot create symlink: \(String(cString: strerror(errno)))")
                continue
            }
            if isRoot { lchown(path, node.uid, node.gid) }
            setTimes(path: path, node: node, followLinks: false)
            result.symlinks += 1
        }
        for link in hardlinks {
            let relativeTarget = prefix.isEmpty ? link.target : (link.target.hasPrefix(prefix + "/") ? String(link.target.dropFirst(prefix.count + 1)) : link.target)
            let source = target + "/" + relativeTarget
            unlink(link.path)
            if Glibc.link(source, link.path) == 0 { result.hardlinks += 1 } else {
                result.errors.append("\(link.relative): cannot create hard link to \(link.target): \(String(cString: strerror(errno)))")
            }
        }
        for (path, node) in others where node.mode & S_IFMT == S_IFIFO {
            mkfifo(path, node.mode & 0o7777)
        }
        // Directories last and deepest first, so writing their contents does not disturb their mtimes.
        for (path, node) in directories.reversed() {
            if isRoot { chown(path, node.uid, node.gid) }
            chmod(path, node.mode & 0o7777)
            setTimes(path: path, node: node, followLinks: true)
            result.directories += 1
        }
        return result
    }

    private func restoreFile(_ job: FileJob, repository: Repository, decompressor: ZstdDecompressor, isRoot: Bool) throws -> Int64 {
        let descriptor = open(job.path, O_WRONLY | O_CREAT | O_TRUNC | O_NOFOLLOW | O_CLOEXEC, 0o600)
        guard descriptor >= 0 else { throw RepositoryError("cannot create: \(String(cString: strerror(errno)))") }
        defer { close(descriptor) }
        var offset: Int64 = 0
        for hex in job.node.content ?? [] {
            guard let id = BlobID(hex: hex) else { throw RepositoryError("malformed blob id") }
            let bytes = try repository.loadBlob(id, decompressor: decompressor)
            // All-zero chunks become holes, which keeps sparse files sparse.
            if bytes.count >= 4096 && bytes.allSatisfy({ $0 == 0 }) {
                lseek(descriptor, off_t(bytes.count), SEEK_CUR)
            } else {
                try writeAll(descriptor, bytes, what: job.relative)
            }
            offset += Int64(bytes.count)
        }
        guard ftruncate(descriptor, off_t(offset)) == 0 else { throw RepositoryError("cannot set size: \(String(cString: strerror(errno)))") }
        if isRoot { fchown(descriptor, job.node.uid, job.node.gid) }
        fchmod(descriptor, job.node.mode & 0o7777)
        var times = [timespec(tv_sec: Int(job.node.mtime / 1_000_000_000), tv_nsec: Int(job.node.mtime % 1_000_000_000)),
                     timespec(tv_sec: Int(job.node.mtime / 1_000_000_000), tv_nsec: Int(job.node.mtime % 1_000_000_000))]
        futimens(descriptor, &times)
        return offset
    }

    private func setTimes(path: String, node: TreeNode, followLinks: Bool) {
        var times = [timespec(tv_sec: Int(node.mtime / 1_000_000_000), tv_nsec: Int(node.mtime % 1_000_000_000)),
                     timespec(tv_sec: Int(node.mtime / 1_000_000_000), tv_nsec: Int(node.mtime % 1_000_000_000))]
        utimensat(AT_FDCWD, path, &times, followLinks ? 0 : AT_SYMLINK_NOFOLLOW)
    }
}
