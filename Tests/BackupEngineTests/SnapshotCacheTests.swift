@testable import BackupEngine
import Crypto
import Foundation
import Testing
import TestSupport

/// The local snapshot cache: one file read instead of one file per snapshot, never a different snapshot than the
/// repository holds.
struct SnapshotCacheTests {
    func cache(_ scene: EngineScene) throws -> SnapshotCache {
        SnapshotCache(path: scene.repoPath + "/cache/snapshots", cipher: try scene.open().dataCipher)
    }

    /// A snapshot as its file reads, for comparing: the file's own JSON encoding, keys sorted.
    static func text(_ snapshot: Snapshot) throws -> String {
        let encoder = JSONEncoder()
        encoder.dateEncodingStrategy = UTCTime.jsonEncoding
        encoder.outputFormatting = [.sortedKeys]
        return snapshot.id + " " + String(decoding: try encoder.encode(snapshot), as: UTF8.self)
    }

    func backUpTwice(_ scene: EngineScene, _ repository: Repository) throws -> [Snapshot] {
        let first = try repository.backup(directory: scene.root + "/home", options: BackupOptions(tags: ["kind": "files"]))
        let second = try repository.backup(directory: scene.root + "/home", options: BackupOptions(tags: ["kind": "email"]))
        return [first, second]
    }

    /// A repository with one snapshot, listed once so that the cache holds it.
    func oneCachedSnapshot() throws -> (scene: EngineScene, snapshot: Snapshot, cache: SnapshotCache) {
        let scene = try EngineScene(accounts: 1, sizeMB: 1)
        let snapshot = try scene.initialize().backup(directory: scene.root + "/home", options: BackupOptions(tags: ["kind": "files"]))
        _ = try scene.open().snapshots()
        return (scene, snapshot, try cache(scene))
    }

    @Test func listingFillsTheCacheAndLaterListingsReadIt() throws {
        let scene = try EngineScene(accounts: 1, sizeMB: 1)
        let repository = try scene.initialize()
        let made = try backUpTwice(scene, repository)
        let listed = try scene.open().snapshots()
        #expect(listed.map(\.id).sorted() == made.map(\.id).sorted())
        let cache = try cache(scene)
        #expect(Set(cache.read().keys) == Set(made.map(\.id)))
        var info = stat()
        #expect(stat(cache.path, &info) == 0 && info.st_mode & 0o777 == 0o600)

        // With a snapshot file damaged after it was cached, listing still reads the intact cached copy, while
        // verify, which checks the files themselves, reports the damage.
        let damagedPath = scene.repoPath + "/snapshots/" + made[0].id
        try Data(repeating: 0x5A, count: 300).write(to: URL(fileURLWithPath: damagedPath))
        let again = try scene.open()
        #expect(try again.snapshots().map(\.tree).sorted() == listed.map(\.tree).sorted())
        let report = try again.verify(readData: false)
        #expect(report.problems.contains { $0.contains("snapshot file \(made[0].id.prefix(16)) is damaged") })
    }

    /// A backup adds its snapshots to the cache as it records them, so the next backup reads the one cache file
    /// instead of this run's snapshot files (every nightly run adds one per account and kind).
    @Test func aBackupAddsItsSnapshotsToTheCache() throws {
        let (scene, first, cache) = try oneCachedSnapshot()
        #expect(Set(cache.read().keys) == [first.id])

        let session = try BackupSession(repository: try scene.open())
        defer { session.close() }
        let tickets = [try session.backup(directory: scene.root + "/home", options: BackupOptions(tags: ["kind": "email"])),
                       try session.backup(directory: scene.root + "/home", options: BackupOptions(tags: ["kind": "web"]))]
        let recorded = try session.commit()
        let ids = tickets.compactMap { recorded[$0]?.id }
        #expect(ids.count == 2)
        #expect(Set(cache.read().keys) == Set([first.id] + ids))
        // What the cache holds is what the files hold, field for field.
        let fromFiles = try scene.open().snapshotsWithDamage(useCache: false).snapshots
        #expect(try fromFiles.map(Self.text).sorted() == cache.read().values.map(Self.text).sorted())
    }

    /// A session rewrites the cache at each commit from what it listed at its start and what it wrote since, without
    /// reading the cache back: the snapshots of its earlier commits stay in it, and one that another process recorded
    /// meanwhile is still listed (read from its file).
    @Test func everyCommitOfASessionKeepsTheCacheWhole() throws {
        let (scene, before, cache) = try oneCachedSnapshot()

        let session = try BackupSession(repository: try scene.open())
        defer { session.close() }
        let firstTicket = try session.backup(directory: scene.root + "/home", options: BackupOptions(tags: ["kind": "email"]))
        let first = try #require(try session.commit()[firstTicket])
        #expect(Set(cache.read().keys) == [before.id, first.id])

        let alongside = try scene.open().backup(directory: scene.root + "/home", options: BackupOptions(tags: ["kind": "other"]))
        let secondTicket = try session.backup(directory: scene.root + "/home", options: BackupOptions(tags: ["kind": "web"]))
        let second = try #require(try session.commit()[secondTicket])
        #expect(Set(cache.read().keys) == [before.id, first.id, second.id])
        #expect(Set(try scene.open().snapshots().map(\.id)) == [before.id, first.id, second.id, alongside.id])
        #expect(Set(cache.read().keys) == [before.id, first.id, second.id, alongside.id])
        let fromFiles = try scene.open().snapshotsWithDamage(useCache: false).snapshots
        #expect(try fromFiles.map(Self.text).sorted() == cache.read().values.map(Self.text).sorted())
    }

    /// A cache that does not open as this repository's (damaged, truncated, garbage, another repository's, the
    /// older format) gives exactly what the snapshot files hold, and is rewritten.
    @Test func aDamagedOrForeignCacheNeverChangesWhatIsListed() throws {
        let scene = try EngineScene(accounts: 1, sizeMB: 1)
        let repository = try scene.initialize()
        _ = try backUpTwice(scene, repository)
        let truth = try scene.open().snapshotsWithDamage(useCache: false).snapshots.map(Self.text)
        let cache = try cache(scene)
        let entries = cache.read()
        #expect(entries.count == 2)
        let original = try Data(contentsOf: URL(fileURLWithPath: cache.path))

        // Another repository's cache of the same names: it does not open with this repository's key.
        let other = try EngineScene(accounts: 1, sizeMB: 1)
        _ = try other.initialize()
        let foreign = SnapshotCache(path: scene.repoPath + "/cache/snapshots", cipher: try other.open().dataCipher)
        var forged = Array(entries.values)
        for index in forged.indices { forged[index].tree = String(repeating: "0", count: 64) }
        foreign.write(forged)
        #expect(cache.read().isEmpty)
        #expect(try scene.open().snapshots().map(Self.text) == truth)
        #expect(try cache.read().values.map(Self.text).sorted() == truth.sorted(), "the foreign cache was not rewritten")

        var flipped = original
        flipped[flipped.count / 2] ^= 0x01
        let olderFormat = Data("FKSNC001".utf8) + original.dropFirst(8)
        for damaged in [original.prefix(original.count - 5), flipped, olderFormat, Data(repeating: 0xA5, count: 64), Data()] {
            try damaged.write(to: URL(fileURLWithPath: cache.path))
            #expect(cache.read().isEmpty)
            #expect(try scene.open().snapshots().map(Self.text) == truth)
            #expect(try cache.read().values.map(Self.text).sorted() == truth.sorted())
        }
    }

    /// Every field survives the cache's binary form, set and unset, and a field added to the snapshot's types
    /// without being added to that form fails here (the counts below) rather than going missing from listings.
    @Test func everyFieldOfASnapshotSurvivesTheCache() throws {
        #expect(Mirror(reflecting: Snapshot(id: "", time: Date(), tags: [:], tree: "", parent: nil, summary: BackupSummary())).children.count == 7,
                "Snapshot gained or lost a field: add it to SnapshotCache.encode/decode and raise the magic's number")
        #expect(Mirror(reflecting: BackupSummary()).children.count == 13,
                "BackupSummary gained or lost a field: add it to SnapshotCache.encode/decode and raise the magic's number")
        #expect(Mirror(reflecting: RootDirectory(uid: 0, gid: 0, mode: 0, mtime: 0)).children.count == 4,
                "RootDirectory gained or lost a field: add it to SnapshotCache.encode/decode and raise the magic's number")

        var full = BackupSummary()
        (full.filesNew, full.filesChanged, full.filesUnchanged, full.directories, full.filesRead) = (1, 2, 3, 4, 5)
        full.directoriesUnchanged = 6
        (full.bytesRead, full.bytesTotal, full.blobsAdded, full.bytesAdded, full.bytesStored) = (7, Int64.max, 9, -10, 11)
        full.seconds = 12.345678901234
        full.errors = ["home/a: permission denied", "ünïcode ✓", ""]
        let id = String(repeating: "ab", count: 32)
        let snapshots = [
            Snapshot(id: id, time: Date(timeIntervalSince1970: 1_796_000_000.123456), tags: ["account": "user1", "kind": "files", "": "empty"],
                     tree: String(repeating: "cd", count: 32), parent: String(repeating: "ef", count: 32), summary: full,
                     root: RootDirectory(uid: 1001, gid: 1002, mode: 0o4751, mtime: -5)),
            Snapshot(id: String(repeating: "12", count: 32), time: Date(timeIntervalSince1970: -1), tags: [:], tree: "", parent: nil,
                     summary: BackupSummary(), root: nil),
        ]
        let scratch = TemporaryDirectory(prefix: "fk-snapcache")
        let cache = SnapshotCache(path: scratch.appending("snapshots"), cipher: AES256GCM.Key(Array(repeating: 7, count: 32)))
        cache.write(snapshots)
        let read = cache.read()
        #expect(read.count == 2)
        for snapshot in snapshots {
            #expect(try read[snapshot.id].map(Self.text) == Self.text(snapshot))
            #expect(read[snapshot.id]?.time == snapshot.time)
            #expect(read[snapshot.id]?.summary.seconds == snapshot.summary.seconds)
        }
    }

    @Test func snapshotsRemovedByPruneLeaveTheCache() throws {
        let scene = try EngineScene(accounts: 1, sizeMB: 1)
        let repository = try scene.initialize()
        _ = try repository.backup(directory: scene.root + "/home", options: BackupOptions(tags: ["kind": "files"]))
        _ = try repository.snapshots()
        let kept = try repository.backup(directory: scene.root + "/home", options: BackupOptions(tags: ["kind": "files"]))
        _ = try repository.prune(policy: { _ in RetentionPolicy(keepLast: 1) }, dryRun: false)
        #expect(try scene.open().snapshots().map(\.id) == [kept.id])
        #expect(Array(try cache(scene).read().keys) == [kept.id])
    }
}

/// A storage whose `writeTogether` stores only the first `limit` files, reports them durable and then fails, as a
/// disk that fills up part of the way through a commit's snapshot files.
final class FillingUpStorage: ForwardingToLocal {
    let base: LocalStorage
    let limit: Int
    var location: String { "filling-up:" + base.root }

    init(base: LocalStorage, limit: Int) {
        self.base = base
        self.limit = limit
    }

    func writeTogether(_ files: [(path: String, data: [UInt8])], madeDurable: (Int) -> Void) throws {
        for (index, file) in files.prefix(limit).enumerated() {
            try base.write(file.path, file.data)
            madeDurable(index + 1)
        }
        if files.count > limit { throw StorageError(path: files[limit].path, message: "write failed: No space left on device") }
    }
}

struct PartialCommitTests {
    /// Every snapshot made durable before the failure is reported as recorded (with its id) and cached; the others
    /// are reported as not recorded, and the session is over.
    @Test func aCommitThatFailsPartWayReportsAndCachesWhatItRecorded() throws {
        let scene = try EngineScene(accounts: 1, sizeMB: 1)
        _ = try scene.initialize()
        let storage = FillingUpStorage(base: scene.storage, limit: 2)
        let repository = try Repository.open(storage: storage, keySource: .keyFile(scene.keyFile), cacheDirectory: scene.repoPath + "/cache")
        let session = try BackupSession(repository: repository)
        defer { session.close() }
        let tickets = try ["a", "b", "c"].map { kind in
            try session.backup(directory: scene.root + "/home", options: BackupOptions(tags: ["kind": kind]))
        }
        let partial = try #require(throws: PartialCommit.self) { try session.commit() }
        #expect(Set(partial.recorded.keys) == Set(tickets.prefix(2)))
        #expect("\(partial)".contains("No space left on device") && "\(partial)".contains("2 snapshots were recorded"), "\(partial)")
        let files = Set(try scene.storage.list("snapshots"))
        #expect(files.count == 2 && files == Set(partial.recorded.values.map(\.id)))
        let cache = SnapshotCache(path: scene.repoPath + "/cache/snapshots", cipher: repository.dataCipher)
        #expect(Set(cache.read().keys) == files)
        #expect(throws: StorageError.self) { try session.commit() }
    }
}
