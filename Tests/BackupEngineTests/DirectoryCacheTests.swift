@testable import BackupEngine
import Foundation
import Synchronization
import Testing
import TestSupport

/// The directory cache (`DirectoryCache`): a re-run takes a directory's tree from the last backup's records when its
/// listing and its subdirectories are as recorded, and never records or reuses a tree that differs from what
/// building it would give.
struct DirectoryCacheTests {
    /// `home` with `top/` holding three levels of directories (each with two files and a symbolic link), `side/`
    /// with 20 small files, and `links/` with two hard links to one file. 7 directories, root included.
    static func makeTree(at home: String) throws {
        let manager = FileManager.default
        var path = home + "/top"
        for level in 0..<3 {
            path += "/level\(level)"
            try manager.createDirectory(atPath: path, withIntermediateDirectories: true)
            try Data("first file at level \(level)\n".utf8).write(to: URL(fileURLWithPath: path + "/a.txt"))
            try Data(repeating: UInt8(level), count: 5000 + level).write(to: URL(fileURLWithPath: path + "/b.bin"))
            try manager.createSymbolicLink(atPath: path + "/link", withDestinationPath: "a.txt")
        }
        try manager.createDirectory(atPath: home + "/side", withIntermediateDirectories: true)
        for index in 0..<20 { try Data("side file \(index)\n".utf8).write(to: URL(fileURLWithPath: home + "/side/f\(index)")) }
        try manager.createDirectory(atPath: home + "/links", withIntermediateDirectories: true)
        try Data("linked\n".utf8).write(to: URL(fileURLWithPath: home + "/links/one"))
        #expect(link(home + "/links/one", home + "/links/two") == 0)
    }

    static let directories = 7 // home, top, level0-2, side, links

    struct Run {
        let snapshot: Snapshot
        let reused: Int
    }

    static func backUp(_ home: String, _ repository: Repository) throws -> Run {
        let session = try BackupSession(repository: repository)
        defer { session.close() }
        let ticket = try session.backup(directory: home, options: BackupOptions(tags: ["kind": "files"]))
        let written = try session.commit()
        guard let snapshot = written[ticket] else { throw RepositoryError("backup \(ticket) was not recorded") }
        return Run(snapshot: snapshot, reused: snapshot.summary.directoriesUnchanged ?? 0)
    }

    static func setUp(_ scratch: TemporaryDirectory) throws -> (home: String, repository: Repository) {
        let home = scratch.appending("home")
        try makeTree(at: home)
        let storage = LocalStorage(root: scratch.appending("repo"))
        try Repository.initialize(storage: storage, keySource: .keyFile(scratch.appending("key")))
        return (home, try Repository.open(storage: storage, keySource: .keyFile(scratch.appending("key"))))
    }

    static func restoredEntries(_ repository: Repository, _ snapshot: Snapshot, _ scratch: TemporaryDirectory, _ name: String) throws -> [String: String] {
        let target = scratch.appending(name)
        let summary = try repository.restore(snapshot, target: target)
        #expect(summary.errors.isEmpty, "\(summary.errors)")
        return try ParallelWalkTests.entries(under: target)
    }

    static func cachePath(_ scratch: TemporaryDirectory, _ snapshot: Snapshot) -> String {
        DirectoryCache.path(in: scratch.appending("repo/cache"), snapshot: snapshot.id)
    }

    /// An unchanged re-run takes every directory but the one with hard links from the records, reads no file and
    /// gives the same tree; the cache file is private and replaces the parent's.
    @Test func anUnchangedRerunTakesItsDirectoriesFromTheRecords() throws {
        let scratch = TemporaryDirectory(prefix: "fk-dircache")
        let (home, repository) = try Self.setUp(scratch)
        let first = try Self.backUp(home, repository)
        #expect(first.reused == 0)
        #expect(FileManager.default.fileExists(atPath: Self.cachePath(scratch, first.snapshot)))

        let second = try Self.backUp(home, repository)
        #expect(second.snapshot.tree == first.snapshot.tree)
        // `links/` holds a file with two links, whose nodes depend on the walk's order: it is built every time.
        #expect(second.reused == Self.directories - 1)
        #expect(second.snapshot.summary.filesRead == 0)
        #expect(second.snapshot.summary.filesUnchanged == first.snapshot.summary.filesNew)
        #expect(second.snapshot.summary.bytesTotal == first.snapshot.summary.bytesTotal)
        #expect(second.snapshot.summary.directories == first.snapshot.summary.directories)
        var info = stat()
        #expect(stat(Self.cachePath(scratch, second.snapshot), &info) == 0 && info.st_mode & 0o777 == 0o600)
        #expect(!FileManager.default.fileExists(atPath: Self.cachePath(scratch, first.snapshot)))
        #expect(try Self.restoredEntries(repository, second.snapshot, scratch, "restored") == ParallelWalkTests.entries(under: home))
    }

    /// A file three levels down changes; the directories above it list the same as before (their entries' times do
    /// not change when a file below them is rewritten), but their trees must change: they are built, the others
    /// are reused, and the snapshot restores the new content.
    @Test func aChangeDeepDownRebuildsEveryDirectoryAboveIt() throws {
        let scratch = TemporaryDirectory(prefix: "fk-dircache")
        let (home, repository) = try Self.setUp(scratch)
        _ = try Self.backUp(home, repository)
        let deep = home + "/top/level0/level1/level2/a.txt"
        try Data("a new version, longer than the first\n".utf8).write(to: URL(fileURLWithPath: deep))

        let changed = try Self.backUp(home, repository)
        #expect(changed.snapshot.summary.filesRead == 1)
        // Rebuilt: home, top, level0, level1, level2 (the changed listing) and links; reused: side.
        #expect(changed.reused == 1)
        #expect(try Self.restoredEntries(repository, changed.snapshot, scratch, "restored") == ParallelWalkTests.entries(under: home))

        // And the records written with it are right for the run after.
        let again = try Self.backUp(home, repository)
        #expect(again.snapshot.tree == changed.snapshot.tree)
        #expect(again.reused == Self.directories - 1)
    }

    /// The same change, on a storage that notes the reads it is told are coming: the old trees of `top`, `level0`
    /// and `level1` (as recorded, so their listers did not load them) are asked for as soon as the walk finds the
    /// changed `level2`, not one by one on its way back up.
    @Test func aChangeDeepDownAsksForTheOldTreesAboveItAtOnce() throws {
        let scratch = TemporaryDirectory(prefix: "fk-dircache")
        let home = scratch.appending("home")
        try Self.makeTree(at: home)
        let storage = PrefetchNotingStorage(base: LocalStorage(root: scratch.appending("repo")))
        try Repository.initialize(storage: storage, keySource: .keyFile(scratch.appending("key")))
        let repository = try Repository.open(storage: storage, keySource: .keyFile(scratch.appending("key")))
        let first = try Self.backUp(home, repository)
        try Data("a new version, longer than the first\n".utf8).write(to: URL(fileURLWithPath: home + "/top/level0/level1/level2/a.txt"))
        #expect(storage.prefetched.isEmpty)

        let changed = try Self.backUp(home, repository)
        #expect(changed.snapshot.summary.filesRead == 1)
        var expected: Set<String> = []
        var tree = try repository.loadTree(first.snapshot.tree)
        for name in ["top", "level0", "level1"] {
            guard let subtree = tree.nodes.first(where: { $0.name == name })?.subtree, let (pack, location) = repository.location(of: subtree) else {
                Issue.record("no old tree for \(name)")
                return
            }
            expected.insert("\(Repository.packPath(pack)) \(location.offset) \(location.length)")
            tree = try repository.loadTree(subtree)
        }
        #expect(Set(storage.prefetched) == expected)
        #expect(storage.prefetched.count == 3)
        #expect(try Self.restoredEntries(repository, changed.snapshot, scratch, "restored") == ParallelWalkTests.entries(under: home))
    }

    /// A directory with a hard-linked file is never recorded (its nodes depend on the walk's order), so it is built
    /// on every run, nearly always into the same tree: meeting it is no sign that the directories above it changed,
    /// and an unchanged re-run asks for no old tree.
    @Test func aDirectoryThatIsNeverRecordedAsksForNoOldTrees() throws {
        let scratch = TemporaryDirectory(prefix: "fk-dircache")
        let home = scratch.appending("home")
        try Self.makeTree(at: home)
        let hard = home + "/top/level0/level1/hard"
        try FileManager.default.createDirectory(atPath: hard, withIntermediateDirectories: true)
        try Data("one file, two names\n".utf8).write(to: URL(fileURLWithPath: hard + "/x"))
        #expect(link(hard + "/x", hard + "/y") == 0)
        let storage = PrefetchNotingStorage(base: LocalStorage(root: scratch.appending("repo")))
        try Repository.initialize(storage: storage, keySource: .keyFile(scratch.appending("key")))
        let repository = try Repository.open(storage: storage, keySource: .keyFile(scratch.appending("key")))
        let first = try Self.backUp(home, repository)
        let again = try Self.backUp(home, repository)
        #expect(again.snapshot.tree == first.snapshot.tree)
        #expect(storage.prefetched.isEmpty, "\(storage.prefetched)")
    }

    /// The cache of a snapshot that is gone (forgotten, say) is deleted by the next backup; one newer than the
    /// backup's start (another backup running alongside may have just written it) stays.
    @Test func cachesOfSnapshotsThatAreGoneAreDeleted() throws {
        let scratch = TemporaryDirectory(prefix: "fk-dircache")
        let (home, repository) = try Self.setUp(scratch)
        let first = try Self.backUp(home, repository)
        let directory = DirectoryCache.directory(in: scratch.appending("repo/cache"))
        let gone = directory + "/" + String(repeating: "ab", count: 32)
        let fresh = directory + "/" + String(repeating: "cd", count: 32)
        try Data("stale".utf8).write(to: URL(fileURLWithPath: gone))
        try Data("fresh".utf8).write(to: URL(fileURLWithPath: fresh))
        var times = [timespec(tv_sec: 1_000_000_000, tv_nsec: 0), timespec(tv_sec: 1_000_000_000, tv_nsec: 0)]
        #expect(utimensat(AT_FDCWD, gone, &times, 0) == 0)
        times = [timespec(tv_sec: time(nil) + 3600, tv_nsec: 0), timespec(tv_sec: time(nil) + 3600, tv_nsec: 0)]
        #expect(utimensat(AT_FDCWD, fresh, &times, 0) == 0)
        let second = try Self.backUp(home, repository)
        let left = Set(try FileManager.default.contentsOfDirectory(atPath: directory))
        #expect(left == [second.snapshot.id, String(repeating: "cd", count: 32)], "\(left), first \(first.snapshot.id)")
    }

    /// A damaged cache, or one copied over another snapshot's, is not used; the backup is the same.
    @Test func aDamagedOrForeignCacheIsIgnored() throws {
        let scratch = TemporaryDirectory(prefix: "fk-dircache")
        let (home, repository) = try Self.setUp(scratch)
        let first = try Self.backUp(home, repository)
        let path = Self.cachePath(scratch, first.snapshot)
        let original = try Data(contentsOf: URL(fileURLWithPath: path))
        var flipped = [UInt8](original)
        flipped[flipped.count / 2] ^= 0x20
        try Data(flipped).write(to: URL(fileURLWithPath: path))
        let second = try Self.backUp(home, repository)
        #expect(second.reused == 0)
        #expect(second.snapshot.tree == first.snapshot.tree)

        // The second run's records, intact, but under the name of a snapshot they were not written for.
        let secondRecords = try Data(contentsOf: URL(fileURLWithPath: Self.cachePath(scratch, second.snapshot)))
        let third = try Self.backUp(home, repository)
        #expect(third.reused == Self.directories - 1)
        try secondRecords.write(to: URL(fileURLWithPath: Self.cachePath(scratch, third.snapshot)))
        #expect(DirectoryCache.load(snapshot: third.snapshot.id, cacheDirectory: scratch.appending("repo/cache"), repository: repository) == nil)
        let fourth = try Self.backUp(home, repository)
        #expect(fourth.reused == 0)
        #expect(fourth.snapshot.tree == first.snapshot.tree)
    }

    /// The records are searched where they lie in the file: every key written is found with its record, keys never
    /// written are not, a key that two directories share is left out, and a file whose records are out of order is
    /// not used even when its digest is right (a binary search over it would miss records).
    @Test func recordsAreFoundByKeyInTheFileAsWritten() throws {
        let scratch = TemporaryDirectory(prefix: "fk-dircache")
        let (_, repository) = try Self.setUp(scratch)
        let caches = scratch.appending("repo/cache")
        func id(_ number: Int, _ salt: String) -> BlobID { repository.blobID(Array("\(salt) \(number)".utf8)) }
        // Even keys only, so that every odd key is one never written; the smallest and largest even keys included.
        var keys = Set<UInt64>([0, UInt64.max - 1])
        while keys.count < 2_000 { keys.insert(UInt64.random(in: 0...UInt64.max) & ~1) }
        let entries = keys.enumerated().map { number, key in
            DirectoryCache.Entry(key: key, record: DirectoryCache.Record(listing: id(number, "listing"), tree: id(number, "tree")))
        }
        let shared = entries[5]
        let other = DirectoryCache.Entry(key: shared.key, record: DirectoryCache.Record(listing: id(-1, "listing"), tree: id(-1, "tree")))
        let snapshot = id(0, "snapshot").hex
        DirectoryCache.write(entries.shuffled() + [other], snapshot: snapshot, replacing: nil, cacheDirectory: caches, repository: repository)

        let cache = try #require(DirectoryCache.load(snapshot: snapshot, cacheDirectory: caches, repository: repository))
        #expect(cache.count == entries.count - 1)
        var wrong = 0
        for entry in entries where entry.key != shared.key && cache[entry.key] != entry.record { wrong += 1 }
        #expect(wrong == 0)
        #expect(cache[shared.key] == nil)
        #expect(keys.filter { cache[$0 | 1] != nil }.isEmpty)

        // The first two records swapped, and the digest made right again for the swapped bytes.
        let path = DirectoryCache.path(in: caches, snapshot: snapshot)
        var bytes = [UInt8](try Data(contentsOf: URL(fileURLWithPath: path)))
        let header = 8 + 32, record = 72
        let first = Array(bytes[header..<(header + record)])
        bytes.replaceSubrange(header..<(header + record), with: bytes[(header + record)..<(header + 2 * record)])
        bytes.replaceSubrange((header + record)..<(header + 2 * record), with: first)
        let end = bytes.count - 32
        bytes.replaceSubrange(end..., with: repository.blobID(bytes[..<end]).bytes)
        try Data(bytes).write(to: URL(fileURLWithPath: path))
        #expect(DirectoryCache.load(snapshot: snapshot, cacheDirectory: caches, repository: repository)?.count == nil)
    }

    /// Whatever is put where a cache belongs, only a regular file is read: a symbolic link to an intact cache is not
    /// followed, and a FIFO is not opened for a wait on a writer that never comes.
    @Test func onlyARegularFileIsReadAsACache() throws {
        let scratch = TemporaryDirectory(prefix: "fk-dircache")
        let (_, repository) = try Self.setUp(scratch)
        let caches = scratch.appending("repo/cache")
        let snapshot = repository.blobID(Array("snapshot".utf8)).hex
        let entry = DirectoryCache.Entry(key: 7, record: DirectoryCache.Record(listing: repository.blobID([1]), tree: repository.blobID([2])))
        DirectoryCache.write([entry], snapshot: snapshot, replacing: nil, cacheDirectory: caches, repository: repository)
        #expect(DirectoryCache.load(snapshot: snapshot, cacheDirectory: caches, repository: repository)?[7] == entry.record)

        let path = DirectoryCache.path(in: caches, snapshot: snapshot)
        #expect(rename(path, path + ".real") == 0)
        #expect(symlink(path + ".real", path) == 0)
        #expect(DirectoryCache.load(snapshot: snapshot, cacheDirectory: caches, repository: repository)?.count == nil)

        #expect(unlink(path) == 0)
        #expect(mkfifo(path, 0o600) == 0)
        #expect(DirectoryCache.load(snapshot: snapshot, cacheDirectory: caches, repository: repository)?.count == nil)
    }

    /// With a pack of file data lost, the records may name trees whose files' blobs are gone: the cache is not
    /// used (and is deleted), the files are read again, and the new snapshot restores whole.
    @Test func aLostPackTurnsTheCacheOff() throws {
        let scratch = TemporaryDirectory(prefix: "fk-dircache")
        let (home, repository) = try Self.setUp(scratch)
        let first = try Self.backUp(home, repository)
        let tree = try repository.loadTree(first.snapshot.tree)
        let files = try DamageContainmentTests.files(in: tree, repository: repository)
        let side = try #require(files.first { $0.path == "side/f3" })
        for pack in Set(try side.node.content.map { try #require(repository.location(of: $0)).pack }) {
            try FileManager.default.removeItem(atPath: scratch.appending("repo/" + Repository.packPath(pack)))
        }

        let reopened = try Repository.open(storage: LocalStorage(root: scratch.appending("repo")), keySource: .keyFile(scratch.appending("key")))
        let second = try Self.backUp(home, reopened)
        #expect(second.reused == 0)
        #expect(second.snapshot.summary.filesRead > 0)
        #expect(try Self.restoredEntries(reopened, second.snapshot, scratch, "restored") == ParallelWalkTests.entries(under: home))
    }

    /// A repair may drop blobs that recorded trees refer to: it deletes every directory cache.
    @Test func aRepairDeletesTheCaches() throws {
        let scratch = TemporaryDirectory(prefix: "fk-dircache")
        let (home, repository) = try Self.setUp(scratch)
        let first = try Self.backUp(home, repository)
        #expect(FileManager.default.fileExists(atPath: Self.cachePath(scratch, first.snapshot)))
        _ = try repository.repairIndex()
        #expect(!FileManager.default.fileExists(atPath: DirectoryCache.directory(in: scratch.appending("repo/cache"))))
        let second = try Self.backUp(home, repository)
        #expect(second.reused == 0)
        #expect(second.snapshot.tree == first.snapshot.tree)
    }

    /// A file rewritten while it is read gets the times of the version read, not the listed ones: its directory is
    /// not recorded, so the next run looks at the file again instead of reusing the tree.
    @Test func aDirectoryWithAFileChangedWhileReadIsNotRecorded() throws {
        let scratch = TemporaryDirectory(prefix: "fk-dircache")
        let (home, repository) = try Self.setUp(scratch)
        let session = try BackupSession(repository: repository)
        var options = BackupOptions(tags: ["kind": "files"])
        let target = home + "/side/f7"
        let rewrites = ChangedDuringBackupTests.ReadCount()
        options.whileReading = { path in
            guard path == "side/f7" else { return }
            let first = rewrites.value.withLock { count -> Bool in count += 1; return count == 1 }
            if first { try? Data("side file 7, rewritten while read\n".utf8).write(to: URL(fileURLWithPath: target)) }
        }
        let ticket = try session.backup(directory: home, options: options)
        let snapshot = try #require(try session.commit()[ticket])
        session.close()
        let cache = try #require(DirectoryCache.load(snapshot: snapshot.id, cacheDirectory: scratch.appending("repo/cache"), repository: repository))
        let ids = repository.idKey.makeThreadContext()
        #expect(cache[DirectoryCache.key(for: "side", ids: ids)] == nil)
        #expect(cache[DirectoryCache.key(for: "top/level0", ids: ids)] != nil)
        #expect(cache.count == Self.directories - 2) // neither side/ nor links/
        let next = try Self.backUp(home, repository)
        #expect(try Self.restoredEntries(repository, next.snapshot, scratch, "restored") == ParallelWalkTests.entries(under: home))
    }
}

/// A local storage that notes every `prefetch` it is asked for ("path offset length").
final class PrefetchNotingStorage: ForwardingToLocal {
    let base: LocalStorage
    private let noted = Mutex<[String]>([])
    init(base: LocalStorage) { self.base = base }
    var prefetched: [String] { noted.withLock { $0 } }

    func prefetch(_ path: String, offset: Int, length: Int) {
        noted.withLock { $0.append("\(path) \(offset) \(length)") }
        base.prefetch(path, offset: offset, length: length)
    }
    func makePackSink() throws -> any PackSink { try base.makePackSink() }
    var defaultCacheDirectory: String? { base.defaultCacheDirectory }
    func removeTemporaryFiles() { base.removeTemporaryFiles() }
    var location: String { "noting:" + base.root }
}
