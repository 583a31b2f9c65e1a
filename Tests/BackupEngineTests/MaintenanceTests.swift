@testable import BackupEngine
import Crypto
import Foundation
import Synchronization
import Testing
import TestSupport

/// Writes `count` files of fresh random bytes under `directory` (incompressible, so each backup adds real data).
func writeRandomFiles(_ directory: String, count: Int, size: Int, prefix: String) throws {
    try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
    for index in 0..<count {
        try Data(SecureRandom.bytes(size)).write(to: URL(fileURLWithPath: "\(directory)/\(prefix)-\(index).bin"))
    }
}

func directorySize(_ path: String) -> Int {
    let walker = FileManager.default.enumerator(atPath: path)
    var total = 0
    while let relative = walker?.nextObject() as? String {
        total += (try? FileManager.default.attributesOfItem(atPath: path + "/" + relative)[.size] as? Int) ?? 0
    }
    return total
}

struct PruneAndCopyTests {
    @Test func pruneKeepsTheRightSnapshotsFreesSpaceAndVerifies() throws {
        let scratch = TemporaryDirectory(prefix: "fk-prune")
        let storage = LocalStorage(root: scratch.appending("repo"))
        let repository = try Repository.initialize(storage: storage, keySource: .keyFile(scratch.appending("key")))
        let source = scratch.appending("src")
        let day: TimeInterval = 86_400
        let start = Date(timeIntervalSince1970: 1_790_000_000)
        var made: [Snapshot] = []
        for index in 0..<6 {
            // Each day replaces the data: old snapshots own data nobody else needs.
            try? FileManager.default.removeItem(atPath: source)
            try writeRandomFiles(source, count: 2, size: 300_000, prefix: "day\(index)")
            var options = BackupOptions(tags: ["account": "a", "kind": "files", "host": "h"])
            options.time = start.addingTimeInterval(Double(index) * day)
            made.append(try repository.backup(directory: source, options: options))
        }
        // Another group must follow its own policy, untouched by this one's.
        var other = BackupOptions(tags: ["account": "b", "kind": "files", "host": "h"])
        other.time = start
        let otherSnapshot = try repository.backup(directory: source, options: other)

        let dry = try repository.prune(policy: { tags in tags["account"] == "a" ? RetentionPolicy(keepDaily: 2) : RetentionPolicy(keepLast: 1) }, dryRun: true)
        #expect(dry.removedSnapshots == made.prefix(4).map(\.id).sorted())
        #expect(try repository.snapshots().count == 7, "dry run changed something")

        let before = directorySize(storage.root + "/data")
        let report = try repository.prune(policy: { tags in tags["account"] == "a" ? RetentionPolicy(keepDaily: 2) : RetentionPolicy(keepLast: 1) }, dryRun: false)
        #expect(report.removedSnapshots == dry.removedSnapshots)
        #expect(Set(try repository.snapshots().map(\.id)) == Set([made[4].id, made[5].id, otherSnapshot.id]))
        let after = directorySize(storage.root + "/data")
        #expect(after < before / 2, "prune freed too little: \(before) -> \(after)")
        #expect(report.bytesFreed > 0)

        let reopened = try Repository.open(storage: storage, keySource: .keyFile(scratch.appending("key")))
        #expect(try reopened.verify(readData: true).isHealthy)
        let target = scratch.appending("out")
        let restored = try reopened.restore(made[5], target: target)
        #expect(restored.errors.isEmpty)
        #expect(try HostingFixture.manifest(root: target) == HostingFixture.manifest(root: source))
    }

    @Test func mirrorTransfersOnlyMissingFilesAndTheCopyRestores() throws {
        let scene = try EngineScene(accounts: 1, sizeMB: 3)
        let repository = try scene.initialize()
        let first = try repository.backup(directory: scene.root + "/home", options: BackupOptions(tags: ["kind": "files"]))
        let remote = LocalStorage(root: scene.scratch.appending("offsite"))
        let copied = try Repository.mirror(from: scene.storage, to: remote)
        #expect(copied.filesCopied > 3)
        #expect(try Repository.files(in: remote) == Repository.files(in: scene.storage))
        let again = try Repository.mirror(from: scene.storage, to: remote)
        #expect(again.filesCopied == 1, "only config is rewritten") // config has no content-derived name
        #expect(again.bytesCopied < 200)

        try HostingFixture.churn(root: scene.root, percent: 10)
        _ = try repository.backup(directory: scene.root + "/home", options: BackupOptions(tags: ["kind": "files"]))
        _ = try repository.prune(policy: { _ in RetentionPolicy(keepLast: 1) }, dryRun: false)
        let mirrored = try Repository.mirror(from: scene.storage, to: remote)
        #expect(mirrored.filesRemoved >= 1)
        #expect(try Repository.files(in: remote) == Repository.files(in: scene.storage))

        let offsite = try Repository.open(storage: remote, keySource: .keyFile(scene.keyFile))
        #expect(try offsite.verify(readData: true).isHealthy)
        #expect(try offsite.snapshots().map(\.id) != [first.id])
        let target = scene.scratch.appending("from-offsite")
        _ = try offsite.restore(try offsite.findSnapshot("latest"), target: target)
        #expect(try scene.manifest(target) == scene.manifest(scene.root + "/home"))
    }

    @Test func copyOfChosenSnapshotsUploadsOnlyTheirPacksOnce() throws {
        let scene = try EngineScene(accounts: 1, sizeMB: 3)
        let repository = try scene.initialize()
        let files = try repository.backup(directory: scene.root + "/home/user000", options: BackupOptions(tags: ["kind": "files"], excludes: ["mail"]))
        let mail = scene.scratch.appending("mail-only")
        try writeRandomFiles(mail, count: 3, size: 200_000, prefix: "msg")
        _ = try repository.backup(directory: mail, options: BackupOptions(tags: ["kind": "email"]))

        let remoteStorage = LocalStorage(root: scene.scratch.appending("offsite"))
        try repository.replicateConfiguration(to: remoteStorage)
        let remote = try Repository.open(storage: remoteStorage, keySource: .keyFile(scene.keyFile))
        let first = try repository.copy([files], to: remote)
        #expect(first.snapshotsCopied == 1 && first.packsUploaded >= 1)
        let again = try repository.copy([files], to: remote)
        #expect(again.packsUploaded == 0 && again.snapshotsAlreadyThere == 1)

        let reopened = try Repository.open(storage: remoteStorage, keySource: .keyFile(scene.keyFile))
        #expect(try reopened.snapshots().map(\.id) == [files.id])
        #expect(try reopened.verify(readData: true).isHealthy)
        let target = scene.scratch.appending("restored")
        #expect(try reopened.restore(files, target: target).errors.isEmpty)
        #expect(!FileManager.default.fileExists(atPath: target + "/mail"))
        #expect(try scene.manifest(target) == HostingFixture.manifest(root: scene.root + "/home/user000").split(separator: "\n")
            .filter { !$0.hasSuffix(" mail") && !$0.contains(" mail/") }.joined(separator: "\n") + "\n")
    }

    @Test func liveExclusiveLeaseBlocksAndExpiredOneDoesNot() throws {
        let scene = try EngineScene(accounts: 1, sizeMB: 1)
        let repository = try scene.initialize()
        try FileManager.default.createDirectory(atPath: scene.repoPath + "/locks", withIntermediateDirectories: true)
        let lease = scene.repoPath + "/locks/other"
        let host = ProcessInfo.processInfo.hostName
        try Data(#"{"exclusive":true,"host":"\#(host)","pid":\#(getpid()),"expires":"2099-01-01T00:00:00Z"}"#.utf8).write(to: URL(fileURLWithPath: lease))
        do {
            _ = try repository.backup(directory: scene.root + "/home", options: BackupOptions(tags: ["kind": "files"]))
            Issue.record("backup ran despite a live exclusive lease")
        } catch let error as RepositoryError {
            #expect(error.message.contains("locked"))
        }
        try Data(#"{"exclusive":true,"host":"elsewhere","pid":1,"expires":"2001-01-01T00:00:00Z"}"#.utf8).write(to: URL(fileURLWithPath: lease))
        _ = try repository.backup(directory: scene.root + "/home", options: BackupOptions(tags: ["kind": "files"]))
        #expect(try FileManager.default.contentsOfDirectory(atPath: scene.repoPath + "/locks").isEmpty)
    }
}

struct FileKindTests {
    @Test func sparseFilesHardLinksSymlinksFifosAndOddNamesComeBack() throws {
        let scratch = TemporaryDirectory(prefix: "fk-kinds")
        let source = scratch.appending("src")
        try FileManager.default.createDirectory(atPath: source + "/sub dir", withIntermediateDirectories: true)
        // Sparse: 64 MiB with 5 bytes of data in the middle.
        let sparse = source + "/sparse.img"
        let descriptor = open(sparse, O_CREAT | O_WRONLY, 0o640)
        #expect(ftruncate(descriptor, 64 << 20) == 0)
        #expect(pwrite(descriptor, "hello", 5, 40 << 20) == 5)
        close(descriptor)
        try Data("shared".utf8).write(to: URL(fileURLWithPath: source + "/a"))
        #expect(link(source + "/a", source + "/sub dir/b") == 0)
        #expect(symlink("../a", source + "/sub dir/link") == 0)
        #expect(symlink("/nonexistent/target", source + "/dangling") == 0)
        #expect(mkfifo(source + "/pipe", 0o600) == 0)
        // The FIFO's owner and times come back too (it used to be root's, with the restore's time).
        var pipeTimes = [timespec(tv_sec: 1_600_000_000, tv_nsec: 0), timespec(tv_sec: 1_600_000_000, tv_nsec: 0)]
        #expect(utimensat(AT_FDCWD, source + "/pipe", &pipeTimes, AT_SYMLINK_NOFOLLOW) == 0)
        if getuid() == 0 { #expect(lchown(source + "/pipe", 4321, 4322) == 0) }
        _ = FileManager.default.createFile(atPath: source + "/-empty ünïcode", contents: nil)
        chmod(source + "/a", 0o4751)

        let storage = LocalStorage(root: scratch.appending("repo"))
        let repository = try Repository.initialize(storage: storage, keySource: .passphrase("pw"))
        let snapshot = try repository.backup(directory: source, options: BackupOptions(tags: [:]))
        #expect(snapshot.summary.errors.isEmpty, "\(snapshot.summary.errors)")
        #expect(snapshot.summary.bytesStored < 1 << 20, "zeros should deduplicate and compress")
        let target = scratch.appending("out")
        let summary = try repository.restore(snapshot, target: target)
        #expect(summary.errors.isEmpty, "\(summary.errors)")
        var info = stat()
        #expect(lstat(target + "/pipe", &info) == 0 && info.st_mode & S_IFMT == S_IFIFO)
        #expect(info.st_mtim.tv_sec == 1_600_000_000)
        if getuid() == 0 { #expect(info.st_uid == 4321 && info.st_gid == 4322, "\(info.st_uid):\(info.st_gid)") }
        // The manifest tool would block opening a fifo.
        unlink(target + "/pipe")
        unlink(source + "/pipe")
        #expect(try HostingFixture.manifest(root: target) == HostingFixture.manifest(root: source))

        #expect(stat(target + "/sparse.img", &info) == 0)
        #expect(info.st_size == 64 << 20)
        #expect(info.st_blocks * 512 < 1 << 20, "holes were written out: \(info.st_blocks) blocks")
        var first = stat(), second = stat()
        #expect(stat(target + "/a", &first) == 0 && stat(target + "/sub dir/b", &second) == 0)
        #expect(first.st_ino == second.st_ino, "hard link restored as a copy")
        #expect(first.st_mode & 0o7777 == 0o4751)
        #expect((try? FileManager.default.destinationOfSymbolicLink(atPath: target + "/sub dir/link")) == "../a")
        #expect((try? FileManager.default.destinationOfSymbolicLink(atPath: target + "/dangling")) == "/nonexistent/target")
    }
}

/// A test storage over real files: the protocol's whole-file operations go to `base`. What each one adds (or, by
/// leaving the protocol's defaults, leaves out) is declared beside it.
protocol ForwardingToLocal: RepositoryStorage {
    var base: LocalStorage { get }
}

extension ForwardingToLocal {
    func read(_ path: String) throws -> [UInt8] { try base.read(path) }
    func read(_ path: String, offset: Int, length: Int) throws -> [UInt8] { try base.read(path, offset: offset, length: length) }
    func write(_ path: String, _ data: [UInt8]) throws { try base.write(path, data) }
    func list(_ directory: String) throws -> [String] { try base.list(directory) }
    func remove(_ path: String) throws { try base.remove(path) }
    func size(_ path: String) throws -> Int? { try base.size(path) }
    func stage(_ path: String, _ data: [UInt8]) throws -> any StagedWrite { try base.stage(path, data) }
}

/// A storage that only has the protocol's whole-file operations (like the SFTP adapter), over real files.
struct WholeFileStorage: ForwardingToLocal {
    let base: LocalStorage
    var location: String { "whole-file:" + base.root }
}

/// A remote over real files whose staged files appear only when committed (as over SFTP, where the flush and rename
/// wait for the commit). It notes, at every index file written, how many staged files were not yet committed.
final class DeferredCommitStorage: ForwardingToLocal {
    let base: LocalStorage
    private let uncommitted = Mutex(0)
    private let uncommittedAtIndexWrites = Mutex<[Int]>([])

    init(base: LocalStorage) { self.base = base }

    /// Staged files neither committed nor discarded, at each index write so far.
    var uncommittedWhenIndexed: [Int] { uncommittedAtIndexWrites.withLock { $0 } }
    var stillUncommitted: Int { uncommitted.withLock { $0 } }

    func write(_ path: String, _ data: [UInt8]) throws {
        if path.hasPrefix("index/") {
            let waiting = uncommitted.withLock { $0 }
            uncommittedAtIndexWrites.withLock { $0.append(waiting) }
        }
        try base.write(path, data)
    }

    func stage(_ path: String, _ data: [UInt8]) throws -> any StagedWrite {
        uncommitted.withLock { $0 += 1 }
        return DeferredWrite(storage: self, path: path, data: data)
    }

    fileprivate func settled() { uncommitted.withLock { $0 -= 1 } }

    var location: String { "deferred:" + base.root }
}

/// A file `DeferredCommitStorage` holds until its commit writes it.
private final class DeferredWrite: StagedWrite {
    let storage: DeferredCommitStorage
    let path: String
    let data: [UInt8]
    var size: Int { data.count }

    init(storage: DeferredCommitStorage, path: String, data: [UInt8]) {
        self.storage = storage
        self.path = path
        self.data = data
    }

    func commit() throws {
        try storage.base.write(path, data)
        storage.settled()
    }

    func discard() { storage.settled() }
}

struct RemoteStorageTests {
    @Test func repositoryWorksOverAStorageWithOnlyWholeFileWrites() throws {
        let scene = try EngineScene(accounts: 1, sizeMB: 2)
        let storage = WholeFileStorage(base: scene.storage)
        try Repository.initialize(storage: storage, keySource: .keyFile(scene.keyFile))
        let repository = try Repository.open(storage: storage, keySource: .keyFile(scene.keyFile))
        let snapshot = try repository.backup(directory: scene.root + "/home", options: BackupOptions(tags: ["kind": "files"]))
        #expect(try repository.verify(readData: true).isHealthy)
        let target = scene.scratch.appending("out")
        #expect(try repository.restore(snapshot, target: target).errors.isEmpty)
        #expect(try scene.manifest(target) == scene.manifest(scene.root + "/home"))
        #expect(try Repository.files(in: storage).files.keys.contains { $0.hasPrefix("data/") })
    }
}

struct LaneThreadTests {
    /// Thread names are for whoever looks at a busy agent (top -H, gdb, a core dump): the kernel's name for each
    /// thread, the one those tools show, says what it does and which lane it is.
    @Test func laneThreadsCarryTheirNameWhereTheSystemShowsIt() {
        let shown = Mutex([String?](repeating: nil, count: 3))
        Repository.onThreads(3, named: "fk-connect") { lane in
            let name = try? String(contentsOfFile: "/proc/thread-self/comm", encoding: .utf8)
            shown.withLock { $0[lane] = name?.trimmingCharacters(in: .newlines) }
        }
        #expect(shown.withLock { $0 } == ["fk-connect-0", "fk-connect-1", "fk-connect-2"])
    }

    /// The backup's and restore's worker threads too (before, their names never reached the kernel).
    @Test func workerThreadsCarryTheirName() {
        let pool = WorkerPool(threads: 2, name: "fk-backup")
        defer { pool.close() }
        let shown = Mutex(Set<String>())
        for _ in 0..<20 {
            pool.submit {
                let name = try? String(contentsOfFile: "/proc/thread-self/comm", encoding: .utf8)
                shown.withLock { _ = $0.insert(name?.trimmingCharacters(in: .newlines) ?? "") }
                usleep(2000)
            }
        }
        pool.wait()
        #expect(!shown.withLock { $0 }.isEmpty)
        #expect(shown.withLock { $0 }.isSubset(of: ["fk-backup-0", "fk-backup-1"]))
    }
}
