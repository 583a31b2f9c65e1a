@testable import BackupEngine
import Foundation
import Testing
import TestSupport

/// The local snapshot cache: one file read instead of one file per snapshot, never a different snapshot than the
/// repository holds.
struct SnapshotCacheTests {
    func backUpTwice(_ scene: EngineScene, _ repository: Repository) throws -> [Snapshot] {
        let first = try repository.backup(directory: scene.root + "/home", options: BackupOptions(tags: ["kind": "files"]))
        let second = try repository.backup(directory: scene.root + "/home", options: BackupOptions(tags: ["kind": "email"]))
        return [first, second]
    }

    @Test func listingFillsTheCacheAndLaterListingsReadIt() throws {
        let scene = try EngineScene(accounts: 1, sizeMB: 1)
        let repository = try scene.initialize()
        let made = try backUpTwice(scene, repository)
        let listed = try scene.open().snapshots()
        #expect(listed.map(\.id).sorted() == made.map(\.id).sorted())
        let cache = SnapshotCache(path: scene.repoPath + "/cache/snapshots")
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
        let scene = try EngineScene(accounts: 1, sizeMB: 1)
        let repository = try scene.initialize()
        let first = try repository.backup(directory: scene.root + "/home", options: BackupOptions(tags: ["kind": "files"]))
        _ = try scene.open().snapshots()
        let cache = SnapshotCache(path: scene.repoPath + "/cache/snapshots")
        #expect(Set(cache.read().keys) == [first.id])

        let session = try BackupSession(repository: try scene.open())
        defer { session.close() }
        let tickets = [try session.backup(directory: scene.root + "/home", options: BackupOptions(tags: ["kind": "email"])),
                       try session.backup(directory: scene.root + "/home", options: BackupOptions(tags: ["kind": "web"]))]
        let recorded = try session.commit()
        let ids = tickets.compactMap { recorded[$0]?.id }
        #expect(ids.count == 2)
        #expect(Set(cache.read().keys) == Set([first.id] + ids))
        // What the cache holds is what the files hold.
        for id in ids {
            #expect(cache.read()[id] == Array(try Data(contentsOf: URL(fileURLWithPath: scene.repoPath + "/snapshots/" + id))))
        }
    }

    /// A cache entry is used only when its hash is the snapshot's name: swapped, truncated or garbage caches give
    /// exactly what the snapshot files hold, and are rewritten.
    @Test func aDamagedOrForgedCacheNeverChangesWhatIsListed() throws {
        let scene = try EngineScene(accounts: 1, sizeMB: 1)
        let repository = try scene.initialize()
        let made = try backUpTwice(scene, repository)
        let truth = try scene.open().snapshots().map { "\($0.id) \($0.tree) \($0.tags)" }
        let cache = SnapshotCache(path: scene.repoPath + "/cache/snapshots")
        let entries = cache.read()
        #expect(entries.count == 2)
        let original = try Data(contentsOf: URL(fileURLWithPath: cache.path))

        // Each snapshot's name given the other's sealed bytes: both authenticate, neither hashes to its name.
        cache.write([(made[0].id, entries[made[1].id]!), (made[1].id, entries[made[0].id]!)])
        #expect(try scene.open().snapshots().map { "\($0.id) \($0.tree) \($0.tags)" } == truth)
        #expect(cache.read()[made[0].id] == entries[made[0].id], "the forged cache was not rewritten")

        for damaged in [original.prefix(original.count - 5), Data(repeating: 0xA5, count: 64), Data()] {
            try damaged.write(to: URL(fileURLWithPath: cache.path))
            #expect(try scene.open().snapshots().map { "\($0.id) \($0.tree) \($0.tags)" } == truth)
            #expect(cache.read() == entries)
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
        #expect(Array(SnapshotCache(path: scene.repoPath + "/cache/snapshots").read().keys) == [kept.id])
    }
}
