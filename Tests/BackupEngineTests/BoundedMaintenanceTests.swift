@testable import BackupEngine
import Foundation
import Testing
import TestSupport

/// Prune, verify and copy look at every blob without holding the whole index in memory: reachable blobs are bits
/// on the index cache, and packs are visited a batch at a time. The repositories here are opened with a tiny fold
/// limit, so every path (cache plus in-memory entries, many batches, many index files) is taken.
struct BoundedMaintenanceTests {
    static let foldLimit = 40

    func openSmall(_ scene: EngineScene) throws -> Repository {
        try Repository.open(storage: scene.storage, keySource: .keyFile(scene.keyFile), foldLimit: Self.foldLimit)
    }

    /// A repository whose index is partly in the cache and partly in memory.
    func repositoryWithCacheAndRecentEntries(_ scene: EngineScene) throws -> (Repository, Snapshot, Snapshot) {
        _ = try scene.initialize()
        let repository = try openSmall(scene)
        let first = try repository.backup(directory: scene.root + "/home", options: BackupOptions(tags: ["kind": "files"]))
        try writeRandomFiles(scene.scratch.appending("new"), count: 3, size: 100_000, prefix: "new")
        let second = try repository.backup(directory: scene.scratch.appending("new"), options: BackupOptions(tags: ["kind": "new"]))
        let index = repository.indexSnapshot
        #expect(index.blobs.cache != nil && !index.blobs.recent.isEmpty, "the test needs both cached and in-memory entries")
        return (repository, first, second)
    }

    /// Stray packs (an interrupted backup's) are found one `data/xx` listing at a time against the index's lookup,
    /// with the index partly cached and partly in memory: counted by verify, removed by prune, and no indexed pack
    /// is ever taken for one.
    @Test func strayPacksAreFoundAgainstTheIndexLookupAndPruned() throws {
        let scene = try EngineScene(accounts: 1, sizeMB: 3)
        let (repository, first, second) = try repositoryWithCacheAndRecentEntries(scene)
        let strays = ["00" + String(repeating: "a", count: 62), "ff" + String(repeating: "0", count: 62)]
        for stray in strays {
            let path = scene.repoPath + "/" + Repository.packPath(stray)
            try FileManager.default.createDirectory(atPath: (path as NSString).deletingLastPathComponent, withIntermediateDirectories: true)
            try Data(repeating: 1, count: 4096).write(to: URL(fileURLWithPath: path))
        }
        let indexedPacks = Set(repository.indexSnapshot.packs)
        #expect(Set(try repository.unindexedPackNames(index: repository.indexSnapshot)) == Set(strays))
        let report = try repository.verify(readData: true)
        #expect(report.isHealthy && report.unindexedPacks == 2)

        let pruned = try repository.prune(policy: { _ in RetentionPolicy(keepDaily: 30) }, dryRun: false)
        #expect(pruned.unindexedPacksDeleted == 2)
        for stray in strays { #expect(!FileManager.default.fileExists(atPath: scene.repoPath + "/" + Repository.packPath(stray))) }
        for pack in indexedPacks { #expect(FileManager.default.fileExists(atPath: scene.repoPath + "/" + Repository.packPath(pack))) }
        let after = try openSmall(scene)
        #expect(try after.verify(readData: true).isHealthy)
        #expect(try after.verify(readData: false).unindexedPacks == 0)
        #expect(Set(try after.snapshots().map(\.id)) == [first.id, second.id])
    }

    @Test func marksHoldExactlyTheInsertedBlobs() throws {
        let scene = try EngineScene(accounts: 1, sizeMB: 3)
        let (repository, _, _) = try repositoryWithCacheAndRecentEntries(scene)
        let index = repository.indexSnapshot
        let all = index.blobs.map(\.key)
        let cachedID = try #require(all.first { index.blobs.recent[$0] == nil })
        let recentID = try #require(index.blobs.recent.keys.first)
        let unknown = BlobID(bytes: [UInt8](repeating: 7, count: 32))
        var marks = BlobMarks(index: index)
        let firstTime = marks.insert(cachedID), secondTime = marks.insert(cachedID)
        let recentInserted = marks.insert(recentID), unknownInserted = marks.insert(unknown)
        #expect(firstTime && !secondTime && recentInserted && unknownInserted)
        #expect(marks.count == 3)
        #expect(Set(marks) == [cachedID, recentID, unknown])
        for id in all where id != cachedID && id != recentID { #expect(!marks.contains(id)) }

        // Every other blob, marked too: iteration gives each exactly once.
        marks.formUnion(all)
        let listed = Array(marks)
        #expect(listed.count == all.count + 1)
        #expect(Set(listed) == Set(all).union([unknown]))
    }

    @Test func everyPackIsVisitedOnceWithItsEntries() throws {
        let scene = try EngineScene(accounts: 1, sizeMB: 3)
        let (repository, _, _) = try repositoryWithCacheAndRecentEntries(scene)
        let index = repository.indexSnapshot
        var visited: [Int32] = []
        var seen: [BlobID: BlobLocation] = [:]
        index.forEachPack(limit: 7) { number, entries in
            visited.append(number)
            for (id, location) in entries {
                #expect(location.pack == number)
                let earlier = seen.updateValue(location, forKey: id)
                #expect(earlier == nil, "blob \(id) listed twice")
            }
        }
        #expect(visited == (0..<Int32(index.packs.count)).map { $0 })
        #expect(seen.count == index.blobs.map(\.key).count)
        for (id, location) in seen { #expect(index.blobs[id]?.offset == location.offset) }
    }

    /// Prune with a tiny fold limit: the kept entries go out in many index files, the rewritten packs' entries with
    /// them, and the repository verifies and restores exactly.
    @Test func pruneWritesTheNewIndexInBoundedFiles() throws {
        let scene = try EngineScene(accounts: 2, sizeMB: 3)
        let (repository, _, _) = try repositoryWithCacheAndRecentEntries(scene)
        try HostingFixture.churn(root: scene.root, percent: 30)
        let latest = try repository.backup(directory: scene.root + "/home", options: BackupOptions(tags: ["kind": "files"]))
        let report = try repository.prune(policy: { _ in RetentionPolicy(keepLast: 1) }, dryRun: false)
        #expect(report.removedSnapshots.count == 1)
        #expect(report.packsDeleted > 0)
        let indexFiles = try scene.storage.list("index")
        let reopened = try openSmall(scene)
        // One index file takes whole packs until it holds `foldLimit` entries; this repository's packs hold more.
        let packs = reopened.indexSnapshot.packs.count
        #expect(indexFiles.count > 1 && indexFiles.count <= packs + 1, "\(indexFiles.count) index files for \(packs) packs")
        #expect(try reopened.verify(readData: true).isHealthy)
        let target = scene.scratch.appending("restored")
        #expect(try reopened.restore(latest, target: target).errors.isEmpty)
        #expect(try scene.manifest(target) == scene.manifest(scene.root + "/home"))
        // Nothing that prune freed is still named, and a second prune finds nothing to do.
        let again = try reopened.prune(policy: { _ in RetentionPolicy(keepLast: 1) }, dryRun: false)
        #expect(again.packsDeleted == 0 && again.unindexedPacksDeleted == 0)
    }

    /// The off-site push sends packs a batch at a time, each followed by the remote index file listing it, and the
    /// remote keeps its index cache in the local directory it was opened with.
    @Test func copyIndexesTheRemoteInBoundedBatches() throws {
        let scene = try EngineScene(accounts: 2, sizeMB: 3)
        let (repository, first, second) = try repositoryWithCacheAndRecentEntries(scene)
        let remoteStorage = LocalStorage(root: scene.scratch.appending("offsite"))
        try repository.replicateConfiguration(to: remoteStorage)
        let remoteCache = scene.scratch.appending("remote-cache")
        let remote = try Repository.open(storage: remoteStorage, keySource: .keyFile(scene.keyFile), foldLimit: Self.foldLimit,
                                         cacheDirectory: remoteCache)
        let report = try repository.copy([first, second], to: remote)
        #expect(report.snapshotsCopied == 2)
        let indexFiles = try remoteStorage.list("index")
        #expect(indexFiles.count > 1, "one remote index file for \(report.packsUploaded) packs: the copy was not batched")
        // The cache is where the remote was told to keep it, and not inside the remote repository.
        #expect(IndexCacheFile(path: remoteCache + "/index") != nil)
        #expect(!FileManager.default.fileExists(atPath: remoteStorage.root + "/cache"))

        let reopened = try Repository.open(storage: remoteStorage, keySource: .keyFile(scene.keyFile), foldLimit: Self.foldLimit,
                                           cacheDirectory: remoteCache)
        #expect(try reopened.verify(readData: true).isHealthy)
        let target = scene.scratch.appending("restored")
        #expect(try reopened.restore(first, target: target).errors.isEmpty)
        #expect(try scene.manifest(target) == scene.manifest(scene.root + "/home"))
        let again = try repository.copy([first, second], to: reopened)
        #expect(again.packsUploaded == 0 && again.snapshotsAlreadyThere == 2)
    }

    /// Over a storage whose staged packs appear only when committed, every batch's packs are committed before the
    /// index that names them is written, on every connection.
    @Test func copyCommitsEveryStagedPackBeforeItsIndexIsWritten() throws {
        let scene = try EngineScene(accounts: 2, sizeMB: 3)
        let (repository, first, second) = try repositoryWithCacheAndRecentEntries(scene)
        let remoteStorage = DeferredCommitStorage(base: LocalStorage(root: scene.scratch.appending("offsite")))
        try repository.replicateConfiguration(to: remoteStorage)
        let remote = try Repository.open(storage: remoteStorage, keySource: .keyFile(scene.keyFile), foldLimit: Self.foldLimit,
                                         cacheDirectory: scene.scratch.appending("remote-cache"))
        let report = try repository.copy([first, second], to: remote, uploaders: [remoteStorage, remoteStorage, remoteStorage])
        #expect(report.packsUploaded > 1 && report.snapshotsCopied == 2)
        #expect(remoteStorage.uncommittedWhenIndexed.count > 1, "the copy was not batched")
        #expect(remoteStorage.uncommittedWhenIndexed.allSatisfy { $0 == 0 }, "\(remoteStorage.uncommittedWhenIndexed)")
        #expect(remoteStorage.stillUncommitted == 0)
        #expect(try Repository.open(storage: remoteStorage, keySource: .keyFile(scene.keyFile)).verify(readData: true).isHealthy)
    }
}
