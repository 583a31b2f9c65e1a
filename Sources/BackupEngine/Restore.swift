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
    /// Why nothing of the snapshot was restored (its root listing cannot be read, a name in it is unsafe, the target
    /// cannot be made); nil when it was restored (`errors` then names what could not be).
    public var failure: String?
}

extension Repository {
    /// Restores `snapshot` (or only `subpath` inside it) under `target`. Never writes outside `target`: names from
    /// the snapshot are validated, directories are created by us, and existing symlinks are never followed.
    /// Damaged files are listed in `errors`; everything else is restored.
    public func restore(_ snapshot: Snapshot, subpath: String? = nil, target: String) throws -> RestoreSummary {
        try restoreEach([(snapshot, target)], subpath: subpath)[0].get()
    }

    /// Restores several snapshots, each under its own target, in one process (a server's accounts, say), and
    /// returns one summary per snapshot, in order. A snapshot that cannot be restored at all (its root listing is
    /// damaged, it holds an unsafe name) has its `failure` set, and the others are restored all the same; inside a
    /// snapshot, a directory whose listing cannot be read is named in `errors` and the rest is restored.
    public func restore(_ snapshots: [(snapshot: Snapshot, target: String)], subpath: String? = nil) throws -> [RestoreSummary] {
        try restoreEach(snapshots, subpath: subpath).map { result in
            switch result {
            case .success(let summary): return summary
            case .failure(let error):
                var summary = RestoreSummary()
                summary.failure = "\(error)"
                return summary
            }
        }
    }

    /// The restore of several snapshots, each with its own outcome.
    ///
    /// One thread plans each snapshot in turn (every name validated, nothing written before); the calling thread
    /// makes its directories and creates every file, empty; a pool of writer threads fills the files in, and the last
    /// writer done with a snapshot sets its links and directory metadata. Creating is kept to one thread because
    /// that is where ext4 allocates inodes: on a file system without a journal, every inode freed in the last
    /// minutes is skipped one block lookup at a time, and threads allocating side by side in the same block group
    /// race for the same free bit and scan again. Restoring the 1 GiB benchmark right after deleting the previous
    /// restore spent 4.4–4.7 s of system time with four threads creating files and 2.9–3.2 s this way, in the same
    /// wall time; on a new file system the two take the same time. Memory: the plans of the snapshots still being
    /// written (usually one or two), and at most `inFlight` open files (plus one batch being filled).
    func restoreEach(_ snapshots: [(snapshot: Snapshot, target: String)], subpath: String? = nil) throws -> [Result<RestoreSummary, any Error>] {
        _ = BackupSession.allocatorTuned
        let cores = max(2, ProcessInfo.processInfo.activeProcessorCount)
        // Two threads per core in all, so a core stays busy while a thread waits for a direct write or the disk.
        let writers = 2 * cores - 1
        let queue = HandOffQueue<[CreatedFile]>(capacity: RestorePlan.inFlight / RestorePlan.batchSize)
        let summaries = Mutex<[Int: RestoreSummary]>([:])
        // Plans are made one snapshot ahead on a thread of their own (reading and decoding the listings), so the
        // writers are not left idle while the next snapshot is planned.
        let plans = HandOffQueue<(index: Int, plan: Result<RestorePlan, any Error>)>(capacity: 1)
        let pool = WorkerPool(threads: writers + 1, name: "restore")
        defer { pool.close() }
        pool.submit {
            let decompressor = ZstdDecompressor()
            // A snapshot that cannot be planned fails alone: the next ones are planned all the same.
            for (index, (snapshot, target)) in snapshots.enumerated() {
                plans.put((index, Result { try self.makeRestorePlan(snapshot, target: target, subpath: subpath, decompressor: decompressor) }))
            }
            plans.close()
        }
        for _ in 0..<writers { pool.submit {
            let decompressor = ZstdDecompressor()
            while let batch = queue.take() {
                for created in batch { created.write(repository: self, decompressor: decompressor) }
            }
        } }
        var failures: [Int: any Error] = [:]
        let isRoot = getuid() == 0
        let umask = currentUmask()
        while let (index, planned) = plans.take() {
            do {
                let plan = try planned.get()
                let restoring = PlanInProgress(plan: plan, isRoot: isRoot) { summary in summaries.withLock { $0[index] = summary } }
                try plan.makeDirectories()
                // Files go to writers in batches of files whose data starts in the same group of small blobs (up to
                // `batchSize`), so one writer opens each group once: when writers took consecutive files one by one,
                // several opened the same group at the same time. A file stored in blobs of its own is a batch alone.
                var batch: [CreatedFile] = []
                var batchGroup: BlobGroup?
                for job in plan.files.indices {
                    let first = plan.files[job].node.content.first
                    let group = first.flatMap { self.group(of: $0) }
                    // An empty file needs no blob and joins any batch.
                    let sameGroup = first == nil || (group != nil && group == batchGroup)
                    if !batch.isEmpty && (batch.count == RestorePlan.batchSize || !sameGroup) {
                        queue.put(batch)
                        batch = []
                    }
                    if first != nil { batchGroup = group }
                    do {
                        let (descriptor, needsOwnerAndMode) = try plan.createFile(plan.files[job], isRoot: isRoot, umask: umask)
                        restoring.queued()
                        batch.append(CreatedFile(restoring: restoring, job: job, descriptor: descriptor, needsOwnerAndMode: needsOwnerAndMode))
                    } catch {
                        restoring.record(job: job, error: error)
                    }
                }
                if !batch.isEmpty { queue.put(batch) }
                restoring.allQueued()
            } catch {
                failures[index] = error
            }
        }
        queue.close()
        pool.wait()
        let finished = summaries.withLock { $0 }
        return snapshots.indices.map { index in failures[index].map { .failure($0) } ?? .success(finished[index] ?? RestoreSummary()) }
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
    /// Directories whose listing cannot be read, with the reason (they are restored empty).
    var unreadableListings: [String] = []

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
                    // A listing that cannot be read (damaged, its pack lost) costs what is below it, not the restore.
                    let listing: Tree
                    do {
                        listing = try repository.loadTree(subtree, decompressor: decompressor)
                    } catch {
                        unreadableListings.append("\(FileName.printable(childRelative))/: its directory listing cannot be read (\(error)), "
                            + "so nothing below it is restored")
                        continue
                    }
                    try collect(tree: listing, directory: path, relative: childRelative, repository: repository, decompressor: decompressor)
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

    /// Open files handed from the creating thread to the writers at most (see `Repository.restore`), in batches of
    /// at most `batchSize` files whose data starts in the same group of small blobs.
    static let inFlight = 256
    static let batchSize = 32

    /// Creates the directories, parents first (`directories` lists parents before children), private until `finish`.
    func makeDirectories() throws {
        for (path, _) in directories { try makeDirectory(path) }
    }

    /// Links, special files and directory metadata, after the file contents are in place.
    func finish(_ summary: RestoreSummary, isRoot: Bool) -> RestoreSummary {
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

    /// Creates `job`'s file, empty, and opens it for writing; the one step of a file's restore that allocates an
    /// inode. Returns whether its owner and mode still have to be set after writing.
    func createFile(_ job: FileJob, isRoot: Bool, umask: mode_t) throws -> (descriptor: Int32, needsOwnerAndMode: Bool) {
        let mode = mode_t(job.node.mode & 0o7777)
        // A new file that already has its final owner, and whose mode the umask leaves alone, is created with that
        // mode: on ext4 each fchown/fchmod dirties the inode again, which was a measurable part of a restore.
        // Otherwise (an existing file, another owner, special bits) it is created private and fixed up at the end.
        if (!isRoot || (job.node.uid == geteuid() && job.node.gid == getegid())) && mode & 0o7000 == 0 && mode & umask == 0 {
            let descriptor = FileName.withPath(job.path) { open($0, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, mode) }
            if descriptor >= 0 { return (descriptor, false) }
        }
        let descriptor = FileName.withPath(job.path) { open($0, O_WRONLY | O_CREAT | O_TRUNC | O_NOFOLLOW | O_CLOEXEC, 0o600) }
        guard descriptor >= 0 else { throw RepositoryError("cannot create: \(String(cString: strerror(errno)))") }
        return (descriptor, true)
    }

    /// Writes the content of a file `createFile` made, then its owner, mode and times, and closes it. Returns the
    /// file's size.
    func writeFile(_ job: FileJob, descriptor: Int32, needsOwnerAndMode: Bool, repository: Repository,
                   decompressor: ZstdDecompressor, isRoot: Bool) throws -> Int64 {
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
            fchmod(descriptor, mode_t(job.node.mode & 0o7777))
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

/// One snapshot's restore while its files are being written: counts the files handed to writers, gathers the
/// summary, and runs the plan's `finish` (links, directory metadata) once the last file is written and no more
/// will come.
final class PlanInProgress: Sendable {
    let plan: RestorePlan
    let isRoot: Bool
    private let done: @Sendable (RestoreSummary) -> Void
    private let state: Mutex<(summary: RestoreSummary, pending: Int, allQueued: Bool)>

    init(plan: RestorePlan, isRoot: Bool, done: @escaping @Sendable (RestoreSummary) -> Void) {
        self.plan = plan
        self.isRoot = isRoot
        self.done = done
        var summary = RestoreSummary()
        summary.errors = plan.unreadableListings
        state = Mutex((summary, 0, false))
    }

    func queued() { state.withLock { $0.pending += 1 } }

    /// A file that could not be created or written: it is removed, and named in the summary's errors.
    func record(job: Int, error: any Error) {
        let file = plan.files[job]
        FileName.withPath(file.path) { _ = unlink($0) }
        state.withLock { $0.summary.errors.append("\(FileName.printable(file.relative)): \(error)") }
    }

    func written(bytes: Int64) {
        settle { $0.summary.files += 1; $0.summary.bytes += bytes; $0.pending -= 1 }
    }

    func failed(job: Int, error: any Error) {
        record(job: job, error: error)
        settle { $0.pending -= 1 }
    }

    /// Every file of the plan has been created (or has failed): the writers may finish the plan.
    func allQueued() {
        settle { $0.allQueued = true }
    }

    /// Applies `change`, then finishes the plan if that left no file pending and no more to come (exactly once: only
    /// the change that reaches that state sees it).
    private func settle(_ change: (inout (summary: RestoreSummary, pending: Int, allQueued: Bool)) -> Void) {
        let finished = state.withLock { state -> RestoreSummary? in
            change(&state)
            return state.pending == 0 && state.allQueued ? state.summary : nil
        }
        if let finished { done(plan.finish(finished, isRoot: isRoot)) }
    }
}

/// A file created, empty and open, on its way from the creating thread to a writer.
struct CreatedFile: Sendable {
    let restoring: PlanInProgress
    let job: Int
    let descriptor: Int32
    let needsOwnerAndMode: Bool

    func write(repository: Repository, decompressor: ZstdDecompressor) {
        let plan = restoring.plan
        do {
            let bytes = try plan.writeFile(plan.files[job], descriptor: descriptor, needsOwnerAndMode: needsOwnerAndMode,
                                           repository: repository, decompressor: decompressor, isRoot: restoring.isRoot)
            restoring.written(bytes: bytes)
        } catch {
            restoring.failed(job: job, error: error)
        }
    }
}
