import Crypto
import Foundation
import Synchronization
import Zstd

/// What `data/` holds, compared with a loaded index.
struct PackInventory {
    /// Packs the index names that are not there (each confirmed by a lookup of its own).
    var missing: [String] = []
    /// Packs there that the index does not name.
    var unindexed: [String] = []
}

/// A pack's own header: its entries, and where its blobs end (the sealed header starts there).
struct PackHeader {
    let entries: [PackEntry]
    let blobsEnd: Int
}

/// A pack's header or trailer that does not authenticate or decode. Kept apart from storage errors: a pack that
/// cannot be read right now (permissions, a dropped connection) must never be taken for a damaged one and rewritten.
struct PackHeaderDamage: Error, CustomStringConvertible {
    let description: String
}

/// What `repairIndex` did.
public struct IndexRepairReport: Codable, Sendable {
    /// Packs whose own header was read: their entries make up the new index.
    public var packsIndexed = 0
    public var blobsIndexed = 0
    /// Old index files replaced (all of them), and those among them that were damaged.
    public var indexFilesReplaced = 0
    public var damagedIndexFiles: [String] = []
    /// Packs the old index named that are gone. Their entries are dropped, so backups store those blobs again.
    public var missingPacks: [String] = []
    /// Packs whose header was damaged, rewritten (their blobs copied as they are) with a new header, from the entries
    /// an intact index file has for them.
    public var packsRewritten: [String] = []
    /// Blobs of those packs that could not be copied (beyond the end of a truncated pack, or not authenticating).
    public var blobsLost = 0
    /// Packs whose header is damaged and that no intact index file describes: nothing in them can be located. They
    /// are left where they are; the next prune deletes them as unindexed packs.
    public var unreadablePacks: [String] = []
}

/// One snapshot that `repairSnapshots` rewrote or removed.
public struct RepairedSnapshot: Codable, Sendable {
    public var snapshot: String
    /// The snapshot written in its place, without the lost files; nil when nothing of it was left (its root listing
    /// is lost), and it was removed.
    public var replacement: String?
    public var tags: [String: String]
    public var time: Date
    /// Every path dropped, printable; a directory whose listing is lost as "path/" (it is kept, empty).
    public var droppedFiles: [String]
}

/// What `repairSnapshots` did.
public struct SnapshotRepairReport: Codable, Sendable {
    public var snapshotsChecked = 0
    /// With `readData`: blobs read back and authenticated.
    public var blobsChecked = 0
    public var repaired: [RepairedSnapshot] = []
    /// Snapshot files that do not authenticate: nothing in them can be read. Removed.
    public var unreadableSnapshotFiles: [String] = []
    /// Packs the index named that are gone; their entries are dropped from the index.
    public var missingPacks: [String] = []
    /// Damaged blobs taken out of the index and of their packs, so the next backup stores them again from the source.
    public var blobsRemoved = 0
    /// Packs rewritten without their damaged blobs, and packs deleted because every blob in them was damaged.
    public var packsRewritten = 0
    public var packsDeleted = 0
}

extension Repository {
    static let packHeaderAAD = Array("fleetkeep pack header".utf8)
    /// The tail of a pack read to find its header: the whole header of most packs fits, so one read per pack.
    static let packTailRead = 64 << 10

    /// Compares `data/` with `index`, one `data/xx` listing at a time (neither the listing nor a set of names is ever
    /// whole in memory): one bit per indexed pack marks the ones found.
    func packInventory(index: LoadedIndex) throws -> PackInventory {
        var inventory = PackInventory()
        var present = [Bool](repeating: false, count: index.packs.count)
        for names in try listPackDirectories() {
            for name in names where name.count == 64 {
                if let number = index.packs.number(of: name) { present[Int(number)] = true } else { inventory.unindexed.append(name) }
            }
        }
        for number in present.indices where !present[number] {
            let name = index.packs[number]
            // Confirmed one by one: a listing that failed must not make packs look lost (a size lookup throws then).
            if try storage.size(Self.packPath(name)) == nil { inventory.missing.append(name) }
        }
        return inventory
    }

    /// The names in each of `data/`'s up to 256 directories. Every backup starts here, so on a cold cache the
    /// directories are listed 8 at a time (each listing waits for the disk), not one after another. A listing that
    /// fails fails the whole inventory, as a serial one did.
    private func listPackDirectories() throws -> [[String]] {
        let directories = try storage.list("data").filter { $0.count == 2 }
        let listed = Mutex<[Int: Result<[String], any Error>]>([:])
        let next = Atomic<Int>(0)
        Repository.onThreads(min(8, directories.count), named: "fk-list") { [storage] _ in
            while true {
                let index = next.add(1, ordering: .relaxed).oldValue
                guard index < directories.count else { return }
                let result = Result { try storage.list("data/" + directories[index]) }
                listed.withLock { $0[index] = result }
            }
        }
        return try listed.withLock { listed in try directories.indices.map { try listed[$0]?.get() ?? [] } }
    }

    /// Deletes the directory caches (`DirectoryCache`): the next backup of every tree loads its old trees again.
    func forgetDirectoryCaches() {
        if let cacheDirectory { DirectoryCache.removeAll(cacheDirectory: cacheDirectory) }
    }

    /// Leaves the packs that are gone out of the loaded index (and its cache), so nothing relies on their blobs:
    /// a backup stores them again from the source (and the snapshots that refer to them are whole again), verify
    /// and repair see them as missing, prune writes an index without them. Returns what `data/` holds.
    @discardableResult
    func excludeMissingPacks() throws -> PackInventory {
        let inventory = try packInventory(index: indexSnapshot)
        if !inventory.missing.isEmpty {
            // Trees recorded by earlier backups may refer to the lost blobs, which the files must now replace.
            forgetDirectoryCaches()
            try reloadIndex(rebuildCache: true, excludedPacks: Set(inventory.missing))
        }
        return inventory
    }

    /// Of the packs no index names, those whose header authenticates: what `repair index` can put back in the
    /// index. One whose header is damaged, or that cannot be read, holds nothing the index could ever name.
    func indexablePacks(_ packs: [String]) -> [String] {
        packs.filter { pack in
            guard let size = try? storage.size(Self.packPath(pack)), size > 0 else { return false }
            return (try? readPackHeader(pack, size: size)) != nil
        }
    }

    /// Reads a pack's header from its tail only: one read of its last 64 KiB and, for a longer header, one more.
    /// Throws `PackHeaderDamage` when the header or trailer is damaged, and a storage error as it is.
    func readPackHeader(_ pack: String, size: Int) throws -> PackHeader {
        let tailLength = min(size, Self.packTailRead)
        let tail = try storage.read(Self.packPath(pack), offset: size - tailLength, length: tailLength)
        return try decodePackHeader(tail: tail, tailStart: size - tailLength, size: size, pack: pack)
    }

    /// Decodes a pack's header from `tail`, the pack's bytes from `tailStart` to its end at `size`, reading the part
    /// of a long header that lies before `tailStart`. Every entry must lie before the header.
    func decodePackHeader(tail: [UInt8], tailStart: Int, size: Int, pack: String) throws -> PackHeader {
        let what = "pack \(pack.prefix(16))"
        guard tail.count >= 4, tailStart >= 0, tailStart + tail.count == size else {
            throw PackHeaderDamage(description: "\(what) is too short to hold a header")
        }
        let length = tail[(tail.count - 4)...].reversed().reduce(0) { $0 << 8 | Int($1) }
        // A sealed header is at least a nonce and a tag long.
        guard length >= 28, length <= size - 4 else {
            throw PackHeaderDamage(description: "\(what) has a damaged trailer: a header of \(length) bytes does not fit in \(size)")
        }
        let headerStart = size - 4 - length
        let sealed = headerStart >= tailStart ? Array(tail[(headerStart - tailStart)..<(tail.count - 4)])
            : try storage.read(Self.packPath(pack), offset: headerStart, length: length)
        guard let plain = try? dataCipher.open(sealed, aad: Self.packHeaderAAD) else {
            throw PackHeaderDamage(description: "\(what) has a damaged header: it does not authenticate")
        }
        var reader = ByteReader(plain, what: "\(what) header")
        guard let entries = try? BinaryCodec.decode(&reader), reader.isAtEnd,
              entries.allSatisfy({ Int($0.offset) + Int($0.length) <= headerStart }) else {
            throw PackHeaderDamage(description: "\(what) has a damaged header: its entries do not fit the pack")
        }
        return PackHeader(entries: entries, blobsEnd: headerStart)
    }

    // MARK: repair index

    /// Rebuilds the index from the packs' own headers (a pack describes itself, see docs/REPOSITORY.md), under an
    /// exclusive lease. Every pack in `data/` is indexed as its header says; a pack whose header is damaged is
    /// rewritten with a new header from what an intact index file says of it (each of its blobs copied as it is
    /// once it authenticates); packs that are gone drop out. Then the old index files (damaged ones too) are
    /// deleted. New packs and index files are written before anything is deleted, so a kill at any point leaves a
    /// repository whose old and new index files both name packs that exist.
    public func repairIndex() throws -> IndexRepairReport {
        try withLock(exclusive: true) {
            // A repair may drop blobs that trees recorded by earlier backups refer to.
            forgetDirectoryCaches()
            var report = IndexRepairReport()
            let oldIndexFiles = try storage.list("index")
            // What the intact index files say, for the packs whose own header turns out to be damaged.
            try reloadIndex(rebuildCache: true)
            let before = indexSnapshot
            report.damagedIndexFiles = before.damagedIndexFiles
            var present = [Bool](repeating: false, count: before.packs.count)
            var damagedHeaders = Set<String>()
            let writer = PackWriter(storage: storage, cipher: dataCipher)
            // The new index goes out in files of about `foldLimit` entries, so it is never whole in memory.
            var pending: [(pack: String, entries: [PackEntry])] = []
            var pendingEntries = 0
            func flush() throws {
                try writeIndex(pending + (try writer.finish()))
                writer.markIndexed()
                pending = []
                pendingEntries = 0
            }
            var rewritten: [String] = []
            do {
                for directory in try storage.list("data") where directory.count == 2 {
                    for name in try storage.list("data/" + directory) where name.count == 64 && name.hasPrefix(directory) && BlobID(hex: name) != nil {
                        if let number = before.packs.number(of: name) { present[Int(number)] = true }
                        guard let size = try storage.size(Self.packPath(name)) else { continue }
                        do {
                            let header = try readPackHeader(name, size: size)
                            report.packsIndexed += 1
                            report.blobsIndexed += header.entries.count
                            pending.append((name, header.entries))
                            pendingEntries += header.entries.count
                            if pendingEntries >= foldLimit { try flush() }
                        } catch is PackHeaderDamage {
                            damagedHeaders.insert(name)
                        }
                    }
                }
                if !damagedHeaders.isEmpty {
                    try before.forEachPack(limit: foldLimit) { number, entries in
                        let pack = before.packs[Int(number)]
                        guard damagedHeaders.contains(pack), !entries.isEmpty, let size = try self.storage.size(Self.packPath(pack)) else { return }
                        // Each stored range once, with the entries that name it (a group's members share one).
                        for (_, blobs) in Dictionary(grouping: entries, by: { $0.location.offset }).sorted(by: { $0.key < $1.key }) {
                            let location = blobs[0].location
                            guard Int(location.offset) + Int(location.length) <= size else {
                                report.blobsLost += blobs.count
                                continue
                            }
                            let sealed = try self.storage.read(Self.packPath(pack), offset: Int(location.offset), length: Int(location.length))
                            guard (try? self.dataCipher.open(sealed)) != nil else {
                                report.blobsLost += blobs.count
                                continue
                            }
                            try writer.append(sealed: sealed, kind: location.kind, entries: blobs.map { before.entry($0.id, $0.location) })
                            pendingEntries += blobs.count
                        }
                        rewritten.append(pack)
                        if pendingEntries >= self.foldLimit { try flush() }
                    }
                }
                try flush()
            } catch {
                writer.abandon()
                throw error
            }
            report.packsRewritten = rewritten
            report.unreadablePacks = damagedHeaders.subtracting(rewritten).sorted()
            for number in present.indices where !present[number] {
                let name = before.packs[number]
                if try storage.size(Self.packPath(name)) == nil { report.missingPacks.append(name) }
            }
            for name in oldIndexFiles { try storage.remove("index/" + name) }
            report.indexFilesReplaced = oldIndexFiles.count
            for pack in rewritten { try storage.remove(Self.packPath(pack)) }
            try reloadIndex(rebuildCache: true)
            return report
        }
    }

    // MARK: repair snapshots

    /// Rewrites every snapshot that refers to lost data without the lost files, under an exclusive lease: a file
    /// with a blob that is missing or damaged is dropped, a directory whose listing is lost is kept empty, a hard
    /// link to a dropped file is dropped, and every dropped path is named in the report. The new snapshot (same
    /// time and tags, so retention and the next backup's choice of parent are unchanged) is written before the old
    /// one is removed; a snapshot whose root listing is lost is removed. Snapshot files that do not authenticate
    /// are removed too.
    ///
    /// Then the damaged blobs are taken out of the index and of their packs (each such pack rewritten without them),
    /// and packs that are gone drop out of the index: from then on backups no longer deduplicate against them, so
    /// the next backup stores them again from the source wherever the source still has them.
    ///
    /// Blobs that are missing or in a truncated pack are found by the structure check; with `readData` every blob
    /// is also read back and authenticated, as by `verify(readData: true)`. Refuses while an index file is damaged:
    /// the blobs only it lists would look missing, and their files would be dropped (`repairIndex` first).
    public func repairSnapshots(readData: Bool) throws -> SnapshotRepairReport {
        try withLock(exclusive: true) {
            // A repair may drop blobs that trees recorded by earlier backups refer to.
            forgetDirectoryCaches()
            var report = SnapshotRepairReport()
            let oldIndexFiles = try storage.list("index")
            try reloadIndex(rebuildCache: true)
            let damagedFiles = damagedIndexFiles
            guard damagedFiles.isEmpty else {
                throw RepositoryError("index file \(damagedFiles.map { String($0.prefix(16)) }.joined(separator: ", ")) is damaged, so the blobs only "
                    + "it lists look missing and their files would be dropped; run `fleetkeep-agent repair index` first")
            }
            report.missingPacks = try excludeMissingPacks().missing
            let index = indexSnapshot
            let decompressor = ZstdDecompressor()
            var checks = VerifyReport()
            let bad = try damagedBlobs(index: index, readData: readData, decompressor: decompressor, report: &checks)
            report.blobsChecked = checks.blobsChecked
            let (snapshots, unreadable) = try snapshotsWithDamage(useCache: false)
            report.snapshotsChecked = snapshots.count + unreadable.count

            // Damaged blobs, and the listings found damaged on the way: left out of the new listings, then purged.
            var unusable = bad
            // New listings go to packs of their own; a listing is stored again when the one the index has is unusable.
            let unusableForWriter = Mutex(bad)
            let writer = PackWriter(storage: storage, cipher: dataCipher,
                                    isIndexed: { [self] id in !unusableForWriter.withLock { $0.contains(id) } && isIndexed(id) })
            let compressor = ZstdCompressor(level: CompressorPool.fileLevel, checksum: false)
            var clean = BlobMarks(index: index)
            var replacements: [(old: Snapshot, new: Snapshot?, dropped: [String])] = []
            do {
                for snapshot in snapshots {
                    var rewrite = SnapshotRewrite()
                    let result = try BlobID(hex: snapshot.tree).map {
                        try repairListing($0, path: "", bad: unusable, index: index, clean: &clean, rewrite: &rewrite,
                                          writer: writer, compressor: compressor, decompressor: decompressor).result
                    } ?? .lost
                    if !rewrite.damagedListings.isEmpty {
                        unusable.formUnion(rewrite.damagedListings)
                        unusableForWriter.withLock { $0.formUnion(rewrite.damagedListings) }
                    }
                    switch result {
                    case .unchanged:
                        continue
                    case .lost:
                        replacements.append((snapshot, nil, ["/"]))
                    case .replaced(let tree):
                        var repaired = snapshot
                        repaired.tree = tree.hex
                        repaired.summary.errors.append("repaired on \(UTCTime.format(Date())): \(rewrite.dropped.count) paths dropped, their data was lost")
                        replacements.append((snapshot, repaired, rewrite.dropped))
                    }
                }
                // The new listings are in packs and an index before any snapshot refers to them.
                try writeIndex(try writer.finish())
                writer.markIndexed()
            } catch {
                writer.abandon()
                throw error
            }
            for (old, new, dropped) in replacements {
                var entry = RepairedSnapshot(snapshot: old.id, replacement: nil, tags: old.tags, time: old.time, droppedFiles: dropped)
                if let new { entry.replacement = try writeSnapshot(new) }
                try storage.remove("snapshots/" + old.id)
                report.repaired.append(entry)
            }
            for name in unreadable {
                // Read again, so that only a file that was read whole and does not authenticate is removed.
                let sealed = try storage.read("snapshots/" + name)
                guard (try? dataCipher.open(sealed, aad: Self.snapshotAAD)) == nil else { continue }
                try storage.remove("snapshots/" + name)
                report.unreadableSnapshotFiles.append(name)
            }
            if !unusable.isEmpty || !report.missingPacks.isEmpty {
                try purge(unusable, index: index, oldIndexFiles: oldIndexFiles, report: &report)
            }
            try reloadIndex(rebuildCache: true)
            return report
        }
    }

    /// What became of one listing in `repairSnapshots`.
    private enum ListingRepair {
        case unchanged
        case replaced(BlobID)
        case lost
    }

    /// The paths dropped from one snapshot so far, in walk order (the order the backup wrote them, so a hard link's
    /// target is always seen before the link).
    private struct SnapshotRewrite {
        var dropped: [String] = []
        var droppedFiles = Set<String>()
        var lostDirectories: [String] = []
        /// Listings the index has that do not load.
        var damagedListings = Set<BlobID>()

        mutating func drop(_ path: String) {
            dropped.append(FileName.printable(path))
            droppedFiles.insert(path)
        }

        mutating func lose(directory path: String) {
            dropped.append(FileName.printable(path) + "/")
            lostDirectories.append(path)
        }

        func isLost(_ path: String) -> Bool { droppedFiles.contains(path) || lostDirectories.contains { path.hasPrefix($0 + "/") } }
    }

    /// Rewrites the listing `id` (at `path`) and those below it without what is lost. `clean` remembers listings
    /// with nothing lost below and no hard links (whether a hard link survives depends on the rest of the snapshot),
    /// so the listings snapshots share are looked at once.
    private func repairListing(_ id: BlobID, path: String, bad: Set<BlobID>, index: LoadedIndex, clean: inout BlobMarks,
                               rewrite: inout SnapshotRewrite, writer: PackWriter, compressor: ZstdCompressor,
                               decompressor: ZstdDecompressor) throws -> (result: ListingRepair, hasHardLinks: Bool) {
        if clean.contains(id) { return (.unchanged, false) }
        guard !bad.contains(id), index.blobs[id] != nil else { return (.lost, false) }
        guard let listing = try? loadTree(id, decompressor: decompressor) else {
            // Damaged in place (found without reading all data): taken out of the index with the other damaged blobs.
            rewrite.damagedListings.insert(id)
            return (.lost, false)
        }
        var nodes: [TreeNode] = []
        var changed = false, hasHardLinks = false
        for var node in listing.nodes {
            let child = path.isEmpty ? node.name : path + "/" + node.name
            if node.kind == .hardlink {
                hasHardLinks = true
                if let target = node.target, rewrite.isLost(target) {
                    rewrite.drop(child)
                    changed = true
                    continue
                }
            }
            if let subtree = node.subtree {
                let (result, links) = try repairListing(subtree, path: child, bad: bad, index: index, clean: &clean, rewrite: &rewrite,
                                                        writer: writer, compressor: compressor, decompressor: decompressor)
                hasHardLinks = hasHardLinks || links
                switch result {
                case .unchanged: break
                case .replaced(let new):
                    node.subtree = new
                    changed = true
                case .lost:
                    node.subtree = nil
                    rewrite.lose(directory: child)
                    changed = true
                }
            }
            if node.content.contains(where: { bad.contains($0) || index.blobs[$0] == nil }) {
                rewrite.drop(child)
                changed = true
                continue
            }
            nodes.append(node)
        }
        guard changed else {
            if !hasHardLinks { clean.insert(id) }
            return (.unchanged, hasHardLinks)
        }
        let bytes = Tree(nodes: nodes).encoded()
        let newID = blobID(bytes)
        if writer.reserve(newID) {
            _ = try bytes.withUnsafeBytes { try writer.add(id: newID, kind: .tree, plaintext: $0, compressor: compressor) }
        }
        return (.replaced(newID), hasHardLinks)
    }

    /// Writes a new index without the `bad` blobs (and without the packs `index` already leaves out), rewriting each
    /// pack that holds some of them without them (the other blobs copied still sealed) and deleting packs with
    /// nothing else; then deletes `oldIndexFiles` and those packs. New packs and index come first, as in prune.
    private func purge(_ bad: Set<BlobID>, index: LoadedIndex, oldIndexFiles: [String], report: inout SnapshotRepairReport) throws {
        let writer = PackWriter(storage: storage, cipher: dataCipher)
        var pending: [(pack: String, entries: [PackEntry])] = []
        var pendingEntries = 0
        var replaced: [String] = []
        func flush() throws {
            try writeIndex(pending + (try writer.finish()))
            writer.markIndexed()
            pending = []
            pendingEntries = 0
        }
        do {
            try index.forEachPack(limit: foldLimit) { number, entries in
                let pack = index.packs[Int(number)]
                let good = entries.filter { !bad.contains($0.id) }
                if good.count == entries.count {
                    pending.append((pack, entries.map { index.entry($0.id, $0.location) }))
                } else {
                    report.blobsRemoved += entries.count - good.count
                    replaced.append(pack)
                    if good.isEmpty {
                        report.packsDeleted += 1
                    } else {
                        report.packsRewritten += 1
                        let bytes = try self.storage.read(Self.packPath(pack))
                        for (_, blobs) in Dictionary(grouping: good, by: { $0.location.offset }).sorted(by: { $0.key < $1.key }) {
                            let location = blobs[0].location
                            let end = Int(location.offset) + Int(location.length)
                            guard end <= bytes.count else { continue }
                            try writer.append(sealed: Array(bytes[Int(location.offset)..<end]), kind: location.kind,
                                              entries: blobs.map { index.entry($0.id, $0.location) })
                        }
                    }
                }
                pendingEntries += good.count
                if pendingEntries >= self.foldLimit { try flush() }
            }
            try flush()
        } catch {
            writer.abandon()
            throw error
        }
        for name in oldIndexFiles { try storage.remove("index/" + name) }
        for pack in replaced { try storage.remove(Self.packPath(pack)) }
    }
}
