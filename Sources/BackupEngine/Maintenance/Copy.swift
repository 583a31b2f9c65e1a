import Crypto
import Dispatch
import Foundation
import Synchronization

/// The files of a repository, for an off-site copier deciding what the remote lacks.
public struct RepositoryFileList: Codable, Sendable, Equatable {
    /// Repository-relative path -> size in bytes.
    public var files: [String: Int]

    public init(files: [String: Int]) { self.files = files }
}

/// What `Repository.mirror` did.
public struct MirrorReport: Codable, Sendable {
    public var filesCopied = 0
    public var bytesCopied: Int64 = 0
    public var filesSkipped = 0
    public var filesRemoved = 0
}

/// What a copy to another repository (the off-site push) did.
public struct CopyReport: Codable, Sendable {
    public var snapshotsCopied = 0
    public var snapshotsAlreadyThere = 0
    public var packsUploaded = 0
    public var packsAlreadyThere = 0
    public var bytesUploaded: Int64 = 0
    public var seconds: Double = 0
}

extension Repository {
    /// Every file of the repository on `storage`: `config`, `keys/*`, `data/XX/*`, `index/*`, `snapshots/*`
    /// (never `locks/` or temporary files). Every name but `config` is unique to its content (random or a hash),
    /// so a file present on both sides with the same size need not be copied again.
    public static func files(in storage: any RepositoryStorage) throws -> RepositoryFileList {
        var files: [String: Int] = [:]
        func add(_ path: String) throws { if let size = try storage.size(path) { files[path] = size } }
        try add("config")
        for directory in ["keys", "index", "snapshots"] {
            for name in try storage.list(directory) { try add(directory + "/" + name) }
        }
        for sub in try storage.list("data") where sub.count == 2 {
            for name in try storage.list("data/" + sub) { try add("data/" + sub + "/" + name) }
        }
        return RepositoryFileList(files: files)
    }

    /// Makes `destination` a mirror of the whole repository on `source`, transferring only missing (or differently sized)
    /// files. Order keeps every intermediate state of the destination consistent: config and keys, then packs,
    /// then index files, then snapshots; with `mirrorDeletes`, snapshots, then index files, then packs that the
    /// source no longer has are removed last (so what prune freed locally is freed remotely too).
    /// The destination is a full repository: `Repository.open(storage: destination, keySource:)` restores from it.
    public static func mirror(from source: any RepositoryStorage, to destination: any RepositoryStorage, mirrorDeletes: Bool = true,
                              progress: (@Sendable (_ path: String, _ bytes: Int) -> Void)? = nil) throws -> MirrorReport {
        var report = MirrorReport()
        let have = try files(in: source).files
        let remote = try files(in: destination).files
        func rank(_ path: String) -> Int {
            if path == "config" || path.hasPrefix("keys/") { return 0 }
            if path.hasPrefix("data/") { return 1 }
            if path.hasPrefix("index/") { return 2 }
            return 3
        }
        for path in have.keys.sorted(by: { (rank($0), $0) < (rank($1), $1) }) {
            if remote[path] == have[path] && path != "config" {
                report.filesSkipped += 1
                continue
            }
            let bytes = try source.read(path)
            try destination.write(path, bytes)
            report.filesCopied += 1
            report.bytesCopied += Int64(bytes.count)
            progress?(path, bytes.count)
        }
        guard mirrorDeletes else { return report }
        for path in remote.keys.sorted(by: { (-rank($0), $0) < (-rank($1), $1) }) where have[path] == nil && rank(path) > 0 {
            try destination.remove(path)
            report.filesRemoved += 1
        }
        return report
    }

    /// Makes `storage` a second home of this repository: the same config and sealed keys, so it stays encrypted
    /// with the same keys and the remote host never sees plaintext. Does nothing when it is already there.
    public func replicateConfiguration(to storage: any RepositoryStorage) throws {
        if try storage.size("config") != nil { return }
        for name in try self.storage.list("keys") { try storage.write("keys/" + name, try self.storage.read("keys/" + name)) }
        try storage.write("config", try self.storage.read("config"))
    }

    /// Copies `snapshots` and the packs they need to `remote` (same keys: see `replicateConfiguration`), uploading
    /// only packs the remote lacks; other snapshots' data (e.g. email) stays local unless it shares a pack.
    /// Order keeps the remote consistent at every moment: packs, then an index for them, then snapshot files.
    /// An interrupted copy resumes: packs that finished uploading are found by name and size and not sent again.
    ///
    /// Packs go up a batch at a time, each batch followed by the remote index file that lists it, so at most about
    /// `foldLimit` index entries are in memory however large the repository (`LoadedIndex.forEachPack`).
    ///
    /// `uploaders` are connections to the same remote (each used by one thread at a time): packs are then uploaded
    /// over all of them at once, which keeps both ends busy while one connection waits for a server-side fsync or
    /// rename and spreads the SSH encryption of the uploads over the cores. The index of a batch is written only
    /// after every pack of the batch is flushed and renamed on every connection (`upload`), and not at all if one
    /// connection failed, so no remote index ever names a pack that is missing or not yet on the remote disk.
    public func copy(_ snapshots: [Snapshot], to remote: Repository, uploaders: [any RepositoryStorage] = [],
                     progress: (@Sendable (CopyReport) -> Void)? = nil) throws -> CopyReport {
        let started = Date()
        var report = CopyReport()
        // A local pack that is gone cannot be sent: its blobs count as missing (and the message says so) instead.
        try excludeMissingPacks()
        let index = indexSnapshot
        let needed = try reachableBlobs(snapshots, index: index)
        // One byte per local pack, and the remote's own name lookup (from its cache), rather than sets of pack
        // numbers and names that grow with both repositories.
        var neededPacks = [Bool](repeating: false, count: index.packs.count)
        for id in needed {
            guard let location = index.blobs[id] else { throw RepositoryError("blob \(id) needed by a snapshot is missing locally; run verify") }
            neededPacks[Int(location.pack)] = true
        }
        let remoteIndex = remote.indexSnapshot
        let connections = uploaders.isEmpty ? [remote.storage] : uploaders
        var batch: [(pack: String, entries: [PackEntry])] = []
        var batchEntries = 0
        var missing: [String] = []
        func uploadBatch() throws {
            report = try upload(missing, over: connections, report: report, progress: progress)
            if let name = try remote.writeIndex(batch) {
                report.bytesUploaded += Int64(try remote.storage.size("index/" + name) ?? 0)
            }
            batch = []
            batchEntries = 0
            missing = []
        }
        try index.forEachPack(limit: foldLimit) { number, entries in
            guard neededPacks[Int(number)] else { return }
            let pack = index.packs[Int(number)]
            if remoteIndex.packs.number(of: pack) != nil {
                report.packsAlreadyThere += 1
                return
            }
            let path = Self.packPath(pack)
            if let remoteSize = try remote.storage.size(path), remoteSize == (try storage.size(path)) {
                report.packsAlreadyThere += 1
            } else {
                missing.append(path)
            }
            batch.append((pack, entries.map { index.entry($0.id, $0.location) }))
            batchEntries += entries.count
            if batchEntries >= foldLimit { try uploadBatch() }
        }
        if !batch.isEmpty { try uploadBatch() }
        let remoteSnapshots = Set(try remote.storage.list("snapshots"))
        var newSnapshots: [String] = []
        for snapshot in snapshots {
            if remoteSnapshots.contains(snapshot.id) {
                report.snapshotsAlreadyThere += 1
            } else {
                newSnapshots.append("snapshots/" + snapshot.id)
            }
        }
        // Snapshot files are small and each waits for a flush on the remote: over all connections at once, like
        // the packs, rather than one after another on one.
        let sent = try upload(newSnapshots, over: connections, report: CopyReport(), progress: nil)
        report.snapshotsCopied += sent.packsUploaded
        report.bytesUploaded += sent.bytesUploaded
        // The next push opens the remote again: from a cache rather than by reading every index file it wrote.
        remote.foldIndexIfWorthwhile()
        report.seconds = Date().timeIntervalSince(started)
        return report
    }

    /// Packs an upload lane stages (`RepositoryStorage.stage`) before it commits them. Over SFTP a commit waits for
    /// the remote disk; with several packs sent first, that wait comes once per group, and the other connections
    /// keep the cores busy meanwhile. Bounded so that the server holds at most this many open files per connection
    /// and a failure leaves little unflushed work to send again.
    static let stagedPacksPerLane = 8

    /// Uploads `paths` (packs, or snapshot files, counted as packs in the result) over the given connections, one
    /// thread each, taking the next pack from a shared queue. Every pack is durable under its name when this
    /// returns: each lane stages its packs and commits them in groups, and the last group before returning, so the
    /// caller may then write an index naming them. A pack counts as uploaded (and in `progress`) once committed.
    /// The first failure stops the others and is rethrown; lanes still working then commit what they had sent
    /// (found by name and size and not sent again by the next push), and the caller writes no index.
    private func upload(_ paths: [String], over connections: [any RepositoryStorage], report: CopyReport,
                        progress: (@Sendable (CopyReport) -> Void)?) throws -> CopyReport {
        guard !paths.isEmpty else { return report }
        let state = UploadState(report)
        let storage = storage
        Self.onThreads(max(1, min(connections.count, paths.count)), named: "fk-upload") { lane in
            let connection = connections[lane]
            var staged: [any StagedWrite] = []
            /// Commits what this lane staged, oldest first; stops at the first failure.
            func commitStaged() throws {
                defer { staged = [] }
                for (position, write) in staged.enumerated() {
                    do {
                        try write.commit()
                    } catch {
                        for later in staged[(position + 1)...] { later.discard() }
                        throw error
                    }
                    state.uploaded(write.size, progress: progress)
                }
            }
            do {
                while let index = state.nextPack(of: paths.count) {
                    staged.append(try connection.stage(paths[index], try storage.read(paths[index])))
                    if staged.count >= Self.stagedPacksPerLane { try commitStaged() }
                }
                // Another lane's failure ends the queue too: what this lane sent is still committed, so a re-run
                // finds it by name and size.
                try commitStaged()
            } catch {
                for write in staged { write.discard() }
                state.fail(error)
            }
        }
        return try state.result()
    }

    /// Seals this repository's master keys for one more key file or passphrase (e.g. an escrow passphrase).
    public func addKey(_ source: KeySource) throws {
        let secret = try source.secret(create: true)
        let sealed = try SealedKeyFile.seal(keys, with: source, secret: secret)
        try storage.write("keys/" + Hex.encode(SecureRandom.bytes(16)), Array(try JSONEncoder().encode(sealed)))
    }
}

/// The shared queue position, running report and first failure of one `upload`.
private final class UploadState: Sendable {
    private let state: Mutex<(next: Int, report: CopyReport, failure: (any Error)?)>

    init(_ report: CopyReport) { state = Mutex((next: 0, report: report, failure: nil)) }

    /// The next pack to send, or nil when all are taken or a lane failed.
    func nextPack(of count: Int) -> Int? {
        state.withLock { state in
            guard state.failure == nil, state.next < count else { return nil }
            defer { state.next += 1 }
            return state.next
        }
    }

    /// Counts a pack that is now durable under its name.
    func uploaded(_ bytes: Int, progress: (@Sendable (CopyReport) -> Void)?) {
        let now = state.withLock { state in
            state.report.packsUploaded += 1
            state.report.bytesUploaded += Int64(bytes)
            return state.report
        }
        progress?(now)
    }

    func fail(_ error: any Error) { state.withLock { if $0.failure == nil { $0.failure = error } } }

    func result() throws -> CopyReport {
        let (report, failure) = state.withLock { ($0.report, $0.failure) }
        if let failure { throw failure }
        return report
    }
}
