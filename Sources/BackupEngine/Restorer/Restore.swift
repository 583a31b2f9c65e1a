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
    /// Restores `snapshot` (or only `subpath` inside it) under `target`; with `root`, `target` is a path inside
    /// `root` (see `restore(_:subpath:beneath:)`). Never writes outside the target: names from the snapshot are
    /// validated, every entry is made relative to an open directory, and nothing that already exists in the target is
    /// followed or written through. Damaged files are listed in `errors`; everything else is restored.
    public func restore(_ snapshot: Snapshot, subpath: String? = nil, target: String, beneath root: String? = nil) throws -> RestoreSummary {
        try restoreEach([(snapshot, target)], subpath: subpath, beneath: root)[0].get()
    }

    /// Restores several snapshots, each under its own target, in one process (a server's accounts, say), and
    /// returns one summary per snapshot, in order. A snapshot that cannot be restored at all (its root listing is
    /// damaged, it holds an unsafe name) has its `failure` set, and the others are restored all the same; inside a
    /// snapshot, a directory whose listing cannot be read is named in `errors` and the rest is restored.
    public func restore(_ snapshots: [(snapshot: Snapshot, target: String)], subpath: String? = nil, beneath root: String? = nil) throws -> [RestoreSummary] {
        try restoreEach(snapshots, subpath: subpath, beneath: root).map { result in
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
    /// A target is an operator's own path, made if missing and its symlinks followed like any path on a command
    /// line. With `root` (the `--target` of `restore --all`), each target is a path inside `root` and only `root` is
    /// taken so: the components below it (`home/USER`) may be controlled by an account owner, so they are treated
    /// like everything inside a target. Inside, every directory is opened one name at a time with
    /// `O_NOFOLLOW|O_DIRECTORY` and held open while its entries are made; whatever stands where an entry goes (a
    /// symlink, a hard-linked file, any non-directory where a directory belongs) is removed and made again, never
    /// followed or written through; owners, modes and times are set through descriptors. Run as root, entries that
    /// belong to the owner of the directory they are made in are made with that owner's file-system identity
    /// (setfsuid/setfsgid on the making thread), so root's rights never reach a place the account owner chose.
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
    func restoreEach(_ snapshots: [(snapshot: Snapshot, target: String)], subpath: String? = nil,
                     beneath root: String? = nil) throws -> [Result<RestoreSummary, any Error>] {
        _ = BackupSession.allocatorTuned
        let cores = max(2, ProcessInfo.processInfo.activeProcessorCount)
        // Two threads per core in all, so a core stays busy while a thread waits for a direct write or the disk.
        let writers = 2 * cores - 1
        let queue = HandOffQueue<[CreatedFile]>(capacity: RestorePlan.inFlight / RestorePlan.batchSize)
        let summaries = Mutex<[Int: RestoreSummary]>([:])
        // Plans are made one snapshot ahead on a thread of their own (reading and decoding the listings), so the
        // writers are not left idle while the next snapshot is planned.
        let plans = HandOffQueue<(index: Int, plan: Result<RestorePlan, any Error>)>(capacity: 1)
        let pool = WorkerPool(threads: writers + 1, name: "fk-restore")
        defer { pool.close() }
        pool.submit {
            let decompressor = ZstdDecompressor()
            // A snapshot that cannot be planned fails alone: the next ones are planned all the same.
            for (index, (snapshot, target)) in snapshots.enumerated() {
                let plan = Result {
                    try self.makeRestorePlan(snapshot, location: try RestoreLocation(target: target, beneath: root), subpath: subpath,
                                             decompressor: decompressor)
                }
                plans.put((index, plan))
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
        // This thread's file-system identity while it makes entries; back to the process's own before anything else.
        let identity = ThreadFilesystemIdentity()
        defer { identity.reset() }
        var madeByThisRestore = Set<String>()
        while let (index, planned) = plans.take() {
            do {
                let plan = try planned.get()
                let (target, madeNow) = try plan.location.open(thread: identity)
                // Made by this restore, now or as a parent of an earlier snapshot's target (`home/USER` for its mail).
                madeByThisRestore.formUnion(madeNow)
                let targetMade = madeByThisRestore.contains(plan.location.path)
                let restoring = PlanInProgress(plan: plan, target: target, targetMade: targetMade, isRoot: isRoot) { summary in
                    summaries.withLock { $0[index] = summary }
                }
                // The directories from the target down to the one being filled stay open, so a file costs one
                // openat in its directory, and a directory one openat after it is made.
                var cursor = DirectoryCursor(plan: plan, target: target, made: restoring.made)
                var directoriesMade = 0
                // Files go to writers in batches of files whose data starts in the same group of small blobs (up to
                // `batchSize`), so one writer opens each group once: when writers took consecutive files one by one,
                // several opened the same group at the same time. A file stored in blobs of its own is a batch alone.
                var batch: [CreatedFile] = []
                var batchGroup: BlobGroup?
                for job in plan.files.indices {
                    let file = plan.files[job]
                    let first = file.node.content.first
                    let group = first.flatMap { self.group(of: $0) }
                    // An empty file needs no blob and joins any batch.
                    let sameGroup = first == nil || (group != nil && group == batchGroup)
                    if !batch.isEmpty && (batch.count == RestorePlan.batchSize || !sameGroup) {
                        queue.put(batch)
                        batch = []
                    }
                    if first != nil { batchGroup = group }
                    // Directories are made in the order they were listed, each just before the first file listed
                    // after it, so the file's directory is the one made last or one of its parents.
                    while directoriesMade < file.directoriesBefore {
                        restoring.makeDirectory(directoriesMade, cursor: &cursor, thread: identity)
                        directoriesMade += 1
                    }
                    do {
                        let directory = try cursor.directory(file.directory)
                        let (descriptor, needsOwnerAndMode) = try plan.createFile(file, in: directory, thread: identity, isRoot: isRoot, umask: umask)
                        restoring.queued()
                        batch.append(CreatedFile(restoring: restoring, job: job, descriptor: descriptor, needsOwnerAndMode: needsOwnerAndMode))
                    } catch {
                        restoring.record(job: job, error: error)
                    }
                }
                while directoriesMade < plan.directories.count {
                    restoring.makeDirectory(directoriesMade, cursor: &cursor, thread: identity)
                    directoriesMade += 1
                }
                // The plan may be finished on this thread (by `allQueued`), which starts from the process's identity.
                identity.reset()
                if !batch.isEmpty { queue.put(batch) }
                restoring.allQueued()
            } catch {
                identity.reset()
                failures[index] = error
            }
        }
        queue.close()
        pool.wait()
        let finished = summaries.withLock { $0 }
        return snapshots.indices.map { index in failures[index].map { .failure($0) } ?? .success(finished[index] ?? RestoreSummary()) }
    }

    /// Reads `snapshot`'s trees (below `subpath`, if given) and validates every name. Nothing is written: the
    /// target is made when the plan is carried out.
    private func makeRestorePlan(_ snapshot: Snapshot, location: RestoreLocation, subpath: String?, decompressor: ZstdDecompressor) throws -> RestorePlan {
        let snapshotRoot = try loadTree(snapshot.tree, decompressor: decompressor)
        var root = snapshotRoot
        var prefix = ""
        var singleFile = false
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
                singleFile = true
            }
        }
        var plan = RestorePlan(location: location, prefix: prefix, snapshotRoot: snapshotRoot)
        plan.singleFile = singleFile
        // The snapshot's own directory is the target only when the whole snapshot is restored.
        if prefix.isEmpty && !singleFile { plan.rootDirectory = snapshot.root }
        try plan.collect(tree: root, directory: RestorePlan.target, relative: prefix, repository: self, decompressor: decompressor)
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

    /// Writes the single file of a stream snapshot (a database dump) as the file `name` (mode 0600) in `directory`,
    /// which is a restore target as in `restore` (inside `root` when given), and returns the file's path. The file
    /// is written under a temporary name and renamed over `name`, so a symlink or hard link planted there is
    /// replaced, never followed or written through, and a damaged snapshot leaves the old file in place. It belongs
    /// to the process's user from its creation: made as anyone else, it could be opened by them before its owner
    /// changed.
    public func restoreStream(_ snapshot: Snapshot, toFileNamed name: String, in directory: String, beneath root: String? = nil) throws -> String {
        try validateTreeName(name)
        let location = try RestoreLocation(target: directory, beneath: root)
        let identity = ThreadFilesystemIdentity()
        defer { identity.reset() }
        let opened = try location.open(thread: identity).directory
        identity.reset()
        try opened.replaceFile(name, mode: 0o600) { try restoreStream(snapshot, to: $0) }
        return location.path + "/" + name
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

/// Maps a sparse file's content, blob after blob, onto its data extents (`TreeNode.dataExtents`).
struct ExtentPlacement {
    private let extents: [FileExtent]
    private let what: String
    private var index = 0
    /// Bytes of `extents[index]` already placed.
    private var filled: Int64 = 0

    init(_ extents: [FileExtent], what: String) {
        self.extents = extents
        self.what = what
    }

    /// Calls `write` with where in the file each part of the next `count` bytes goes, and which part it is.
    mutating func place(_ count: Int, _ write: (_ fileOffset: Int64, _ part: Range<Int>) throws -> Void) throws {
        var start = 0
        while start < count {
            guard index < extents.count else {
                throw RepositoryError("\(what): the snapshot holds more data than its extents have room for; its tree is damaged (run verify)")
            }
            let extent = extents[index]
            let part = Int(min(Int64(count - start), extent.length - filled))
            try write(extent.offset + filled, start..<start + part)
            start += part
            filled += Int64(part)
            if filled == extent.length {
                index += 1
                filled = 0
            }
        }
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

/// Creates the operator's restore target and any missing parents (which, unlike anything inside the target, may be
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

/// Where one snapshot is restored. `trusted` is the operator's own path (a `--target`): made if missing, its
/// symlinks followed like those of any path on a command line. `below` are the components under it (an account's
/// home, for `restore --all`): an account owner may control them, so each is opened without following a symlink,
/// and something else standing where a directory belongs is replaced, as everywhere inside a target.
struct RestoreLocation: Sendable {
    let trusted: String
    let below: [String]

    /// `target` itself is trusted without `root`; with it, `target` must be `root` or a path inside it.
    init(target: String, beneath root: String?) throws {
        guard let root else {
            trusted = target
            below = []
            return
        }
        // Compared as bytes: Swift's == treats NFC and NFD spellings as equal, Linux does not.
        let rootComponents = root.split(separator: "/").map { Array($0.utf8) }
        let targetComponents = target.split(separator: "/")
        guard root.hasPrefix("/") == target.hasPrefix("/"),
              targetComponents.map({ Array($0.utf8) }).starts(with: rootComponents) else {
            throw RepositoryError("restore target \(FileName.printable(target)) is not inside \(FileName.printable(root))")
        }
        let rest = targetComponents.dropFirst(rootComponents.count).map(String.init)
        guard !rest.contains(where: { $0 == "." || $0 == ".." }) else {
            throw RepositoryError("restore target \(FileName.printable(target)) leaves \(FileName.printable(root)); refusing it")
        }
        trusted = root
        below = rest
    }

    /// The target's path, for messages.
    var path: String { below.isEmpty ? trusted : ([trusted.hasSuffix("/") ? String(trusted.dropLast()) : trusted] + below).joined(separator: "/") }

    /// Makes what is missing of the target and opens it; components below `trusted` are made as `makeDirectories`
    /// does, on `thread`. `made`: the paths of the components below `trusted` that this call made (an operator's
    /// own path is never among them, so its owner and mode are never changed).
    func open(thread: ThreadFilesystemIdentity) throws -> (directory: DirectoryDescriptor, made: [String]) {
        try makeTargetDirectory(trusted)
        let root: DirectoryDescriptor
        do { root = try DirectoryDescriptor(trustedPath: trusted) } catch {
            throw RepositoryError("cannot restore into \(FileName.printable(trusted)): \(error)")
        }
        guard !below.isEmpty else { return (root, []) }
        do {
            let (directory, made) = try root.makeDirectories(below, mode: 0o777, thread: thread)
            let base = trusted.hasSuffix("/") ? String(trusted.dropLast()) : trusted
            let paths = below.indices.filter { made[$0] }.map { ([base] + below[...$0]).joined(separator: "/") }
            return (directory, paths)
        } catch {
            throw RepositoryError("cannot restore into \(FileName.printable(path)): \(error)")
        }
    }
}

/// The restore, planned first (directories, links) and then executed (file contents in parallel, metadata last).
/// Entries are named by the directory they are in (an index into `directories`, or `target`) and their own name,
/// so that every step works in an open directory; `relative` is their path in the snapshot, for messages.
struct RestorePlan {
    /// The `directory` of an entry directly in the target.
    static let target = -1

    struct Directory { let parent: Int; let name: String; let relative: String; let node: TreeNode }
    struct Entry { let directory: Int; let name: String; let relative: String; let node: TreeNode }
    /// A file to create and fill; `directoriesBefore` is how many directories were listed before it, all of which
    /// are made before it is created.
    struct FileJob { let directory: Int; let name: String; let relative: String; let node: TreeNode; let directoriesBefore: Int }
    /// A hard link to the file restored from the snapshot path `source`.
    struct HardLink { let entry: Entry; let source: String }

    let location: RestoreLocation
    /// The snapshot path restored at the target (empty for the whole snapshot).
    let prefix: String
    /// The snapshot's root listing: a hard link inside `prefix` may point at a file outside it.
    let snapshotRoot: Tree
    /// The snapshot's own directory (`Snapshot.root`) when the whole snapshot is restored.
    var rootDirectory: RootDirectory?
    /// Only one file is restored (`--path` names a file): nothing else under `prefix` is, so a hard link in it gets
    /// its content as a copy even when the name it links to is in the same directory.
    var singleFile = false
    /// Hard-link targets outside `prefix`, by the relative path of the first link restored as their copy.
    var outsideTargets: [String: String] = [:]
    var files: [FileJob] = []
    /// Parents before children.
    var directories: [Directory] = []
    var symlinks: [Entry] = []
    var hardlinks: [HardLink] = []
    var others: [Entry] = []
    /// Directories whose listing cannot be read, with the reason (they are restored empty).
    var unreadableListings: [String] = []

    init(location: RestoreLocation, prefix: String, snapshotRoot: Tree) {
        self.location = location
        self.prefix = prefix
        self.snapshotRoot = snapshotRoot
    }

    mutating func collect(tree: Tree, directory: Int, relative: String, repository: Repository, decompressor: ZstdDecompressor) throws {
        // Byte-wise: "café" in NFC and in NFD are two files on Linux, though Swift's == calls them equal.
        var seen = Set<[UInt8]>()
        for node in tree.nodes {
            try validateTreeName(node.name)
            guard seen.insert(Array(node.name.utf8)).inserted else {
                throw RepositoryError("snapshot lists \(FileName.printable(node.name).debugDescription) twice in one directory; refusing to restore it (damaged or tampered)")
            }
            let childRelative = relative.isEmpty ? node.name : relative + "/" + node.name
            let entry = Entry(directory: directory, name: node.name, relative: childRelative, node: node)
            switch node.kind {
            case .directory:
                directories.append(Directory(parent: directory, name: node.name, relative: childRelative, node: node))
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
                    try collect(tree: listing, directory: directories.count - 1, relative: childRelative, repository: repository,
                                decompressor: decompressor)
                }
            case .file:
                files.append(FileJob(directory: directory, name: node.name, relative: childRelative, node: node, directoriesBefore: directories.count))
            case .symlink: symlinks.append(entry)
            case .hardlink:
                guard let target = node.target, !target.split(separator: "/").contains(where: { $0 == ".." || $0 == "." }), !target.hasPrefix("/") else {
                    throw RepositoryError("hard link \(childRelative) points at an unsafe path; refusing to restore the snapshot")
                }
                if !singleFile && (prefix.isEmpty || target.hasPrefix(prefix + "/")) {
                    hardlinks.append(HardLink(entry: entry, source: target))
                } else if let first = outsideTargets[target] {
                    hardlinks.append(HardLink(entry: entry, source: first))
                } else {
                    // The file it links to is outside the restored path: the first such link gets the content.
                    let linked = try fileNode(at: target, repository: repository, decompressor: decompressor)
                    files.append(FileJob(directory: directory, name: node.name, relative: childRelative, node: linked, directoriesBefore: directories.count))
                    outsideTargets[target] = childRelative
                }
            case .other: others.append(entry)
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

    /// The identity that makes an entry owned by `node`'s owner in `directory`: that owner's, when it also owns the
    /// directory and is not root (an account restoring into its own home), so that root's rights never reach a
    /// place the account chose; otherwise the process's own. An entry made so for another owner is made private and
    /// given its owner through its descriptor.
    static func creator(of node: TreeNode, in directory: DirectoryDescriptor) -> FilesystemIdentity? {
        directory.owner != 0 && node.uid == directory.owner ? FilesystemIdentity(uid: node.uid, gid: node.gid) : nil
    }

    /// Who owns an entry `creator` makes in `directory` (whose set-group-ID bit hands down its group).
    static func bornOwner(creator: FilesystemIdentity?, in directory: DirectoryDescriptor, thread: ThreadFilesystemIdentity) -> FilesystemIdentity {
        let maker = thread.canSwitch ? creator ?? thread.process : thread.process
        return FilesystemIdentity(uid: maker.uid, gid: directory.mode & S_ISGID != 0 ? directory.group : maker.gid)
    }

    /// Links, special files and directory metadata, after the file contents are in place, on the calling thread
    /// (a writer), whose file-system identity is the process's again when this returns. `failed` are the files
    /// that were not restored; `unwritten`, those of them that were created and must be removed.
    func finish(_ summary: RestoreSummary, target: DirectoryDescriptor, targetMade: Bool, made: MadeDirectories, failed: Set<Int>,
                unwritten: [Int], isRoot: Bool) -> RestoreSummary {
        var result = summary
        let identity = ThreadFilesystemIdentity()
        defer { identity.reset() }
        var cursor = DirectoryCursor(plan: self, target: target, made: made)
        for job in unwritten {
            let file = files[job]
            guard let directory = try? cursor.directory(file.directory) else { continue }
            try? identity.use(Self.creator(of: file.node, in: directory))
            FileName.withPath(file.name) { _ = unlinkat(directory.descriptor, $0, 0) }
        }
        if !hardlinks.isEmpty {
            var sources = DirectoryCursor(plan: self, target: target, made: made)
            // Keyed by bytes: Swift's == treats NFC and NFD spellings as equal, Linux does not.
            var jobs: [[UInt8]: Int] = [:]
            for (job, file) in files.enumerated() where !failed.contains(job) { jobs[Array(file.relative.utf8)] = job }
            for link in hardlinks {
                do {
                    guard let job = jobs[Array(link.source.utf8)] else { throw RepositoryError("that file was not restored") }
                    let source = try sources.directory(files[job].directory)
                    let directory = try cursor.directory(link.entry.directory)
                    try directory.makeHardLink(link.entry.name, to: files[job].name, in: source,
                                               creator: Self.creator(of: link.entry.node, in: directory), thread: identity)
                    result.hardlinks += 1
                } catch {
                    result.errors.append("\(FileName.printable(link.entry.relative)): cannot create hard link to \(FileName.printable(link.source)): \(error)")
                }
            }
        }
        for link in symlinks {
            do {
                let directory = try cursor.directory(link.directory)
                // Made, and its times set by name, as the owner of a directory that is not root's, so neither can
                // touch anything that owner could not; its own owner is then set through a descriptor of the link.
                let creator = directory.owner == 0 ? nil
                    : FilesystemIdentity(uid: directory.owner, gid: link.node.uid == directory.owner ? link.node.gid : directory.group)
                try directory.makeSymlink(link.name, to: link.node.target ?? "", creator: creator, thread: identity)
                try? directory.setTimes(link.name, modified: link.node.mtime)
                let born = Self.bornOwner(creator: creator, in: directory, thread: identity)
                if isRoot && (born.uid != link.node.uid || born.gid != link.node.gid) {
                    try identity.use(nil)
                    try directory.setSymlinkOwner(link.name, uid: link.node.uid, gid: link.node.gid)
                }
                result.symlinks += 1
            } catch {
                result.errors.append("\(FileName.printable(link.relative)): cannot create symlink: \(error)")
            }
        }
        for entry in others where entry.node.mode & S_IFMT == S_IFIFO {
            do {
                let directory = try cursor.directory(entry.directory)
                // As symlinks: made and timed as the creator, then given their owner through a descriptor of the
                // FIFO itself (O_PATH opens it without waiting for a writer).
                let creator = Self.creator(of: entry.node, in: directory)
                try directory.makeFIFO(entry.name, mode: entry.node.mode & 0o7777, creator: creator, thread: identity)
                try? directory.setTimes(entry.name, modified: entry.node.mtime)
                let born = Self.bornOwner(creator: creator, in: directory, thread: identity)
                if isRoot && (born.uid != entry.node.uid || born.gid != entry.node.gid) {
                    try identity.use(nil)
                    try directory.setOwner(entry.name, kind: S_IFIFO, uid: entry.node.uid, gid: entry.node.gid)
                }
            } catch {
                result.errors.append("\(FileName.printable(entry.relative)): cannot create FIFO: \(error)")
            }
        }
        // Directories last and deepest first, so writing their contents does not disturb their mtimes. Through
        // their descriptors, as the process: the cursor opens only the directories this restore made or opened.
        identity.reset()
        for index in directories.indices.reversed() where made.identity(of: index) != nil {
            let entry = directories[index]
            do {
                let directory = try cursor.directory(index)
                if isRoot { fchown(directory.descriptor, entry.node.uid, entry.node.gid) }
                fchmod(directory.descriptor, entry.node.mode & 0o7777)
                var times = timestamps(entry.node.mtime)
                futimens(directory.descriptor, &times)
                result.directories += 1
            } catch {
                result.errors.append("\(FileName.printable(entry.relative)): \(error)")
            }
        }
        // The target itself, when this restore made it for the snapshot's own directory (`home/USER`): its owner,
        // mode and time from the snapshot, or the account could not write to its home after a disaster recovery.
        if targetMade, let directory = rootDirectory {
            if isRoot { fchown(target.descriptor, directory.uid, directory.gid) }
            fchmod(target.descriptor, mode_t(directory.mode & 0o7777))
            var times = timestamps(directory.mtime)
            futimens(target.descriptor, &times)
        }
        return result
    }

    /// Files from this size up are written with `O_DIRECT` (see `DirectRestoreOutput`). Smaller ones go through the
    /// page cache: written directly, each would wait for the disk. 64 KiB, 128 KiB and 256 KiB measured the same on
    /// the benchmark; the highest keeps the most files clear of that wait on slower disks.
    static let directWriteThreshold: Int64 = 256 << 10

    /// Creates `job`'s file in `directory` (replacing whatever is there), empty, and opens it for writing; the one
    /// step of a file's restore that allocates an inode. Returns whether its owner and mode still have to be set
    /// after writing.
    func createFile(_ job: FileJob, in directory: DirectoryDescriptor, thread: ThreadFilesystemIdentity, isRoot: Bool,
                    umask: mode_t) throws -> (descriptor: Int32, needsOwnerAndMode: Bool) {
        let mode = mode_t(job.node.mode & 0o7777)
        let creator = Self.creator(of: job.node, in: directory)
        let born = Self.bornOwner(creator: creator, in: directory, thread: thread)
        // A new file that already has its final owner, and whose mode the umask leaves alone, is created with that
        // mode: on ext4 each fchown/fchmod dirties the inode again, which was a measurable part of a restore.
        // Otherwise (another owner, special bits) it is created private and fixed up at the end.
        if (!isRoot || (job.node.uid == born.uid && job.node.gid == born.gid)) && mode & 0o7000 == 0 && mode & umask == 0 {
            return (try directory.createFile(job.name, mode: mode, creator: creator, thread: thread), false)
        }
        return (try directory.createFile(job.name, mode: 0o600, creator: creator, thread: thread), true)
    }

    /// Writes the content of a file `createFile` made, then its owner, mode and times, and closes it. Only the
    /// descriptor is used, so the writer threads keep the process's identity. Returns the file's size.
    func writeFile(_ job: FileJob, descriptor: Int32, needsOwnerAndMode: Bool, repository: Repository,
                   decompressor: ZstdDecompressor, isRoot: Bool) throws -> Int64 {
        defer { close(descriptor) }
        var offset: Int64 = 0
        if let extents = job.node.dataExtents {
            // A sparse file: each blob goes where its extent says, and everything else stays a hole.
            var placement = ExtentPlacement(extents, what: job.relative)
            for id in job.node.content {
                let bytes = try repository.loadBlob(id, decompressor: decompressor)
                try placement.place(bytes.count) { fileOffset, range in
                    try writeSparse(descriptor, range.count == bytes.count ? bytes : Array(bytes[range]), at: fileOffset, what: job.relative)
                }
            }
            guard ftruncate(descriptor, off_t(job.node.size)) == 0 else { throw RepositoryError("cannot set size: \(String(cString: strerror(errno)))") }
            offset = job.node.size
        } else if job.node.size >= Self.directWriteThreshold {
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
        var times = timestamps(job.node.mtime)
        futimens(descriptor, &times)
        return offset
    }
}

/// Which of a plan's directories the restore made or opened, by where they are on disk; nil for one it could not
/// make. Written by the creating thread before the plan's last file is queued, read by the thread that finishes
/// the plan after that (the hand-over goes through `PlanInProgress`'s lock), never both at once.
final class MadeDirectories: @unchecked Sendable {
    private var identities: [FileIdentity?]

    init(count: Int) { identities = Array(repeating: nil, count: count) }

    func identity(of index: Int) -> FileIdentity? { identities[index] }

    func record(_ index: Int, _ identity: FileIdentity) { identities[index] = identity }
}

/// The open directories from a restore target down to the one being worked in, so a run of entries in one
/// directory costs one openat for the directory, not one per path component and entry. A directory is opened
/// without following a symlink, and only if it is still the one the restore made or opened (`made`): one that
/// whoever controls its parent put in its place is refused. At most `limit` are held: a tree nested deeper than
/// that (an account can make one on purpose) costs walks from the target instead of running the process out of
/// descriptors, which would fail other accounts' files too. Used by one thread.
struct DirectoryCursor {
    static let limit = 48
    let plan: RestorePlan
    let target: DirectoryDescriptor
    let made: MadeDirectories
    /// A run of the path to the directory worked in: each is the parent of the next.
    private var open: [(index: Int, directory: DirectoryDescriptor)] = []

    init(plan: RestorePlan, target: DirectoryDescriptor, made: MadeDirectories) {
        self.plan = plan
        self.target = target
        self.made = made
    }

    /// The open directory `index` (`RestorePlan.target` for the target), opening what is missing below the deepest
    /// of its parents that is open.
    mutating func directory(_ index: Int) throws -> DirectoryDescriptor {
        if index == RestorePlan.target {
            open.removeAll()
            return target
        }
        if let last = open.last, last.index == index { return last.directory }
        var chain: [Int] = []
        var step = index
        while step != RestorePlan.target {
            chain.append(step)
            step = plan.directories[step].parent
        }
        chain.reverse()
        // Keep the open run as far as it is on the way to `index`; start from the target when none of it is.
        var next = 0
        var kept = 0
        if let first = open.first, let start = chain.firstIndex(of: first.index) {
            while kept < open.count && start + kept < chain.count && open[kept].index == chain[start + kept] { kept += 1 }
            next = start + kept
        }
        open.removeLast(open.count - kept)
        var directory = open.last?.directory ?? target
        for step in chain[next...] {
            let entry = plan.directories[step]
            guard let expected = made.identity(of: step) else {
                throw RepositoryError("its directory \(FileName.printable(entry.relative)) could not be restored")
            }
            let opened = try directory.openDirectory(entry.name)
            guard opened.identity == expected else {
                throw RepositoryError("directory \(FileName.printable(entry.relative)) was replaced by something else during the restore")
            }
            push(step, opened)
            directory = opened
        }
        return directory
    }

    /// `directory` was just made (or opened) as `index`, whose parent `directory(_:)` returned last.
    mutating func push(_ index: Int, _ directory: DirectoryDescriptor) {
        open.append((index, directory))
        if open.count > Self.limit { open.removeFirst(open.count - Self.limit) }
    }
}

/// One snapshot's restore while its files are being written: counts the files handed to writers, gathers the
/// summary, and runs the plan's `finish` (links, directory metadata) once the last file is written and no more
/// will come.
final class PlanInProgress: Sendable {
    struct Progress {
        var summary = RestoreSummary()
        var pending = 0
        var allQueued = false
        /// Files not restored; `unwritten` are those of them that were created and are to be removed.
        var failed = Set<Int>()
        var unwritten: [Int] = []
    }

    let plan: RestorePlan
    let target: DirectoryDescriptor
    /// The restore made the target for the snapshot's own directory (see `RestorePlan.finish`).
    let targetMade: Bool
    let made: MadeDirectories
    let isRoot: Bool
    private let done: @Sendable (RestoreSummary) -> Void
    private let state: Mutex<Progress>

    init(plan: RestorePlan, target: DirectoryDescriptor, targetMade: Bool, isRoot: Bool, done: @escaping @Sendable (RestoreSummary) -> Void) {
        self.targetMade = targetMade
        var progress = Progress()
        progress.summary.errors = plan.unreadableListings
        state = Mutex(progress)
        self.plan = plan
        self.target = target
        self.made = MadeDirectories(count: plan.directories.count)
        self.isRoot = isRoot
        self.done = done
    }

    /// Makes (or opens) the plan's directory `index` in its parent, private to its maker until `finish`, and
    /// leaves it open in `cursor`. One that cannot be made is named in the summary, and so is every file below it.
    func makeDirectory(_ index: Int, cursor: inout DirectoryCursor, thread: ThreadFilesystemIdentity) {
        let entry = plan.directories[index]
        do {
            let parent = try cursor.directory(entry.parent)
            let creator = RestorePlan.creator(of: entry.node, in: parent)
            let (directory, made) = try parent.makeDirectory(entry.name, mode: 0o700, creator: creator, thread: thread)
            // An existing directory its owner may not write in (an earlier restore of a read-only directory, say)
            // is opened up for the restore; `finish` sets its mode from the snapshot.
            if !made && directory.owner != 0 && directory.mode & 0o700 != 0o700 {
                fchmod(directory.descriptor, (directory.mode & 0o7777) | 0o700)
            }
            self.made.record(index, directory.identity)
            cursor.push(index, directory)
        } catch {
            state.withLock { $0.summary.errors.append("\(FileName.printable(entry.relative)): \(error)") }
        }
    }

    func queued() { state.withLock { $0.pending += 1 } }

    /// A file that could not be created: named in the summary's errors.
    func record(job: Int, error: any Error) {
        let file = plan.files[job]
        state.withLock {
            $0.summary.errors.append("\(FileName.printable(file.relative)): \(error)")
            $0.failed.insert(job)
        }
    }

    func written(bytes: Int64) {
        settle { $0.summary.files += 1; $0.summary.bytes = $0.summary.bytes.addingClamped(bytes); $0.pending -= 1 }
    }

    /// A file created but not written: named in the summary's errors, and removed by `finish`.
    func failed(job: Int, error: any Error) {
        record(job: job, error: error)
        settle { $0.unwritten.append(job); $0.pending -= 1 }
    }

    /// Every file of the plan has been created (or has failed): the writers may finish the plan.
    func allQueued() {
        settle { $0.allQueued = true }
    }

    /// Applies `change`, then finishes the plan if that left no file pending and no more to come (exactly once: only
    /// the change that reaches that state sees it).
    private func settle(_ change: (inout Progress) -> Void) {
        let finished = state.withLock { state -> Progress? in
            change(&state)
            return state.pending == 0 && state.allQueued ? state : nil
        }
        if let finished {
            done(plan.finish(finished.summary, target: target, targetMade: targetMade, made: made, failed: finished.failed,
                             unwritten: finished.unwritten, isRoot: isRoot))
        }
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
