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
        try restore([(snapshot, target)], subpath: subpath)[0]
    }

    /// Restores several snapshots, each under its own target, in one process (a server's accounts, say). With one
    /// snapshot, a thread per core writes its files. With several, each thread plans (every name validated) and
    /// writes whole snapshots, largest first: threads in different accounts' directories do not wait for each
    /// other's directory locks, which was measured faster on the 1 GiB benchmark (3.4 s against 4.1 s on average
    /// over three runs each, and 0.5 s less user time spent spinning). These are two threads per core, real ones
    /// (`WorkerPool`; a dispatch queue runs only one per core), so the cores stay busy while a thread waits for a
    /// direct write or an inode allocation: 3.06 s against 3.42 s, medians of eight alternating restores of the
    /// benchmark, for about 8 MiB more peak memory. Memory stays one plan per thread.
    /// Returns one summary per snapshot, in order; the first error stops the restore.
    public func restore(_ snapshots: [(snapshot: Snapshot, target: String)], subpath: String? = nil) throws -> [RestoreSummary] {
        _ = BackupSession.allocatorTuned
        let cores = max(2, ProcessInfo.processInfo.activeProcessorCount)
        if snapshots.count == 1 {
            let plan = try makeRestorePlan(snapshots[0].snapshot, target: snapshots[0].target, subpath: subpath, decompressor: ZstdDecompressor())
            return [try plan.execute(repository: self, threads: cores)]
        }
        let order = snapshots.indices.sorted { snapshots[$0].snapshot.summary.bytesTotal > snapshots[$1].snapshot.summary.bytesTotal }
        let results = Mutex<(summaries: [Int: RestoreSummary], failure: (any Error)?)>(([:], nil))
        let next = Atomic<Int>(0)
        let threads = min(snapshots.count, 2 * cores)
        let pool = WorkerPool(threads: threads, name: "restore")
        defer { pool.close() }
        for _ in 0..<threads { pool.submit {
            let decompressor = ZstdDecompressor()
            while true {
                let position = next.wrappingAdd(1, ordering: .relaxed).oldValue
                guard position < order.count, results.withLock({ $0.failure == nil }) else { return }
                let (snapshot, target) = snapshots[order[position]]
                do {
                    let plan = try self.makeRestorePlan(snapshot, target: target, subpath: subpath, decompressor: decompressor)
                    let summary = try plan.execute(repository: self, threads: 1)
                    results.withLock { $0.summaries[order[position]] = summary }
                } catch {
                    results.withLock { if $0.failure == nil { $0.failure = error } }
                }
            }
        } }
        pool.wait()
        let finished = results.withLock { $0 }
        if let failure = finished.failure { throw failure }
        return snapshots.indices.map { finished.summaries[$0] ?? RestoreSummary() }
    }

    /// Reads `snapshot`'s trees (below `subpath`, if given), validates every name, and creates `target`: nothing
    /// inside the target is written before the whole plan is known.
    private func makeRestorePlan(_ snapshot: Snapshot, target: String, subpath: String?, decompressor: ZstdDecompressor) throws -> RestorePlan {
        let snapshotRoot = try loadTree(snapshot.tree, decompressor: decompressor)
        var root = snapshotRoot
        var prefix = ""
        if let subpath, !subpath.isEmpty, subpath != "/" {
            let components = subpath.split(separator: "/").map(String.init)
            let notADirectory = RepositoryError("\(FileName.printable(subpath)) is not a directory in snapshot \(snapshot.shortID)")
            guard let node = try node(at: components, in: snapshotRoot, notADirectory: notADirectory, decompressor: decompressor) else {
                throw RepositoryError("path \(FileName.printable(subpath)) is not in snapshot \(snapshot.shortID)")
            }
            if node.kind == .directory {
                guard let subtree = node.subtree else { throw notADirectory }
                root = try loadTree(subtree, decompressor: decompressor)
                prefix = components.joined(separator: "/")
            } else {
                root = Tree(nodes: [node])
                prefix = components.dropLast().joined(separator: "/")
            }
        }
        var plan = RestorePlan(target: target, prefix: prefix, snapshotRoot: snapshotRoot)
        try plan.collect(tree: root, directory: target, relative: prefix, repository: self, decompressor: decompressor)
        try makeTargetDirectory(plan.target)
        return plan
    }

    /// The node at `components` below `root`, nil when a component is missing; an intermediate component that is
    /// not a directory throws `notADirectory`.
    func node(at components: [String], in root: Tree, notADirectory: RepositoryError, decompressor: ZstdDecompressor) throws -> TreeNode? {
        var tree = root
        for (index, component) in components.enumerated() {
            // Compared as bytes: Swift's == treats NFC and NFD spellings as equal, Linux does not.
            guard let node = tree.nodes.first(where: { $0.name.utf8.elementsEqual(component.utf8) }) else { return nil }
            if index == components.count - 1 { return node }
            guard node.kind == .directory, let subtree = node.subtree else { throw notADirectory }
            tree = try loadTree(subtree, decompressor: decompressor)
        }
        return nil
    }

    /// Writes the single file of a stream snapshot (a database dump) to `handle`.
    public func restoreStream(_ snapshot: Snapshot, to handle: FileHandle) throws {
        try restoreStream(snapshot, to: handle.fileDescriptor)
    }

    /// Writes the single file of a stream snapshot (a database dump) to `descriptor`. Throws on the first damaged
    /// blob (what was written so far must then be discarded by the caller).
    public func restoreStream(_ snapshot: Snapshot, to descriptor: Int32) throws {
        let root = try loadTree(snapshot.tree)
        guard root.nodes.count == 1, let node = root.nodes.first, node.kind == .file else {
            throw RepositoryError("snapshot \(snapshot.shortID) is not a single-stream snapshot")
        }
        let decompressor = ZstdDecompressor()
        for id in node.content {
            let bytes = try loadBlob(id, decompressor: decompressor)
            try writeAll(descriptor, bytes, what: "output")
        }
    }
}

/// A failed write of restored bytes, with the next step when the cause is the disk rather than the repository.
func restoreWriteFailure(_ what: String, errno code: Int32) -> RepositoryError {
    var message = "writing \(what) failed: \(String(cString: strerror(code)))"
    if code == ENOSPC || code == EDQUOT {
        message += " (the restore target's disk is full; free space there or restore to another disk, then run the restore again)"
    }
    return RepositoryError(message)
}

func writeAll(_ descriptor: Int32, _ bytes: [UInt8], what: String) throws {
    var done = 0
    while done < bytes.count {
        let wrote = bytes.withUnsafeBytes { write(descriptor, $0.baseAddress! + done, bytes.count - done) }
        if wrote < 0 {
            if errno == EINTR { continue }
            throw restoreWriteFailure(what, errno: errno)
        }
        done += wrote
    }
}

/// Writes `bytes` at `offset`, leaving aligned all-zero 4 KiB blocks unwritten: with the final ftruncate they
/// become holes, so sparse files (and runs of zeros in any file) stay sparse.
/// Returns where the last byte written ends in the file, nil when all of `bytes` were zeros.
@discardableResult
func writeSparse(_ descriptor: Int32, _ bytes: [UInt8], at offset: Int64, what: String) throws -> Int64? {
    let block = 4096
    var lastEnd: Int64?
    try bytes.withUnsafeBytes { raw in
        var index = 0
        while index < raw.count {
            // Extend a run of data blocks until the next all-zero block.
            var end = index
            while end < raw.count {
                let length = min(block, raw.count - end)
                if length == block && isZero(UnsafeRawBufferPointer(rebasing: raw[end..<end + block])) { break }
                end += length
            }
            var done = index
            while done < end {
                let wrote = pwrite(descriptor, raw.baseAddress! + done, end - done, off_t(offset) + off_t(done))
                if wrote < 0 {
                    if errno == EINTR { continue }
                    throw restoreWriteFailure(what, errno: errno)
                }
                done += wrote
            }
            if end > index { lastEnd = offset + Int64(end) }
            index = end
            while index + block <= raw.count && isZero(UnsafeRawBufferPointer(rebasing: raw[index..<index + block])) { index += block }
        }
    }
    return lastEnd
}

/// True when every byte of `block` is zero (a hole's worth of a restored file).
func isZero(_ block: UnsafeRawBufferPointer) -> Bool {
    var accumulated: UInt64 = 0
    var index = 0
    while index + 8 <= block.count {
        accumulated |= block.loadUnaligned(fromByteOffset: index, as: UInt64.self)
        index += 8
    }
    while index < block.count { accumulated |= UInt64(block[index]); index += 1 }
    return accumulated == 0
}

/// The process's umask, read from /proc (setting it to read it back would race with other threads creating files);
/// where /proc does not say, the strictest answer, so every file gets an explicit chmod.
func currentUmask() -> mode_t {
    guard let status = try? String(contentsOfFile: "/proc/self/status", encoding: .utf8),
          let line = status.split(separator: "\n").first(where: { $0.hasPrefix("Umask:") }),
          let value = mode_t(line.dropFirst("Umask:".count).trimmingCharacters(in: .whitespaces), radix: 8) else { return 0o777 }
    return value
}

/// Creates a directory, refusing to reuse anything that is not a real directory (a symlink could lead outside).
func makeDirectory(_ path: String) throws {
    if FileName.withPath(path, { mkdir($0, 0o700) }) == 0 { return }
    guard errno == EEXIST else { throw RepositoryError("cannot create directory \(FileName.printable(path)): \(String(cString: strerror(errno)))") }
    var info = stat()
    guard FileName.withPath(path, { lstat($0, &info) }) == 0, info.st_mode & S_IFMT == S_IFDIR else {
        throw RepositoryError("refusing to restore into \(FileName.printable(path)): it exists and is not a directory (possibly a symlink)")
    }
}

/// Creates the restore target and any missing parents (which, unlike directories inside the target, may be
/// symlinks: /var can be one). The target may be a non-UTF-8 path given on the command line.
func makeTargetDirectory(_ target: String) throws {
    var path = target.hasPrefix("/") ? "" : "."
    for component in target.split(separator: "/") {
        path += "/" + component
        if FileName.withPath(path, { mkdir($0, 0o777) }) == 0 || errno == EEXIST { continue }
        throw RepositoryError("cannot create restore target \(FileName.printable(target)): \(FileName.printable(path)): \(String(cString: strerror(errno)))")
    }
    var info = stat()
    guard FileName.withPath(target, { stat($0, &info) }) == 0, info.st_mode & S_IFMT == S_IFDIR else {
        throw RepositoryError("cannot restore into \(FileName.printable(target)): it exists and is not a directory; choose another --target")
    }
}

/// The restore, planned first (directories, links) and then executed (file contents in parallel, metadata last).
struct RestorePlan {
    struct FileJob { let path: String; let relative: String; let node: TreeNode }
    let target: String
    /// The snapshot path restored at `target` (empty for the whole snapshot).
    let prefix: String
    /// The snapshot's root listing: a hard link inside `prefix` may point at a file outside it.
    let snapshotRoot: Tree
    /// Hard-link targets outside `prefix`, by the relative path of the first link restored as their copy.
    var outsideTargets: [String: String] = [:]
    var files: [FileJob] = []
    var directories: [(path: String, node: TreeNode)] = []
    var symlinks: [(path: String, node: TreeNode)] = []
    var hardlinks: [(path: String, relative: String, target: String)] = []
    var others: [(path: String, node: TreeNode)] = []

    mutating func collect(tree: Tree, directory: String, relative: String, repository: Repository, decompressor: ZstdDecompressor) throws {
        // Byte-wise: "café" in NFC and in NFD are two files on Linux, though Swift's == calls them equal.
        var seen = Set<[UInt8]>()
        for node in tree.nodes {
            try validateTreeName(node.name)
            guard seen.insert(Array(node.name.utf8)).inserted else {
                throw RepositoryError("snapshot lists \(FileName.printable(node.name).debugDescription) twice in one directory; refusing to restore it (damaged or tampered)")
            }
            let path = directory + "/" + node.name
            let childRelative = relative.isEmpty ? node.name : relative + "/" + node.name
            switch node.kind {
            case .directory:
                directories.append((path, node))
                if let subtree = node.subtree {
                    try collect(tree: try repository.loadTree(subtree, decompressor: decompressor), directory: path, relative: childRelative,
                                repository: repository, decompressor: decompressor)
                }
            case .file: files.append(FileJob(path: path, relative: childRelative, node: node))
            case .symlink: symlinks.append((path, node))
            case .hardlink:
                guard let target = node.target, !target.split(separator: "/").contains(where: { $0 == ".." || $0 == "." }), !target.hasPrefix("/") else {
                    throw RepositoryError("hard link \(childRelative) points at an unsafe path; refusing to restore the snapshot")
                }
                if prefix.isEmpty || target.hasPrefix(prefix + "/") {
                    hardlinks.append((path, childRelative, target))
                } else if let first = outsideTargets[target] {
                    hardlinks.append((path, childRelative, first))
                } else {
                    // The file it links to is outside the restored path: the first such link gets the content.
                    let linked = try fileNode(at: target, repository: repository, decompressor: decompressor)
                    files.append(FileJob(path: path, relative: childRelative, node: linked))
                    outsideTargets[target] = childRelative
                }
            case .other: others.append((path, node))
            }
        }
    }

    /// The file at `relative` in the snapshot (a hard link's target), looked up from the root.
    private func fileNode(at relative: String, repository: Repository, decompressor: ZstdDecompressor) throws -> TreeNode {
        let damaged = RepositoryError("hard link target \(relative) is not a file in the snapshot (damaged)")
        guard let node = try repository.node(at: relative.split(separator: "/").map(String.init), in: snapshotRoot,
                                             notADirectory: damaged, decompressor: decompressor), node.kind == .file else { throw damaged }
        return node
    }

    /// Writes the files with a pool of threads, then the links, special files and directory metadata.
    func execute(repository: Repository, threads: Int) throws -> RestoreSummary {
        // Parents come before children in `directories`.
        for (path, _) in directories { try makeDirectory(path) }
        let summary = Mutex(RestoreSummary())
        let next = Atomic<Int>(0)
        let isRoot = getuid() == 0
        let umask = currentUmask()
        // The caller gives one thread per core for a single snapshot. One more (to overlap waits for the disk) was
        // measured slower: 3.4 s against 3.1 s on average over five restores of the 1 GiB benchmark, as the threads
        // contend for the same directories' locks.
        DispatchQueue.concurrentPerform(iterations: threads) { _ in
            let decompressor = ZstdDecompressor()
            while true {
                let index = next.wrappingAdd(1, ordering: .relaxed).oldValue
                guard index < files.count else { return }
                let job = files[index]
                do {
                    let bytes = try restoreFile(job, repository: repository, decompressor: decompressor, isRoot: isRoot, umask: umask)
                    summary.withLock { $0.files += 1; $0.bytes += bytes }
                } catch {
                    FileName.withPath(job.path) { _ = unlink($0) }
                    summary.withLock { $0.errors.append("\(FileName.printable(job.relative)): \(error)") }
                }
            }
        }
        return finish(summary.withLock { $0 }, isRoot: isRoot)
    }

    /// Links, special files and directory metadata, after the file contents are in place.
    private func finish(_ summary: RestoreSummary, isRoot: Bool) -> RestoreSummary {
        var result = summary
        // Hard links before symlinks: no symlink exists yet in the target, so a link path cannot lead outside.
        for link in hardlinks {
            let relativeTarget = prefix.isEmpty ? link.target : (link.target.hasPrefix(prefix + "/") ? String(link.target.dropFirst(prefix.count + 1)) : link.target)
            let source = target + "/" + relativeTarget
            FileName.withPath(link.path) { _ = unlink($0) }
            let linked = FileName.withPath(source) { source in FileName.withPath(link.path) { Glibc.link(source, $0) } }
            if linked == 0 { result.hardlinks += 1 } else {
                result.errors.append("\(FileName.printable(link.relative)): cannot create hard link to \(FileName.printable(link.target)): \(String(cString: strerror(errno)))")
            }
        }
        for (path, node) in symlinks {
            FileName.withPath(path) { _ = unlink($0) }
            guard FileName.withPath(node.target ?? "", { target in FileName.withPath(path) { symlink(target, $0) } }) == 0 else {
                result.errors.append("\(FileName.printable(path)): cannot create symlink: \(String(cString: strerror(errno)))")
                continue
            }
            if isRoot { FileName.withPath(path) { _ = lchown($0, node.uid, node.gid) } }
            setTimes(path: path, node: node, followLinks: false)
            result.symlinks += 1
        }
        for (path, node) in others where node.mode & S_IFMT == S_IFIFO {
            FileName.withPath(path) { _ = mkfifo($0, node.mode & 0o7777) }
        }
        // Directories last and deepest first, so writing their contents does not disturb their mtimes.
        for (path, node) in directories.reversed() {
            FileName.withPath(path) { path in
                if isRoot { chown(path, node.uid, node.gid) }
                chmod(path, node.mode & 0o7777)
            }
            setTimes(path: path, node: node, followLinks: true)
            result.directories += 1
        }
        return result
    }

    /// Files from this size up are written with `O_DIRECT` (see `DirectRestoreOutput`). Smaller ones go through the
    /// page cache: written directly, each would wait for the disk. 64 KiB, 128 KiB and 256 KiB measured the same on
    /// the benchmark; the highest keeps the most files clear of that wait on slower disks.
    static let directWriteThreshold: Int64 = 256 << 10

    func restoreFile(_ job: FileJob, repository: Repository, decompressor: ZstdDecompressor, isRoot: Bool, umask: mode_t) throws -> Int64 {
        let mode = mode_t(job.node.mode & 0o7777)
        var descriptor: Int32 = -1
        // A new file that already has its final owner, and whose mode the umask leaves alone, is created with that
        // mode: on ext4 each fchown/fchmod dirties the inode again, which was a measurable part of a restore.
        // Otherwise (an existing file, another owner, special bits) it is created private and fixed up at the end.
        var needsOwnerAndMode = true
        if (!isRoot || (job.node.uid == geteuid() && job.node.gid == getegid())) && mode & 0o7000 == 0 && mode & umask == 0 {
            descriptor = FileName.withPath(job.path) { open($0, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, mode) }
            if descriptor >= 0 { needsOwnerAndMode = false }
        }
        if descriptor < 0 { descriptor = FileName.withPath(job.path) { open($0, O_WRONLY | O_CREAT | O_TRUNC | O_NOFOLLOW | O_CLOEXEC, 0o600) } }
        guard descriptor >= 0 else { throw RepositoryError("cannot create: \(String(cString: strerror(errno)))") }
        defer { close(descriptor) }
        var offset: Int64 = 0
        if job.node.size >= Self.directWriteThreshold {
            let output = DirectRestoreOutput(descriptor: descriptor, what: job.relative)
            for id in job.node.content {
                try repository.loadBlob(id, decompressor: decompressor).withUnsafeBytes { try output.append($0) }
            }
            try output.finish()
            offset = output.size
        } else {
            var written: Int64 = 0
            for id in job.node.content {
                let bytes = try repository.loadBlob(id, decompressor: decompressor)
                if let end = try writeSparse(descriptor, bytes, at: offset, what: job.relative) { written = end }
                offset += Int64(bytes.count)
            }
            // Only a file ending in a hole (zeros left unwritten) is still short of its size.
            if written < offset {
                guard ftruncate(descriptor, off_t(offset)) == 0 else { throw RepositoryError("cannot set size: \(String(cString: strerror(errno)))") }
            }
        }
        if needsOwnerAndMode {
            if isRoot { fchown(descriptor, job.node.uid, job.node.gid) }
            fchmod(descriptor, mode)
        }
        var times = [timespec(tv_sec: Int(job.node.mtime / 1_000_000_000), tv_nsec: Int(job.node.mtime % 1_000_000_000)),
                     timespec(tv_sec: Int(job.node.mtime / 1_000_000_000), tv_nsec: Int(job.node.mtime % 1_000_000_000))]
        futimens(descriptor, &times)
        return offset
    }

    private func setTimes(path: String, node: TreeNode, followLinks: Bool) {
        var times = [timespec(tv_sec: Int(node.mtime / 1_000_000_000), tv_nsec: Int(node.mtime % 1_000_000_000)),
                     timespec(tv_sec: Int(node.mtime / 1_000_000_000), tv_nsec: Int(node.mtime % 1_000_000_000))]
        FileName.withPath(path) { _ = utimensat(AT_FDCWD, $0, &times, followLinks ? 0 : AT_SYMLINK_NOFOLLOW) }
    }
}
