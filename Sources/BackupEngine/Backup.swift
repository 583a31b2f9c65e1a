import Crypto
import Dispatch
import Foundation
import Synchronization
import Zstd

/// How a backup runs.
public struct BackupOptions: Sendable {
    /// Tags stored in the snapshot (account, kind, host …). The parent snapshot is the latest one with equal tags.
    public var tags: [String: String]
    /// Paths relative to the backed-up directory to leave out (e.g. "mail").
    public var excludes: Set<String>
    public var chunking: ChunkerParameters
    /// Called now and then with running totals, for progress lines on a terminal.
    public var progress: (@Sendable (BackupSummary) -> Void)?
    /// Called after all data is stored and before the snapshot is recorded; throwing there records no snapshot
    /// (a database dump checks its tool's exit status this way).
    public var beforeCommit: (@Sendable () throws -> Void)?
    /// Test hook: called at named points ("pack:<name>", "index", "snapshot"); throwing there simulates a crash.
    public var checkpoint: (@Sendable (String) throws -> Void)?

    public init(tags: [String: String], excludes: Set<String> = [], chunking: ChunkerParameters = .files,
                progress: (@Sendable (BackupSummary) -> Void)? = nil, beforeCommit: (@Sendable () throws -> Void)? = nil,
                checkpoint: (@Sendable (String) throws -> Void)? = nil) {
        self.beforeCommit = beforeCommit
        self.tags = tags
        self.excludes = excludes
        self.chunking = chunking
        self.progress = progress
        self.checkpoint = checkpoint
    }
}

extension Repository {
    /// Backs up the tree under `directory` into a new snapshot.
    public func backup(directory: String, options: BackupOptions) throws -> Snapshot {
        var info = stat()
        guard lstat(directory, &info) == 0, info.st_mode & S_IFMT == S_IFDIR else {
            throw RepositoryError("cannot back up \(directory): not a readable directory")
        }
        return try withLock(exclusive: false) {
            try runBackup(options: options) { job in
                let parentTree = try job.parent.map { try self.loadTree($0.tree) }
                return try job.directory(path: directory, relative: "", parent: parentTree)
            }
        }
    }

    /// Backs up a byte stream (a database dump read from a pipe) as one file named `name`, without a temporary file.
    public func backup(stream descriptor: Int32, name: String, options: BackupOptions) throws -> Snapshot {
        try validateTreeName(name)
        return try withLock(exclusive: false) {
            try runBackup(options: options) { job in
                let (content, size) = try job.chunkDescriptor(descriptor, path: name)
                let now = Int64(Date().timeIntervalSince1970 * 1e9)
                job.summary.withLock { $0.filesNew += 1; $0.filesRead += 1 }
                let node = TreeNode(name: name, kind: .file, mode: 0o100600, uid: getuid(), gid: getgid(), mtime: now, ctime: now,
                                    inode: 0, size: size, content: content)
                return try job.storeTree(Tree(nodes: [node]))
            }
        }
    }

    private func runBackup(options: BackupOptions, _ body: (BackupJob) throws -> String) throws -> Snapshot {
        let started = Date()
        let parent = try snapshots().last { $0.tags == options.tags }
        let checkpoint = options.checkpoint
        var packHook: (@Sendable (String) throws -> Void)?
        if let checkpoint { packHook = { name in try checkpoint("pack:" + name) } }
        let writer = PackWriter(storage: storage, dataKey: keys.dataKey, known: knownBlobs, beforePackWrite: packHook)
        let job = BackupJob(repository: self, writer: writer, options: options, parent: parent)
        let root: String
        do {
            root = try body(job)
            try job.drain()
        } catch {
            job.abandon()
            throw error
        }
        let (packs, stored) = try writer.finish()
        try checkpoint?("index")
        _ = try writeIndex(packs)
        try options.beforeCommit?()
        try checkpoint?("snapshot")
        var summary = job.summary.withLock { $0 }
        summary.blobsAdded = packs.reduce(0) { $0 + $1.entries.count }
        summary.bytesStored = stored
        summary.seconds = Date().timeIntervalSince(started)
        var snapshot = Snapshot(id: "", time: started, tags: options.tags, tree: root, parent: parent?.id, summary: summary)
        snapshot.id = try writeSnapshot(snapshot)
        return snapshot
    }
}

/// State of one running backup: walks the tree on the calling thread (reading, chunking, hashing), and hands new
/// chunks to worker threads that compress, encrypt and append them to packs.
final class BackupJob: @unchecked Sendable {
    // @unchecked: the walk runs on one thread; what workers touch is the Mutex-protected summary, the
    // thread-safe PackWriter, the compressor pool and the failure slot.
    let repository: Repository
    let writer: PackWriter
    let options: BackupOptions
    let parent: Snapshot?
    let chunker: Chunker
    let summary = Mutex(BackupSummary())
    private let workers = DispatchQueue(label: "fleetkeep.backup.workers", attributes: .concurrent)
    private let group = DispatchGroup()
    /// Bounds the chunks in flight, and so memory: at most this many chunk copies exist at once.
    private let inFlight = DispatchSemaphore(value: ProcessInfo.processInfo.activeProcessorCount + 2)
    private let compressors = CompressorPool()
    private let failure = Mutex<(any Error)?>(nil)
    private var buffer: [UInt8]
    private var hardLinks: [String: String] = [:]
    private var lastProgress = Date()

    init(repository: Repository, writer: PackWriter, options: BackupOptions, parent: Snapshot?) {
        self.repository = repository
        self.writer = writer
        self.options = options
        self.parent = parent
        chunker = Chunker(seed: repository.keys.chunkerSeed, parameters: options.chunking)
        buffer = [UInt8](repeating: 0, count: 2 * options.chunking.maximum)
    }

    // MARK: Walking

    func directory(path: String, relative: String, parent: Tree?) throws -> String {
        let previous = Dictionary((parent?.nodes ?? []).map { ($0.name, $0) }, uniquingKeysWith: { first, _ in first })
        var nodes: [TreeNode] = []
        for name in try listDirectory(path) {
            let childRelative = relative.isEmpty ? name : relative + "/" + name
            if options.excludes.contains(childRelative) { continue }
            let childPath = path + "/" + name
            var info = stat()
            guard lstat(childPath, &info) == 0 else {
                recordError("\(childRelative): \(String(cString: strerror(errno)))")
                continue
            }
            var node = TreeNode(name: name, kind: .other, mode: info.st_mode, uid: info.st_uid, gid: info.st_gid,
                                mtime: Int64(info.st_mtim.tv_sec) * 1_000_000_000 + Int64(info.st_mtim.tv_nsec),
                                ctime: Int64(info.st_ctim.tv_sec) * 1_000_000_000 + Int64(info.st_ctim.tv_nsec),
                                inode: UInt64(info.st_ino), size: Int64(info.st_size))
            switch info.st_mode & S_IFMT {
            case S_IFDIR:
                node.kind = .directory
                node.size = 0
                let childParent = try previous[name].flatMap { $0.kind == .directory ? $0.subtree : nil }.map { try repository.loadTree($0) }
                node.subtree = try directory(path: childPath, relative: childRelative, parent: childParent)
                summary.withLock { $0.directories += 1 }
            case S_IFLNK:
                node.kind = .symlink
                node.target = readLink(childPath)
            case S_IFREG:
                let linkKey = "\(info.st_dev):\(info.st_ino)"
                if info.st_nlink > 1, let first = hardLinks[linkKey] {
                    node.kind = .hardlink
                    node.target = first
                    break
                }
                if info.st_nlink > 1 { hardLinks[linkKey] = childRelative }
                node.kind = .file
                if let old = previous[name], old.kind == .file, old.size == node.size, old.mtime == node.mtime,
                   old.ctime == node.ctime, old.inode == node.inode, let content = old.content {
                    // Unchanged: size, mtime, ctime and inode match the parent snapshot, so the file is not read.
                    node.content = content
                    summary.withLock { $0.filesUnchanged += 1; $0.bytesTotal += node.size }
                } else {
                    do {
                        let descriptor = open(childPath, O_RDONLY | O_NOFOLLOW | O_CLOEXEC)
                        guard descriptor >= 0 else { throw RepositoryError(String(cString: strerror(errno))) }
                        defer { close(descriptor) }
                        (node.content, node.size) = try chunkDescriptor(descriptor, path: childRelative)
                        summary.withLock {
                            if previous[name] == nil { $0.filesNew += 1 } else { $0.filesChanged += 1 }
                            $0.filesRead += 1
                            $0.bytesTotal += node.size
                        }
                    } catch let error as RepositoryError {
                        recordError("\(childRelative): \(error.message)")
                        continue
                    }
                }
            default:
                node.size = 0
            }
            nodes.append(node)
            reportProgress()
        }
        return try storeTree(Tree(nodes: nodes))
    }

    private func listDirectory(_ path: String) throws -> [String] {
        guard let directory = opendir(path) else {
            throw RepositoryError("cannot list \(path): \(String(cString: strerror(errno)))")
        }
        defer { closedir(directory) }
        var names: [String] = []
        while let entry = readdir(directory) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) { raw -> String? in
                let bytes = raw.prefix { $0 != 0 }
                return String(validating: bytes, as: UTF8.self)
            }
            guard let name else {
                recordError("\(path): skipped a file whose name is not UTF-8")
                continue
            }
            if name != "." && name != ".." { names.append(name) }
        }
        return names.sorted()
    }

    private func readLink(_ path: String) -> String {
        var target = [CChar](repeating: 0, count: Int(PATH_MAX) + 1)
        let count = readlink(path, &target, target.count - 1)
        guard count >= 0 else { return "" }
        return String(decoding: target[0..<count].map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }

    // MARK: Chunking

    /// Reads `descriptor` to its end, cutting content-defined chunks; returns the content ids (hex) and the size.
    func chunkDescriptor(_ descriptor: Int32, path: String) throws -> ([String], Int64) {
        var ids: [String] = []
        var filled = 0, start = 0
        var total: Int64 = 0
        var atEnd = false
        while true {
            if !atEnd && filled < buffer.count {
                let got = buffer.withUnsafeMutableBytes { read(descriptor, $0.baseAddress! + filled, $0.count - filled) }
                if got < 0 {
                    if errno == EINTR { continue }
                    throw RepositoryError("read failed: \(String(cString: strerror(errno)))")
                }
                if got == 0 { atEnd = true } else { filled += got; total += Int64(got) }
                if !atEnd && filled < buffer.count { continue }
            }
            while start < filled {
                let cut = buffer.withUnsafeBytes { chunker.boundary(in: UnsafeRawBufferPointer(rebasing: $0[start..<filled]), isFinal: atEnd) }
                guard let cut else { break }
                ids.append(try store(start: start, count: cut))
                start += cut
            }
            if atEnd { break }
            // Keep the undecided tail and read more behind it.
            if start > 0 {
                buffer.withUnsafeMutableBytes { raw in
                    raw.baseAddress!.copyMemory(from: raw.baseAddress! + start, byteCount: filled - start)
                }
                filled -= start
                start = 0
            }
        }
        summary.withLock { $0.bytesRead += total }
        return (ids, total)
    }

    /// Hashes one chunk here; a new one is copied and handed to a worker to compress, encrypt and pack.
    private func store(start: Int, count: Int) throws -> String {
        let id = buffer.withUnsafeBytes { repository.blobID(UnsafeRawBufferPointer(rebasing: $0[start..<start + count])) }
        if writer.reserve(id) {
            try throwIfFailed()
            let chunk = Array(buffer[start..<start + count])
            summary.withLock { $0.bytesAdded += Int64(count) }
            inFlight.wait()
            workers.async(group: group) { [self] in
                defer { inFlight.signal() }
                let compressor = compressors.take()
                defer { compressors.give(compressor) }
                do {
                    try chunk.withUnsafeBytes { try writer.add(id: id, kind: .data, plaintext: $0, compressor: compressor) }
                } catch {
                    writer.unreserve(id)
                    failure.withLock { if $0 == nil { $0 = error } }
                }
            }
        }
        return id.hex
    }

    /// Stores a directory listing (deduplicated like any blob) and returns its id.
    func storeTree(_ tree: Tree) throws -> String {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        let bytes = try encoder.encode(tree)
        let id = repository.blobID(bytes)
        if writer.reserve(id) {
            let compressor = compressors.take()
            defer { compressors.give(compressor) }
            try bytes.withUnsafeBytes { try writer.add(id: id, kind: .tree, plaintext: $0, compressor: compressor) }
        }
        return id.hex
    }

    /// Waits for the workers and rethrows the first failure (a full disk, say).
    func drain() throws {
        group.wait()
        try throwIfFailed()
    }

    /// Lets workers finish after an error so no thread outlives the job.
    func abandon() { group.wait() }

    private func throwIfFailed() throws {
        if let error = failure.withLock({ $0 }) { throw error }
    }

    private func recordError(_ message: String) {
        summary.withLock { $0.errors.append(message) }
    }

    private func reportProgress() {
        guard let progress = options.progress, Date().timeIntervalSince(lastProgress) > 0.5 else { return }
        lastProgress = Date()
        progress(summary.withLock { $0 })
    }
}

/// Reusable zstd contexts for worker threads. A context is used by one thread at a time: `take` hands it out and
/// `give` returns it, both under the lock, which is why the non-Sendable contexts may live here (`@unchecked`).
final class CompressorPool: @unchecked Sendable {
    private let lock = NSLock()
    private var idle: [ZstdCompressor] = []

    func take() -> ZstdCompressor {
        lock.lock()
        defer { lock.unlock() }
        return idle.popLast() ?? ZstdCompressor()
    }

    func give(_ compressor: ZstdCompressor) {
        lock.lock()
        idle.append(compressor)
        lock.unlock()
    }
}
