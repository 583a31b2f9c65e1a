@testable import BackupEngine
import Crypto
import Foundation
import Testing
import TestSupport

/// `repairIndex` and `repairSnapshots`: after each, the repository verifies clean.
struct RepairTests {
    typealias Damage = DamageContainmentTests

    /// One flipped byte in an index file: prune refuses (it would take the packs only that file names for garbage),
    /// `repairIndex` rebuilds the index from the packs' headers, and then everything verifies and restores.
    @Test func repairIndexRebuildsTheIndexFromThePacks() throws {
        let scene = try EngineScene(accounts: 2, sizeMB: 2)
        let repository = try scene.initialize()
        _ = try Damage.backup(repository, scene, account: "user000")
        let before = try Damage.indexFiles(scene)
        let second = try Damage.backup(repository, scene, account: "user001")
        let damaged = try #require(try Damage.indexFiles(scene).subtracting(before).first)
        try Damage.flipByte(scene.repoPath + "/index/" + damaged, at: -30)
        try FileManager.default.removeItem(atPath: scene.repoPath + "/cache")

        let reopened = try scene.open()
        #expect(reopened.damagedIndexFiles == [damaged])
        #expect(try reopened.verify(readData: false).damagedIndexFiles == [damaged])
        do {
            _ = try reopened.prune(policy: { _ in RetentionPolicy(keepLast: 10) }, dryRun: false)
            Issue.record("prune ran with a damaged index file")
        } catch let error as RepositoryError {
            #expect(error.message.contains("repair index"), "\(error)")
        }
        #expect(throws: RepositoryError.self) { try reopened.repairSnapshots(readData: false) }

        let report = try reopened.repairIndex()
        #expect(report.damagedIndexFiles == [damaged])
        #expect(report.missingPacks.isEmpty && report.packsRewritten.isEmpty && report.unreadablePacks.isEmpty)
        #expect(try Damage.indexFiles(scene).intersection(before.union([damaged])).isEmpty, "the old index files are replaced")
        #expect(reopened.damagedIndexFiles.isEmpty)
        let verified = try reopened.verify(readData: true)
        #expect(verified.isHealthy, "\(verified.problems) \(verified.damagedFiles)")
        let target = scene.scratch.appending("out")
        #expect(try reopened.restore(second, target: target).errors.isEmpty)
        #expect(try scene.manifest(target) == scene.manifest(scene.root + "/home/user001"))
        _ = try reopened.prune(policy: { _ in RetentionPolicy(keepLast: 10) }, dryRun: false)
        #expect(try scene.open().verify(readData: true).isHealthy)
    }

    /// An index file that is gone (not damaged: there is nothing left to authenticate) leaves its packs named by no
    /// index. Prune used to delete them as an interrupted backup's leftovers, and with them every snapshot's data.
    /// It must refuse and name `repair index`, which gets everything back.
    @Test func pruneDeletesNothingWhenAnIndexFileIsLost() throws {
        let scene = try EngineScene(accounts: 2, sizeMB: 2)
        let repository = try scene.initialize()
        let before = (try? Damage.indexFiles(scene)) ?? []
        let first = try Damage.backup(repository, scene, account: "user000")
        let lost = try #require(try Damage.indexFiles(scene).subtracting(before).first)
        _ = try Damage.backup(repository, scene, account: "user001")
        try FileManager.default.removeItem(atPath: scene.repoPath + "/index/" + lost)
        try FileManager.default.removeItem(atPath: scene.repoPath + "/cache")
        let packs = Set(try FileManager.default.subpathsOfDirectory(atPath: scene.repoPath + "/data").filter { $0.count > 64 })

        let reopened = try scene.open()
        #expect(try reopened.verify(readData: false).unindexedPacks > 0)
        for dryRun in [true, false] {
            do {
                _ = try reopened.prune(policy: { _ in RetentionPolicy(keepLast: 10) }, dryRun: dryRun)
                Issue.record("prune (dry run: \(dryRun)) ran while kept snapshots need blobs only unindexed packs may hold")
            } catch let error as RepositoryError {
                #expect(error.message.contains("repair index"), "\(error)")
            }
        }
        #expect(Set(try FileManager.default.subpathsOfDirectory(atPath: scene.repoPath + "/data").filter { $0.count > 64 }) == packs)
        #expect(try reopened.snapshots().count == 2)

        _ = try reopened.repairIndex()
        let verified = try reopened.verify(readData: true)
        #expect(verified.isHealthy, "\(verified.problems) \(verified.damagedFiles)")
        let target = scene.scratch.appending("out")
        #expect(try reopened.restore(first, target: target).errors.isEmpty)
        #expect(try scene.manifest(target) == scene.manifest(scene.root + "/home/user000"))
        _ = try reopened.prune(policy: { _ in RetentionPolicy(keepLast: 10) }, dryRun: false)
        #expect(try scene.open().verify(readData: true).isHealthy)
    }

    /// A lost pack (so snapshots need blobs the index no longer has) next to an unindexed pack whose header does not
    /// authenticate: `repair index` can never index that one, so it must not keep prune refusing (found by review:
    /// prune and verify's advice would have sent the operator round in circles while the repository grew).
    @Test func anUnindexablePackDoesNotKeepPruneRefusing() throws {
        let scene = try EngineScene(accounts: 1, sizeMB: 1)
        let repository = try scene.initialize()
        let snapshot = try Damage.backup(repository, scene, account: "user000")
        let rootID = try #require(BlobID(hex: snapshot.tree))
        let (lost, _) = try #require(repository.location(of: rootID))
        try FileManager.default.removeItem(atPath: scene.repoPath + "/" + Repository.packPath(lost))
        let garbage = String(repeating: "ab", count: 32)
        try FileManager.default.createDirectory(atPath: scene.repoPath + "/data/ab", withIntermediateDirectories: true)
        try Data((0..<4096).map { UInt8(truncatingIfNeeded: $0 &* 7) }).write(to: URL(fileURLWithPath: scene.repoPath + "/data/ab/" + garbage))

        let reopened = try scene.open()
        let verified = try reopened.verify(readData: false)
        #expect(verified.unindexedPacks == 1 && verified.indexableUnindexedPacks == 0)
        let report = try reopened.prune(policy: { _ in RetentionPolicy(keepLast: 10) }, dryRun: false)
        #expect(report.unindexedPacksDeleted == 1)
        #expect(!FileManager.default.fileExists(atPath: scene.repoPath + "/data/ab/" + garbage))
    }

    /// The index cache is derived data and carries no authentication. Prune rewrites and deletes packs by what the
    /// index says, so it must not read it from a damaged cache: here every record's id has a flipped bit, and prune
    /// used to take every pack for garbage.
    @Test func pruneDoesNotTrustADamagedIndexCache() throws {
        let scene = try EngineScene(accounts: 2, sizeMB: 2)
        let repository = try scene.initialize()
        let first = try Damage.backup(repository, scene, account: "user000")
        _ = try Damage.backup(repository, scene, account: "user001")
        // Opening builds the cache afresh from both index files.
        let cachePath = scene.repoPath + "/cache/index"
        try FileManager.default.removeItem(atPath: cachePath)
        _ = try scene.open()
        var bytes = [UInt8](try Data(contentsOf: URL(fileURLWithPath: cachePath)))
        func u32(_ offset: Int) -> Int { (0..<4).reduce(0) { $0 | Int(bytes[offset + $1]) << (8 * $1) } }
        let count = (0..<8).reduce(0) { $0 | Int(bytes[8 + $1]) << (8 * $1) }
        let start = IndexCacheFile.headerSize(packs: u32(16), indexFiles: u32(20))
        #expect(count > 0)
        for record in 0..<count { bytes[start + record * IndexRecord.size + 31] ^= 0x01 }
        try Data(bytes).write(to: URL(fileURLWithPath: cachePath))

        let reopened = try scene.open()
        _ = try reopened.prune(policy: { _ in RetentionPolicy(keepLast: 10) }, dryRun: false)
        let verified = try scene.open().verify(readData: true)
        #expect(verified.isHealthy, "\(verified.problems) \(verified.damagedFiles)")
        let target = scene.scratch.appending("out")
        #expect(try scene.open().restore(first, target: target).errors.isEmpty)
        #expect(try scene.manifest(target) == scene.manifest(scene.root + "/home/user000"))
    }

    /// A damaged pack header (or trailer): `repairIndex` rewrites the pack with a sound header from the index.
    @Test(arguments: ["header", "trailer"])
    func repairIndexRewritesAPackWithADamagedHeader(part: String) throws {
        let scene = try EngineScene(accounts: 1, sizeMB: 2)
        let repository = try scene.initialize()
        let snapshot = try Damage.backup(repository, scene, account: "user000")
        let rootID = try #require(BlobID(hex: snapshot.tree))
        let (pack, _) = try #require(repository.location(of: rootID))
        try Damage.flipByte(scene.repoPath + "/" + Repository.packPath(pack), at: part == "header" ? -20 : -2)
        #expect(try repository.verify(readData: false).damagedPackHeaders == [pack])

        let report = try repository.repairIndex()
        #expect(report.packsRewritten == [pack] && report.blobsLost == 0 && report.unreadablePacks.isEmpty)
        #expect(!FileManager.default.fileExists(atPath: scene.repoPath + "/" + Repository.packPath(pack)))
        let verified = try repository.verify(readData: true)
        #expect(verified.isHealthy, "\(verified.problems)")
        let target = scene.scratch.appending("out")
        #expect(try repository.restore(snapshot, target: target).errors.isEmpty)
        #expect(try scene.manifest(target) == scene.manifest(scene.root + "/home/user000"))
    }

    /// A lost pack: `repairIndex` drops it from the index, after which backups store its blobs again.
    @Test func repairIndexDropsALostPackAndTheNextBackupStoresItsBlobsAgain() throws {
        let scene = try EngineScene(accounts: 1, sizeMB: 3)
        let repository = try scene.initialize()
        let first = try Damage.backup(repository, scene, account: "user000")
        let files = try Damage.files(in: try repository.loadTree(try #require(BlobID(hex: first.tree))), repository: repository)
        let lost = try Damage.deletePacks(holding: [try #require(files.first { !$0.node.content.isEmpty }).node.content[0]],
                                          in: repository, scene: scene)
        let report = try repository.repairIndex()
        #expect(Set(report.missingPacks) == lost)
        #expect(try !repository.verify(readData: false).damagedFiles.isEmpty)
        // The index no longer lists those blobs: the unchanged files are read and stored again.
        _ = try Damage.backup(repository, scene, account: "user000")
        let verified = try repository.verify(readData: true)
        #expect(verified.isHealthy, "\(verified.problems) \(verified.damagedFiles)")
    }

    /// A pack that was gone while a backup ran (so the index cache left it out) and is then put back (copied from
    /// another copy, say) is indexed again, and prune keeps it instead of deleting it as an unindexed pack.
    @Test func aPackPutBackAfterItWasMissingIsKept() throws {
        let scene = try EngineScene(accounts: 1, sizeMB: 2)
        let repository = try scene.initialize()
        let snapshot = try Damage.backup(repository, scene, account: "user000")
        let rootID = try #require(BlobID(hex: snapshot.tree))
        let (pack, _) = try #require(repository.location(of: rootID))
        let path = scene.repoPath + "/" + Repository.packPath(pack)
        try FileManager.default.moveItem(atPath: path, toPath: scene.scratch.appending("kept-pack"))
        let reopened = try scene.open()
        _ = try reopened.backup(directory: scene.root + "/home/user000/public_html", options: BackupOptions(tags: ["kind": "other"]))
        try FileManager.default.moveItem(atPath: scene.scratch.appending("kept-pack"), toPath: path)

        let again = try scene.open()
        #expect(again.location(of: rootID)?.pack == pack)
        _ = try again.prune(policy: { _ in RetentionPolicy(keepLast: 10) }, dryRun: false)
        #expect(FileManager.default.fileExists(atPath: path))
        #expect(try again.verify(readData: true).isHealthy)
    }

    /// `repairSnapshots` drops exactly the lost files (naming each), keeps the snapshot's time and tags, writes the
    /// new snapshot and removes the old one; with `readData` it also finds blobs damaged in place and takes them out
    /// of the index and the packs, so the next backup stores them again. The repository then verifies clean.
    @Test func repairSnapshotsDropsTheLostFilesAndTheNextBackupStoresThemAgain() throws {
        let scene = try EngineScene(accounts: 2, sizeMB: 3)
        let repository = try scene.initialize()
        // Two backups, so the two accounts' data are in packs of their own.
        let first = try Damage.backup(repository, scene, account: "user000")
        let second = try Damage.backup(repository, scene, account: "user001")
        func largestFiles(_ snapshot: Snapshot) throws -> [(path: String, node: TreeNode)] {
            try Damage.files(in: try repository.loadTree(snapshot.tree), repository: repository)
                .filter { !$0.node.content.isEmpty }.sorted { $0.node.size > $1.node.size }
        }
        // user000's largest file is lost with its pack, and deleted from the source too.
        let lostFile = try largestFiles(first)[0]
        let lostPacks = try Damage.deletePacks(holding: [lostFile.node.content[0]], in: repository, scene: scene)
        try FileManager.default.removeItem(atPath: scene.root + "/home/user000/" + lostFile.path)
        // user001's largest file gets a flipped byte in its data (found only by reading data).
        let flipped = try largestFiles(second)[0]
        let (pack, location) = try #require(repository.location(of: flipped.node.content[0]))
        #expect(!lostPacks.contains(pack) && location.inner == nil)
        try scene.flipByte(inPack: pack, at: Int(location.offset) + 20)

        let reopened = try scene.open()
        let third = try Damage.backup(reopened, scene, account: "user000")
        let fourth = try Damage.backup(reopened, scene, account: "user001")
        // user000's other files are whole again; the flipped file is unchanged in the source, so the backup trusted it.
        let damaged = try reopened.verify(readData: true).damagedFiles
        #expect(damaged == [first.id: [lostFile.path], second.id: [flipped.path], fourth.id: [flipped.path]], "\(damaged)")

        let report = try reopened.repairSnapshots(readData: true)
        let byOriginal = Dictionary(uniqueKeysWithValues: report.repaired.map { ($0.snapshot, $0) })
        #expect(Set(byOriginal.keys) == [first.id, second.id, fourth.id])
        #expect(byOriginal[first.id]?.droppedFiles == [lostFile.path])
        #expect(byOriginal[second.id]?.droppedFiles == [flipped.path] && byOriginal[fourth.id]?.droppedFiles == [flipped.path])
        #expect(report.blobsRemoved >= 1 && report.packsRewritten + report.packsDeleted >= 1, "\(report)")
        // The backup left the lost pack out of its index cache; the index files still named it until now.
        #expect(Set(report.missingPacks) == lostPacks)
        let snapshots = try reopened.snapshots()
        #expect(Set(snapshots.map(\.id)) == Set(report.repaired.compactMap(\.replacement)).union([third.id]), "new snapshots written, old ones removed")
        let repairedFirst = try #require(snapshots.first { $0.id == byOriginal[first.id]?.replacement })
        // Same time (as stored: to the millisecond) and tags, so retention and the choice of parent are unchanged.
        #expect(abs(repairedFirst.time.timeIntervalSince(first.time)) < 0.001 && repairedFirst.tags == first.tags)
        let clean = try reopened.verify(readData: true)
        #expect(clean.isHealthy, "\(clean.problems) \(clean.damagedFiles)")

        // The damaged blob is no longer indexed: the next backup reads the file and stores it again.
        let fifth = try Damage.backup(reopened, scene, account: "user001")
        #expect(fifth.summary.filesRead >= 1)
        let target = scene.scratch.appending("out")
        #expect(try reopened.restore(fifth, target: target).errors.isEmpty)
        #expect(try scene.manifest(target) == scene.manifest(scene.root + "/home/user001"))
        #expect(try reopened.verify(readData: true).isHealthy)
        // Restoring the repaired old snapshot gives everything but the dropped file.
        let old = scene.scratch.appending("old")
        #expect(try reopened.restore(repairedFirst, target: old).errors.isEmpty)
        #expect(!FileManager.default.fileExists(atPath: old + "/" + lostFile.path))
        #expect(try scene.manifest(old) == scene.manifest(scene.root + "/home/user000"))
    }

    /// A directory listing that is lost: the directory is kept empty and named; a snapshot whose root listing is
    /// lost is removed; a snapshot file that does not authenticate is removed.
    @Test func repairSnapshotsHandlesLostListingsAndUnreadableSnapshotFiles() throws {
        let scene = try EngineScene(accounts: 2, sizeMB: 2)
        let repository = try scene.initialize()
        let first = try Damage.backup(repository, scene, account: "user000")
        let second = try Damage.backup(repository, scene, account: "user001")
        // user000: one subdirectory's listing gets a flipped byte; user001: its root listing does.
        let root = try repository.loadTree(first.tree)
        let directory = try #require(root.nodes.first { $0.kind == .directory && $0.subtree != nil })
        let subtree = try #require(directory.subtree), secondRoot = try #require(BlobID(hex: second.tree))
        for id in [subtree, secondRoot] {
            let (pack, location) = try #require(repository.location(of: id))
            try scene.flipByte(inPack: pack, at: Int(location.offset) + 20)
        }
        let third = try repository.backup(directory: scene.root + "/home/user000/" + directory.name, options: BackupOptions(tags: ["kind": "x"]))
        try Damage.flipByte(scene.repoPath + "/snapshots/" + third.id, at: 30)

        let report = try repository.repairSnapshots(readData: false)
        #expect(report.unreadableSnapshotFiles == [third.id])
        let byOriginal = Dictionary(uniqueKeysWithValues: report.repaired.map { ($0.snapshot, $0) })
        #expect(byOriginal[first.id]?.droppedFiles == [directory.name + "/"])
        #expect(byOriginal[first.id]?.replacement != nil)
        #expect(byOriginal[second.id]?.droppedFiles == ["/"] && byOriginal[second.id]?.replacement == nil)
        let verified = try repository.verify(readData: true)
        #expect(verified.isHealthy, "\(verified.problems) \(verified.damagedFiles)")
        let repaired = try #require(try repository.snapshots().first)
        let target = scene.scratch.appending("out")
        #expect(try repository.restore(repaired, target: target).errors.isEmpty)
        var isDirectory: ObjCBool = false
        #expect(FileManager.default.fileExists(atPath: target + "/" + directory.name, isDirectory: &isDirectory) && isDirectory.boolValue)
        #expect(try FileManager.default.contentsOfDirectory(atPath: target + "/" + directory.name).isEmpty)
    }

    /// The same repairs work on a storage with only whole-file writes (as the off-site copy over SFTP).
    @Test func repairsWorkOverAWholeFileStorage() throws {
        let scene = try EngineScene(accounts: 1, sizeMB: 2)
        let storage = WholeFileStorage(base: scene.storage)
        try Repository.initialize(storage: storage, keySource: .keyFile(scene.keyFile))
        let repository = try Repository.open(storage: storage, keySource: .keyFile(scene.keyFile))
        let snapshot = try repository.backup(directory: scene.root + "/home", options: BackupOptions(tags: ["kind": "files"]))
        let rootID = try #require(BlobID(hex: snapshot.tree))
        let (pack, _) = try #require(repository.location(of: rootID))
        try Damage.flipByte(scene.repoPath + "/" + Repository.packPath(pack), at: -20)
        #expect(try repository.repairIndex().packsRewritten == [pack])
        #expect(try repository.repairSnapshots(readData: true).repaired.isEmpty)
        #expect(try repository.verify(readData: true).isHealthy)
    }
}
