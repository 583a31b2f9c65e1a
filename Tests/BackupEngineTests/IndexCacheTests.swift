@testable import BackupEngine
import Foundation
import Testing
import TestSupport

/// The index cache: the index on disk, sorted and mapped, so the agent's memory does not grow with the repository.
struct IndexCacheTests {
    /// Small enough that a 4 MiB fixture (hundreds of blobs) folds many times.
    static let foldLimit = 40

    func openSmall(_ scene: EngineScene) throws -> Repository {
        try Repository.open(storage: scene.storage, keySource: .keyFile(scene.keyFile), foldLimit: Self.foldLimit)
    }

    @Test func memoryHoldsAtMostTheFoldLimitAndRestoresMatch() throws {
        let scene = try EngineScene(accounts: 2, sizeMB: 4)
        _ = try scene.initialize()
        let repository = try openSmall(scene)
        let snapshot = try repository.backup(directory: scene.root + "/home", options: BackupOptions(tags: ["kind": "files"]))
        #expect(snapshot.summary.blobsAdded > Self.foldLimit * 4)
        let index = repository.indexSnapshot
        #expect(index.blobs.recent.count < Self.foldLimit)
        let cache = try #require(index.blobs.cache)
        #expect(cache.count + index.blobs.recent.count >= Int(snapshot.summary.blobsAdded))
        #expect(FileManager.default.fileExists(atPath: scene.repoPath + "/cache/index"))

        // A fresh process reads the cache (and only the index files it does not cover).
        let reopened = try openSmall(scene)
        #expect(reopened.indexSnapshot.blobs.cache != nil)
        #expect(reopened.indexSnapshot.blobs.recent.count < Self.foldLimit)
        let target = scene.scratch.appending("restored")
        #expect(try reopened.restore(snapshot, target: target).errors.isEmpty)
        #expect(try scene.manifest(target) == scene.manifest(scene.root + "/home"))
        // Every blob the cache lists is where the index files say (verify rebuilds from them and reads every blob).
        #expect(try reopened.verify(readData: true).isHealthy)
        let again = try reopened.backup(directory: scene.root + "/home", options: BackupOptions(tags: ["kind": "files"]))
        #expect(again.summary.blobsAdded <= 1, "deduplication against the cached index failed: \(again.summary)")
    }

    /// What a backup adds is folded into the cache once a rewrite is worth it: at least a minimum number of entries,
    /// and a quarter of what the cache holds. Until then it is read from its index file at each open.
    @Test func aBackupFoldsWhatItAddedOnceItOutweighsTheCache() throws {
        let scene = try EngineScene(accounts: 1, sizeMB: 2)
        let repository = try scene.initialize()
        let first = try repository.backup(directory: scene.root + "/home", options: BackupOptions(tags: ["kind": "files"]))
        // A small repository: below the default minimum, so the entries are still in memory after the commit.
        let added = repository.indexSnapshot.blobs.recent.count
        #expect(added >= Int(first.summary.blobsAdded) && added < IndexedBlobs.minimumEarlyFold)
        repository.foldIndexIfWorthwhile(minimum: added + 1)
        #expect(repository.indexSnapshot.blobs.recent.count == added)

        repository.foldIndexIfWorthwhile(minimum: added)
        #expect(repository.indexSnapshot.blobs.recent.isEmpty)
        let cache = try #require(repository.indexSnapshot.blobs.cache)
        #expect(cache.count == added)
        // The next process maps the cache and reads no index file.
        #expect(try scene.open().indexSnapshot.blobs.recent.isEmpty)
        #expect(cache.indexFiles == Set(try scene.storage.list("index")))

        // A small change next to a large cache stays in memory, even with no minimum.
        try Data("a new page\n".utf8).write(to: URL(fileURLWithPath: scene.root + "/home/added.html"))
        let second = try repository.backup(directory: scene.root + "/home", options: BackupOptions(tags: ["kind": "files"]))
        let smallChange = repository.indexSnapshot.blobs.recent.count
        #expect(smallChange > 0 && smallChange < cache.count / 4)
        repository.foldIndexIfWorthwhile(minimum: 1)
        #expect(repository.indexSnapshot.blobs.recent.count == smallChange)
        let target = scene.scratch.appending("restored")
        #expect(try scene.open().restore(second, target: target).errors.isEmpty)
        #expect(try scene.manifest(target) == scene.manifest(scene.root + "/home"))
    }

    @Test func aMissingStaleOrDamagedCacheIsRebuilt() throws {
        let scene = try EngineScene(accounts: 1, sizeMB: 2)
        let repository = try scene.initialize()
        let first = try repository.backup(directory: scene.root + "/home", options: BackupOptions(tags: ["kind": "files"]))
        let cachePath = scene.repoPath + "/cache/index"
        let target = scene.scratch.appending("out")

        // Damaged in several ways: each time the next open rebuilds it from all the index files.
        #expect(try repository.verify(readData: false).isHealthy)  // verify rebuilds the cache whole
        let original = try Data(contentsOf: URL(fileURLWithPath: cachePath))
        let indexFiles = Set(try scene.storage.list("index"))
        #expect(try #require(IndexCacheFile(path: cachePath)).indexFiles == indexFiles)
        for damage in ["truncated", "garbage", "missing"] {
            switch damage {
            // Replaced, not rewritten in place: `repository` still maps the cache, and the agent only ever renames.
            case "truncated": try original.prefix(original.count - 7).write(to: URL(fileURLWithPath: cachePath), options: .atomic)
            case "garbage": try Data(repeating: 0xA5, count: original.count).write(to: URL(fileURLWithPath: cachePath), options: .atomic)
            default: try FileManager.default.removeItem(atPath: cachePath)
            }
            let reopened = try scene.open()
            let restored = try reopened.restore(first, target: target + "-" + damage)
            #expect(restored.errors.isEmpty, "\(damage): \(restored.errors)")
            #expect(IndexCacheFile(path: cachePath)?.indexFiles == indexFiles, "\(damage): cache not rebuilt")
        }

        // Stale after a prune that rewrote the index: the cache names index files that are gone.
        let second = try repository.backup(directory: scene.root + "/home", options: BackupOptions(tags: ["kind": "files"]))
        _ = try repository.prune(policy: { _ in RetentionPolicy(keepLast: 1) }, dryRun: false)
        let afterPrune = try scene.open()
        #expect(try afterPrune.snapshots().map(\.id) == [second.id])
        #expect(try afterPrune.restore(second, target: target + "-pruned").errors.isEmpty)
        #expect(try afterPrune.verify(readData: true).isHealthy)
    }

    /// Where no cache can be written (a read-only repository; here `cache` is a file, which stops even root), the
    /// index is read into memory as before.
    @Test func anUnwritableCacheFallsBackToMemory() throws {
        let scene = try EngineScene(accounts: 1, sizeMB: 1)
        let repository = try scene.initialize()
        let snapshot = try repository.backup(directory: scene.root + "/home", options: BackupOptions(tags: ["kind": "files"]))
        try FileManager.default.removeItem(atPath: scene.repoPath + "/cache")
        try Data("not a directory".utf8).write(to: URL(fileURLWithPath: scene.repoPath + "/cache"))
        let reopened = try Repository.open(storage: scene.storage, keySource: .keyFile(scene.keyFile), foldLimit: 5)
        #expect(reopened.indexSnapshot.blobs.cache == nil)
        #expect(try reopened.restore(snapshot, target: scene.scratch.appending("out")).errors.isEmpty)
        #expect(try reopened.verify(readData: true).isHealthy)
        let again = try reopened.backup(directory: scene.root + "/home", options: BackupOptions(tags: ["kind": "files"]))
        #expect(again.summary.errors.isEmpty)
    }

    /// Records that point at the wrong bytes can only make reads fail authentication, never return wrong data;
    /// verify does not use the cache, so it reports the repository healthy and repairs the cache.
    @Test func aTamperedCacheCannotServeWrongData() throws {
        let scene = try EngineScene(accounts: 1, sizeMB: 2)
        let repository = try scene.initialize()
        let snapshot = try repository.backup(directory: scene.root + "/home", options: BackupOptions(tags: ["kind": "files"]))
        #expect(try repository.verify(readData: false).isHealthy)  // verify rebuilds the cache whole
        let cachePath = scene.repoPath + "/cache/index"
        let cache = try #require(IndexCacheFile(path: cachePath))
        #expect(cache.count > 20)
        // Swap the offsets of every pair of records: each id now points at another blob's bytes.
        var bytes = try Array(Data(contentsOf: URL(fileURLWithPath: cachePath)))
        let recordsStart = bytes.count - cache.count * IndexRecord.size
        for pair in stride(from: 0, to: cache.count - 1, by: 2) {
            let a = recordsStart + pair * IndexRecord.size + 32, b = a + IndexRecord.size
            for offset in 0..<16 { bytes.swapAt(a + offset, b + offset) }
        }
        try Data(bytes).write(to: URL(fileURLWithPath: cachePath), options: .atomic)
        let tampered = try scene.open()
        let target = scene.scratch.appending("out")
        // Either the trees fail to load (the whole restore stops) or files fail one by one.
        var restored = RestoreSummary()
        do {
            restored = try tampered.restore(snapshot, target: target)
            #expect(!restored.errors.isEmpty)
        } catch let error as RepositoryError {
            #expect(error.message.contains("damaged"), "\(error)")
        }
        // Whatever was restored is right; the rest failed loudly.
        let source = scene.root + "/home"
        for path in FileManager.default.enumerator(atPath: target)?.allObjects.compactMap({ $0 as? String }) ?? [] {
            var isDirectory: ObjCBool = false
            guard FileManager.default.fileExists(atPath: target + "/" + path, isDirectory: &isDirectory), !isDirectory.boolValue,
                  !restored.errors.contains(where: { $0.hasPrefix(path + ":") }) else { continue }
            #expect(FileManager.default.contents(atPath: target + "/" + path) == FileManager.default.contents(atPath: source + "/" + path), "\(path)")
        }
        #expect(try tampered.verify(readData: true).isHealthy)
        let repaired = try scene.open()
        #expect(try repaired.restore(snapshot, target: scene.scratch.appending("out2")).errors.isEmpty)
    }

    /// Pack names come from the cache's mapping: after a fold none is held in memory, every number maps to its name
    /// and back, and the names are exactly the packs on disk.
    @Test func packNamesAreReadFromTheCache() throws {
        let scene = try EngineScene(accounts: 2, sizeMB: 4)
        _ = try scene.initialize()
        let repository = try openSmall(scene)
        _ = try repository.backup(directory: scene.root + "/home", options: BackupOptions(tags: ["kind": "files"]))
        _ = try repository.backup(directory: scene.root + "/home/user000", options: BackupOptions(tags: ["kind": "one"]))
        // Packs of index files the cache does not cover yet are named from memory, the rest from the mapping.
        #expect(try openSmall(scene).indexSnapshot.packs.inMemoryCount < repository.indexSnapshot.packs.count)
        #expect(try repository.verify(readData: false).isHealthy)  // rewrites the cache over every index file
        let reopened = try openSmall(scene)
        let packs = reopened.indexSnapshot.packs
        #expect(packs.cache != nil)
        #expect(packs.inMemoryCount == 0, "with a cache over every index file, no pack name should be in memory")
        var onDisk = Set<String>()
        for directory in try scene.storage.list("data") { onDisk.formUnion(try scene.storage.list("data/" + directory)) }
        #expect(packs.count > 2)
        #expect(Set(packs) == onDisk)
        for number in 0..<packs.count { #expect(packs.number(of: packs[number]) == Int32(number)) }
        #expect(packs.number(of: String(repeating: "0", count: 64)) == nil)
        #expect(packs.number(of: "not hex") == nil)

        // Packs written after the cache are named from memory until the next fold, with the next numbers.
        try writeRandomFiles(scene.scratch.appending("new"), count: 3, size: 1 << 20, prefix: "new")
        _ = try reopened.backup(directory: scene.scratch.appending("new"), options: BackupOptions(tags: ["kind": "new"]))
        let grown = reopened.indexSnapshot.packs
        #expect(grown.count > packs.count)
        for number in 0..<grown.count { #expect(grown.number(of: grown[number]) == Int32(number)) }
    }

    /// The name-to-number table is checked when the cache is mapped: out of order or out of range, the cache is
    /// refused and rebuilt, and the repository works as before.
    @Test(arguments: ["swapped", "out of range"])
    func aDamagedPackTableIsRebuilt(damage: String) throws {
        let scene = try EngineScene(accounts: 2, sizeMB: 4)
        let repository = try scene.initialize()
        let snapshot = try repository.backup(directory: scene.root + "/home", options: BackupOptions(tags: ["kind": "files"]))
        #expect(try repository.verify(readData: false).isHealthy)  // writes the whole cache
        let cachePath = scene.repoPath + "/cache/index"
        let cache = try #require(IndexCacheFile(path: cachePath))
        #expect(cache.packCount >= 2)
        var bytes = try Array(Data(contentsOf: URL(fileURLWithPath: cachePath)))
        let files = Int(UInt32(littleEndian: bytes.withUnsafeBytes { $0.loadUnaligned(fromByteOffset: 20, as: UInt32.self) }))
        let table = 32 + (cache.packCount + files) * 32
        if damage == "swapped" {
            for offset in 0..<4 { bytes.swapAt(table + offset, table + 4 + offset) }
        } else {
            bytes.replaceSubrange(table..<table + 4, with: [0xFF, 0xFF, 0x00, 0x00])
        }
        try Data(bytes).write(to: URL(fileURLWithPath: cachePath), options: .atomic)
        #expect(IndexCacheFile(path: cachePath) == nil)
        let reopened = try scene.open()
        #expect(IndexCacheFile(path: cachePath) != nil, "the cache was not rebuilt")
        #expect(try reopened.restore(snapshot, target: scene.scratch.appending("out")).errors.isEmpty)
        #expect(try scene.manifest(scene.scratch.appending("out")) == scene.manifest(scene.root + "/home"))
    }

    /// Delta bases (database dump chunks) come from the cache's delta table: after a fold none is in memory, each
    /// delta finds its base there, and days of dumps restore exactly, also after a rebuild in small runs.
    @Test func deltaBasesAreReadFromTheCache() throws {
        let scratch = TemporaryDirectory(prefix: "fk-cache-deltas")
        let storage = LocalStorage(root: scratch.appending("repo"))
        let keyFile = scratch.appending("k")
        let repository = try Repository.initialize(storage: storage, keySource: .keyFile(keyFile))
        var snapshots: [Snapshot] = []
        for day in 0..<4 { snapshots.append(try DeltaTests.backup(repository, DeltaTests.dump(rows: 8_000, day: day))) }
        let inMemory = Dictionary(uniqueKeysWithValues: repository.indexSnapshot.bases.map { ($0.delta, $0.base) })
        #expect(inMemory.count >= 3, "the dumps should have made deltas")
        #expect(try repository.verify(readData: false).isHealthy)  // writes the whole cache

        // Rebuilt in runs of a few entries (the bases travel with their records through every merge), and read back.
        for foldLimit in [IndexedBlobs.foldLimit, 3] {
            try? FileManager.default.removeItem(atPath: scratch.appending("repo/cache/index"))
            let reopened = try Repository.open(storage: storage, keySource: .keyFile(keyFile), foldLimit: foldLimit)
            let bases = reopened.indexSnapshot.bases
            #expect(bases.cache?.deltaCount == inMemory.count)
            #expect(bases.recent.isEmpty, "with a cache over every index file, no base should be in memory")
            #expect(Dictionary(uniqueKeysWithValues: bases.map { ($0.delta, $0.base) }) == inMemory)
            for (delta, base) in inMemory { #expect(bases[delta] == base) }
            for (_, base) in inMemory where inMemory[base] == nil { #expect(bases[base] == nil) }
            for (day, snapshot) in snapshots.enumerated() {
                #expect(try DeltaTests.restored(reopened, snapshot, scratch: scratch) == DeltaTests.dump(rows: 8_000, day: day))
            }
        }
    }

    /// A blob stored whole after the cache called it a delta is whole from then on, in memory and in the next cache.
    @Test func aWholeBlobOverridesACachedDelta() throws {
        let scratch = TemporaryDirectory(prefix: "fk-cache-override")
        let repository = try Repository.initialize(storage: LocalStorage(root: scratch.appending("repo")), keySource: .keyFile(scratch.appending("k")))
        for day in 0..<2 { _ = try DeltaTests.backup(repository, DeltaTests.dump(rows: 8_000, day: day)) }
        #expect(try repository.verify(readData: false).isHealthy)
        let cache = try #require(repository.indexSnapshot.bases.cache)
        let (delta, base) = try #require(repository.indexSnapshot.bases.first { _ in true })
        var bases = DeltaBases(cache: cache)
        bases.set(nil, for: delta)
        #expect(bases[delta] == nil)
        #expect(!bases.contains { $0.delta == delta })
        bases.set(base, for: delta)
        #expect(bases[delta] == base)
        // Setting "whole" for a blob the cache does not call a delta keeps nothing in memory.
        bases.set(nil, for: base)
        #expect(bases.recent[base] == nil)

        var records = [IndexRecord(id: delta, location: try #require(repository.indexSnapshot.blobs[delta]), base: nil)]
        let path = scratch.appending("merged")
        try IndexCacheFile.write(path: path, packs: repository.indexSnapshot.packs, indexFiles: [],
                                 sources: [CacheFileRecords(cache), SortedRecords(records)])
        let merged = try #require(IndexCacheFile(path: path))
        #expect(merged.base(of: delta) == nil)
        #expect(merged.deltaCount == cache.deltaCount - 1)
        records[0].base = base
        try IndexCacheFile.write(path: path, packs: repository.indexSnapshot.packs, indexFiles: [], sources: [SortedRecords(records)])
        #expect(try #require(IndexCacheFile(path: path)).base(of: delta) == base)
    }

    /// The delta table is searched by id, so it must be in increasing id order; a cache whose table is not is
    /// refused and rebuilt, and the dumps restore as before.
    @Test func aDeltaTableOutOfOrderIsRebuilt() throws {
        let scratch = TemporaryDirectory(prefix: "fk-cache-delta-order")
        let storage = LocalStorage(root: scratch.appending("repo"))
        let repository = try Repository.initialize(storage: storage, keySource: .keyFile(scratch.appending("k")))
        var snapshots: [Snapshot] = []
        for day in 0..<4 { snapshots.append(try DeltaTests.backup(repository, DeltaTests.dump(rows: 8_000, day: day))) }
        #expect(try repository.verify(readData: false).isHealthy)
        let cachePath = scratch.appending("repo/cache/index")
        let cache = try #require(IndexCacheFile(path: cachePath))
        #expect(cache.deltaCount >= 2)
        var bytes = try Array(Data(contentsOf: URL(fileURLWithPath: cachePath)))
        let table = bytes.count - cache.deltaCount * 64
        for offset in 0..<64 { bytes.swapAt(table + offset, table + 64 + offset) }
        try Data(bytes).write(to: URL(fileURLWithPath: cachePath), options: .atomic)
        #expect(IndexCacheFile(path: cachePath) == nil)
        let reopened = try Repository.open(storage: storage, keySource: .keyFile(scratch.appending("k")))
        #expect(IndexCacheFile(path: cachePath) != nil, "the cache was not rebuilt")
        for (day, snapshot) in snapshots.enumerated() {
            #expect(try DeltaTests.restored(reopened, snapshot, scratch: scratch) == DeltaTests.dump(rows: 8_000, day: day))
        }
    }
}
