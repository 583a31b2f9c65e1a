@testable import BackupEngine
import Crypto
import Foundation
import Testing
import TestSupport

/// Daily database dumps stored as deltas against the previous day's dump.
struct DeltaTests {
    /// A table dump where `day` has updated 1% of the rows, spread evenly (the worst case for chunking).
    static func dump(rows: Int, day: Int) -> [UInt8] {
        var text = "CREATE TABLE orders (id INT, customer VARCHAR(32), status VARCHAR(16), updated DATETIME);\nINSERT INTO orders VALUES "
        for row in 0..<rows {
            let touched = (1...max(day, 1)).contains { day > 0 && row % 100 == $0 % 100 }
            text += "(\(row),'customer\(row &* 7919 % 5003)','\(touched ? "paid" : "pending")','2026-01-\(touched ? String(format: "%02d", row % 28 + 1) : "01") 00:00:00'),"
        }
        text += "(0,'','','2026-01-01 00:00:00');\n"
        return Array(text.utf8)
    }

    /// Another table: `rows` rows of page text, never updated.
    static func pages(rows: Int) -> [UInt8] {
        var text = "CREATE TABLE pages (id INT, body TEXT);\nINSERT INTO pages VALUES "
        for row in 0..<rows { text += "(\(row),'page \(row &* 104729 % 7919) about hosting, mail and backups'),\n" }
        return Array((text + "(0,'');\n").utf8)
    }

    static func backup(_ repository: Repository, _ bytes: [UInt8]) throws -> Snapshot {
        let pipe = Pipe()
        let writer = Thread { pipe.fileHandleForWriting.write(Data(bytes)); try? pipe.fileHandleForWriting.close() }
        writer.start()
        defer { try? pipe.fileHandleForReading.close() }
        return try repository.backup(stream: pipe.fileHandleForReading.fileDescriptor, name: "shop.sql",
                                     options: BackupOptions(tags: ["kind": "databases", "database": "shop"], chunking: .streams))
    }

    static func restored(_ repository: Repository, _ snapshot: Snapshot, scratch: TemporaryDirectory) throws -> [UInt8] {
        let path = scratch.appending("restored-\(snapshot.shortID).sql")
        _ = FileManager.default.createFile(atPath: path, contents: nil)
        let handle = try FileHandle(forWritingTo: URL(fileURLWithPath: path))
        defer { try? handle.close() }
        try repository.restoreStream(snapshot, to: handle.fileDescriptor)
        return Array(FileManager.default.contents(atPath: path) ?? Data())
    }

    @Test func dailyDumpsAreStoredAsSmallDeltasAndRestoreExactly() throws {
        let scratch = TemporaryDirectory(prefix: "fk-delta")
        let repository = try Repository.initialize(storage: LocalStorage(root: scratch.appending("repo")), keySource: .keyFile(scratch.appending("k")))
        var snapshots: [Snapshot] = []
        for day in 0..<8 { snapshots.append(try Self.backup(repository, Self.dump(rows: 20_000, day: day))) }
        let first = snapshots[0].summary.bytesStored
        // Every chunk holds a changed row each day, so without deltas each day would cost about one more copy of the
        // dump; with them a day costs a fraction of one (more on a day when a chunk boundary moves: the part of a chunk
        // outside its base is compressed on its own).
        for snapshot in snapshots.dropFirst() {
            #expect(snapshot.summary.bytesStored * 2 < first, "first day \(first) bytes, a later day \(snapshot.summary.bytesStored)")
        }
        #expect(!repository.indexSnapshot.bases.isEmpty)
        for (day, snapshot) in snapshots.enumerated() {
            #expect(try Self.restored(repository, snapshot, scratch: scratch) == Self.dump(rows: 20_000, day: day), "day \(day)")
        }
        #expect(try repository.verify(readData: true).isHealthy)
    }

    @Test func pruneKeepsTheBasesThatKeptDeltasNeed() throws {
        let scratch = TemporaryDirectory(prefix: "fk-delta-prune")
        let repository = try Repository.initialize(storage: LocalStorage(root: scratch.appending("repo")), keySource: .keyFile(scratch.appending("k")))
        for day in 0..<6 { _ = try Self.backup(repository, Self.dump(rows: 8_000, day: day)) }
        let report = try repository.prune(policy: { _ in RetentionPolicy(keepLast: 2) }, dryRun: false)
        #expect(report.removedSnapshots.count == 4)
        let reopened = try Repository.open(storage: LocalStorage(root: scratch.appending("repo")), keySource: .keyFile(scratch.appending("k")))
        #expect(try reopened.verify(readData: true).isHealthy)
        let latest = try #require(try reopened.snapshots().last)
        #expect(try Self.restored(reopened, latest, scratch: scratch) == Self.dump(rows: 8_000, day: 5))
        // The next day still builds on what is left.
        let next = try Self.backup(reopened, Self.dump(rows: 8_000, day: 6))
        #expect(try Self.restored(reopened, next, scratch: scratch) == Self.dump(rows: 8_000, day: 6))
    }

    @Test func aDamagedBaseDamagesEveryDumpBuiltOnIt() throws {
        let scratch = TemporaryDirectory(prefix: "fk-delta-damage")
        let storage = LocalStorage(root: scratch.appending("repo"))
        let repository = try Repository.initialize(storage: storage, keySource: .keyFile(scratch.appending("k")))
        var snapshots: [Snapshot] = []
        for day in 0..<4 { snapshots.append(try Self.backup(repository, Self.dump(rows: 8_000, day: day))) }
        let index = repository.indexSnapshot
        // A whole (non-delta) blob that the next days' deltas build on: the first day's chunk.
        let base = try #require(index.bases.map(\.base).first { index.bases[$0] == nil })
        let location = try #require(index.blobs[base])
        let path = scratch.appending("repo/" + Repository.packPath(index.packs[Int(location.pack)]))
        var bytes = try #require(FileManager.default.contents(atPath: path))
        bytes[Int(location.offset) + Int(location.length) / 2] ^= 0x20
        try bytes.write(to: URL(fileURLWithPath: path))

        let report = try repository.verify(readData: true)
        #expect(!report.isHealthy)
        for snapshot in snapshots { #expect(report.damagedFiles[snapshot.id] == ["shop.sql"], "\(snapshot.shortID): \(report.damagedFiles)") }
        #expect(throws: RepositoryError.self) { try Self.restored(repository, snapshots[3], scratch: scratch) }
    }

    @Test func deltaChainsStayWithinTheirBound() throws {
        let scratch = TemporaryDirectory(prefix: "fk-delta-depth")
        let repository = try Repository.initialize(storage: LocalStorage(root: scratch.appending("repo")), keySource: .keyFile(scratch.appending("k")))
        var last: Snapshot?
        for day in 0..<(Repository.maximumDeltaDepth + 4) { last = try Self.backup(repository, Self.dump(rows: 1_500, day: day % 100)) }
        let index = repository.indexSnapshot
        let ids = index.blobs.map(\.key)
        let depths = ids.compactMap { index.deltaDepth($0) }
        // Long chains do build (a day whose chunk boundary moved may start one afresh, so not always to the bound),
        // and none goes past the bound.
        let deepest = try #require(depths.max())
        #expect(deepest <= Repository.maximumDeltaDepth)
        #expect(deepest >= Repository.maximumDeltaDepth / 2)
        #expect(depths.count == ids.count, "every chain ends in a whole blob")
        #expect(try Self.restored(repository, try #require(last), scratch: scratch) == Self.dump(rows: 1_500, day: (Repository.maximumDeltaDepth + 3) % 100))
    }

    @Test func aTableThatGrewDoesNotMisalignTheTablesAfterIt() throws {
        let scratch = TemporaryDirectory(prefix: "fk-delta-grow")
        let repository = try Repository.initialize(storage: LocalStorage(root: scratch.appending("repo")), keySource: .keyFile(scratch.appending("k")))
        // orders grows by 2,000 rows overnight (about 140 KiB, more than two chunks); pages (about 1.3 MiB, so some of
        // its chunks lie wholly inside it whatever the chunker seed) is unchanged; the last
        // table (orders again, as a stand-in for customers) has 1% of its rows updated.
        let yesterday = Self.dump(rows: 2_000, day: 0) + Self.pages(rows: 20_000) + Self.dump(rows: 8_000, day: 1)
        let today = Self.dump(rows: 4_000, day: 0) + Self.pages(rows: 20_000) + Self.dump(rows: 8_000, day: 2)
        let first = try Self.backup(repository, yesterday)
        let second = try Self.backup(repository, today)
        #expect(try Self.restored(repository, second, scratch: scratch) == today)
        // The last table's chunks are new every day; re-anchored on the unchanged pages, they are stored as deltas
        // against yesterday's chunks of the same table.
        let tail = Int64(Self.dump(rows: 8_000, day: 2).count)
        _ = first
        let index = repository.indexSnapshot
        let tree = try repository.loadTree(second.tree)
        var offset: Int64 = 0, deltasInTail = 0, chunksInTail = 0
        for id in tree.nodes[0].content {
            let location = try #require(index.blobs[id])
            if offset >= Int64(today.count) - tail {
                chunksInTail += 1
                if index.bases[id] != nil { deltasInTail += 1 }
            }
            offset += Int64(location.rawLength)
        }
        #expect(chunksInTail > 0 && deltasInTail * 2 > chunksInTail, "\(deltasInTail) of \(chunksInTail) chunks of the last table are deltas")
    }
}
