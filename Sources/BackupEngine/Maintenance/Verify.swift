import Crypto
import Foundation
import Zstd

/// What `verify` found. `damagedFiles` maps a snapshot id to the paths whose data is damaged or missing
/// (a directory whose listing is lost is reported as "path/").
public struct VerifyReport: Codable, Sendable {
    /// Part `part` (0..<parts) of the packs, by the first 8 hex digits of their names: reading one part a day over
    /// `parts` days reads every pack once.
    public static func packIsInPart(_ pack: String, part: Int, of parts: Int) -> Bool {
        guard parts > 1 else { return true }
        guard let value = UInt32(pack.prefix(8), radix: 16) else { return part == 0 }
        return Int(value % UInt32(parts)) == part
    }

    /// Packs whose data was read (all with `readData`, or the chosen part).
    public var packsRead = 0
    public var snapshots = 0
    public var packs = 0
    public var blobsChecked = 0
    public var bytesRead: Int64 = 0
    public var problems: [String] = []
    public var damagedFiles: [String: [String]] = [:]
    /// Packs in `data/` that no index names: left by an interrupted backup, harmless, removed by the next prune.
    public var unindexedPacks = 0
    /// Of those, the ones whose header authenticates, which `repairIndex` can put back in the index (an index file
    /// may have been lost). The others hold nothing usable.
    public var indexableUnindexedPacks = 0
    /// Index files that do not authenticate. They are skipped, so the blobs only they list look missing; `repairIndex`
    /// rebuilds the index from the packs' own headers.
    public var damagedIndexFiles: [String] = []
    /// Packs the index names that are gone: their blobs are lost (a backup stores again what the source still has).
    public var missingPacks: [String] = []
    /// Packs whose own header (the trailer after their blobs) is damaged or disagrees with the index. Their blobs
    /// are still found through the index; `repairIndex` rewrites these packs with a sound header.
    public var damagedPackHeaders: [String] = []
    public var isHealthy: Bool { problems.isEmpty && damagedFiles.isEmpty }
}

extension Repository {
    /// Checks that every pack the index names exists, is large enough and has a header that authenticates and
    /// agrees with the index (read from the pack's last bytes), and that every snapshot's trees and file contents
    /// are reachable. With `readData`, also reads every pack whole and authenticates every blob (decrypt,
    /// decompress, HMAC), so a flipped byte anywhere is found and attributed to snapshots and files.
    /// A damaged index file is reported (and skipped), never a reason to refuse.
    /// With `readPacks`, only the packs it selects are read whole (a rotating part, so a daily verify reads every
    /// pack over a week).
    public func verify(readData: Bool, readPacks: ((String) -> Bool)? = nil) throws -> VerifyReport {
        var report = VerifyReport()
        // Verify trusts nothing derived: the index cache is rebuilt from the index files themselves.
        try reloadIndex(rebuildCache: true)
        report.damagedIndexFiles = damagedIndexFiles
        for name in report.damagedIndexFiles {
            report.problems.append("index file \(name.prefix(16)) is damaged (it does not authenticate) and was skipped, so the blobs only it "
                + "lists look missing; `repair index` rebuilds the index from the packs")
        }
        let inventory = try excludeMissingPacks()
        report.missingPacks = inventory.missing
        for pack in inventory.missing { report.problems.append("pack \(pack.prefix(16)) is missing: the blobs in it are lost") }
        report.unindexedPacks = inventory.unindexed.count
        report.indexableUnindexedPacks = indexablePacks(inventory.unindexed).count
        let index = indexSnapshot
        let decompressor = ZstdDecompressor()
        let bad = try damagedBlobs(index: index, readData: readData, readPacks: readPacks, decompressor: decompressor, report: &report)
        if !bad.isEmpty { report.problems.append("\(bad.count) damaged blobs") }
        let (snapshots, damagedSnapshots) = try snapshotsWithDamage(useCache: false)
        for name in damagedSnapshots { report.problems.append("snapshot file \(name.prefix(16)) is damaged") }
        report.snapshots = snapshots.count
        // One bit per indexed blob: the set of clean listings no longer grows with the repository's history.
        var clean = BlobMarks(index: index)
        for snapshot in snapshots {
            var damaged: [String] = []
            guard let root = BlobID(hex: snapshot.tree) else {
                report.damagedFiles[snapshot.id] = ["/"]
                continue
            }
            _ = walk(tree: root, path: "", bad: bad, index: index, clean: &clean, decompressor: decompressor, into: &damaged)
            if !damaged.isEmpty { report.damagedFiles[snapshot.id] = damaged }
        }
        return report
    }

    /// The indexed blobs that cannot be read back: every blob of a truncated pack, and with `readData` every blob
    /// that does not authenticate; a delta is as damaged as any blob down its chain, and lost if its chain breaks.
    /// Also checks each pack's header against the index (from the pack's tail, or from the whole pack with
    /// `readData`). Problems go into `report`.
    func damagedBlobs(index: LoadedIndex, readData: Bool, readPacks: ((String) -> Bool)? = nil, decompressor: ZstdDecompressor,
                      report: inout VerifyReport) throws -> Set<BlobID> {
        var bad = Set<BlobID>()
        try index.forEachPack { number, entries in
            let pack = index.packs[Int(number)]
            report.packs += 1
            guard let size = try self.storage.size(Self.packPath(pack)) else {
                report.problems.append("pack \(pack.prefix(16)) is missing: the blobs in it are lost")
                bad.formUnion(entries.map(\.0))
                return
            }
            // Added as Int: offsets and lengths come from the repository and must not overflow.
            let beyond = entries.filter { Int($0.1.offset) + Int($0.1.length) > size }
            if !beyond.isEmpty {
                report.problems.append("pack \(pack.prefix(16)) is truncated: \(beyond.count) blobs lie beyond its end")
                bad.formUnion(beyond.map(\.0))
            }
            var whole: [UInt8]?
            if readData, readPacks?(pack) ?? true {
                report.packsRead += 1
                do {
                    whole = try self.storage.read(Self.packPath(pack))
                } catch {
                    report.problems.append("pack \(pack.prefix(16)) cannot be read: \(error)")
                    bad.formUnion(entries.map(\.0))
                    return
                }
                report.bytesRead += Int64(size)
            }
            do {
                if let problem = try self.packHeaderProblem(pack, size: size, whole: whole, entries: entries, index: index) {
                    report.problems.append(problem)
                    report.damagedPackHeaders.append(pack)
                }
            } catch {
                report.problems.append("the header of pack \(pack.prefix(16)) cannot be read: \(error)")
            }
            guard let bytes = whole else { return }
            // A delta opens only with its base's plaintext: deltas are checked below, chain by chain. Blobs go in
            // offset order, so a group's members come together and the group is opened once and held alone.
            var group: (offset: UInt32, plaintext: [UInt8]?)?
            for (id, location) in entries.sorted(by: { $0.1.offset < $1.1.offset }) where index.bases[id] == nil && !bad.contains(id) {
                report.blobsChecked += 1
                let range = Int(location.offset)..<(Int(location.offset) + Int(location.length))
                guard range.upperBound <= bytes.count else {
                    bad.insert(id)
                    continue
                }
                let ok = bytes.withUnsafeBytes { raw -> Bool in
                    let sealed = UnsafeRawBufferPointer(rebasing: raw[range])
                    guard location.inner != nil else {
                        return (try? self.openBlob(sealed, id: id, location: location, pack: pack, decompressor: decompressor)) != nil
                    }
                    if group?.offset != location.offset {
                        group = (location.offset, try? self.openGroup(sealed, pack: pack, decompressor: decompressor))
                    }
                    guard let plaintext = group?.plaintext else { return false }
                    return (try? self.groupMember(id, of: plaintext, location: location, pack: pack)) != nil
                }
                if !ok { bad.insert(id) }
            }
        }
        if readData { report.blobsChecked += checkDeltas(index: index, bad: &bad, decompressor: decompressor) }
        // A delta is as damaged as any blob down its chain, and lost if its chain breaks.
        for (id, _) in index.bases where !bad.contains(id) {
            if index.deltaChain(id)?.contains(where: bad.contains) ?? true { bad.insert(id) }
        }
        return bad
    }

    /// What is wrong with a pack's own header, nil when it authenticates and lists every entry the index has for the
    /// pack exactly as the index does (it may list more: prune drops dead entries from the index only). Throws when
    /// the pack cannot be read.
    private func packHeaderProblem(_ pack: String, size: Int, whole: [UInt8]?, entries: [(id: BlobID, location: BlobLocation)],
                                   index: LoadedIndex) throws -> String? {
        let header: PackHeader
        do {
            header = try whole.map { try decodePackHeader(tail: $0, tailStart: 0, size: $0.count, pack: pack) } ?? readPackHeader(pack, size: size)
        } catch let error as PackHeaderDamage {
            return "pack \(pack.prefix(16)) has a damaged header or trailer (\(error)); its blobs are still found through the index, "
                + "and `repair index` rewrites the pack with a sound header"
        }
        let listed = Dictionary(header.entries.map { ($0.id, $0) }, uniquingKeysWith: { first, _ in first })
        for (id, location) in entries {
            guard let entry = listed[id], entry.offset == location.offset, entry.length == location.length,
                  entry.rawLength == location.rawLength, entry.kind == location.kind, entry.compressed == location.compressed,
                  entry.inner == location.inner, entry.base == index.bases[id] else {
                return "pack \(pack.prefix(16)) has a header that does not match the index (blob \(id)); "
                    + "`repair index` rebuilds the index from the packs"
            }
        }
        return nil
    }

    /// Checks every delta blob from the whole blob at the root of its chain outwards, so each blob is decoded once
    /// (decoding each delta through its whole chain would cost depth² decodes per chain). Memory: one plaintext per
    /// level of the chain being walked. Returns how many deltas were checked; damaged ones go into `bad`.
    private func checkDeltas(index: LoadedIndex, bad: inout Set<BlobID>, decompressor: ZstdDecompressor) -> Int {
        var dependents: [BlobID: [BlobID]] = [:]
        for (delta, base) in index.bases { dependents[base, default: []].append(delta) }
        var checked = 0
        var pending: [(id: BlobID, basePlaintext: [UInt8])] = []
        for root in dependents.keys where index.bases[root] == nil && index.blobs[root] != nil && !bad.contains(root) {
            guard let plaintext = try? loadBlob(root, decompressor: decompressor) else { bad.insert(root); continue }
            for delta in dependents[root] ?? [] { pending.append((delta, plaintext)) }
            while let (id, basePlaintext) = pending.popLast() {
                checked += 1
                guard let location = index.blobs[id],
                      let sealed = try? storage.read(Self.packPath(index.packs[Int(location.pack)]), offset: Int(location.offset), length: Int(location.length)),
                      let plaintext = try? openBlob(sealed, id: id, location: location, pack: index.packs[Int(location.pack)],
                                                    decompressor: decompressor, prefix: basePlaintext) else {
                    bad.insert(id)
                    continue
                }
                for next in dependents[id] ?? [] { pending.append((next, plaintext)) }
            }
        }
        return checked
    }

    /// Names of the pack files present in `data/` that `index` does not name (left by an interrupted backup or
    /// copy).
    func unindexedPackNames(index: LoadedIndex) throws -> [String] { try packInventory(index: index).unindexed }

    /// Walks one tree, appending damaged paths; returns whether the tree is clean. Clean subtrees are remembered,
    /// so the many snapshots sharing most of their trees are cheap to check.
    private func walk(tree: BlobID, path: String, bad: Set<BlobID>, index: LoadedIndex, clean: inout BlobMarks,
                      decompressor: ZstdDecompressor, into damaged: inout [String]) -> Bool {
        if clean.contains(tree) { return true }
        guard !bad.contains(tree), index.blobs[tree] != nil, let listing = try? loadTree(tree, decompressor: decompressor) else {
            damaged.append(path.isEmpty ? "/" : path + "/")
            return false
        }
        var isClean = true
        for node in listing.nodes {
            let child = path.isEmpty ? node.name : path + "/" + node.name
            if let subtree = node.subtree, !walk(tree: subtree, path: child, bad: bad, index: index, clean: &clean, decompressor: decompressor, into: &damaged) {
                isClean = false
            }
            if node.content.contains(where: { bad.contains($0) || index.blobs[$0] == nil }) {
                damaged.append(FileName.printable(child))
                isClean = false
            }
        }
        if isClean { clean.insert(tree) }
        return isClean
    }

    /// Every blob (trees and contents) that the given snapshots reach, as marks on `index` (one bit per blob).
    /// Throws when a listing cannot be read.
    func reachableBlobs(_ snapshots: [Snapshot], index: LoadedIndex) throws -> BlobMarks {
        var unreadable: [String] = []
        let used = try reachableBlobs(snapshots, index: index, unreadable: &unreadable, throwing: true)
        return used
    }

    /// Like `reachableBlobs`, but a listing that cannot be read is skipped: the ids of the snapshots with such a
    /// listing are returned with the marks (the blobs below that listing cannot be known).
    func reachableBlobsSkippingUnreadable(_ snapshots: [Snapshot], index: LoadedIndex) throws -> (used: BlobMarks, unreadable: [String]) {
        var unreadable: [String] = []
        let used = try reachableBlobs(snapshots, index: index, unreadable: &unreadable, throwing: false)
        return (used, unreadable)
    }

    private func reachableBlobs(_ snapshots: [Snapshot], index: LoadedIndex, unreadable: inout [String], throwing: Bool) throws -> BlobMarks {
        var used = BlobMarks(index: index)
        let decompressor = ZstdDecompressor()
        var unreadableTrees = Set<BlobID>()
        for snapshot in snapshots {
            var pending = BlobID(hex: snapshot.tree).map { [$0] } ?? []
            var complete = pending.count == 1
            while let tree = pending.popLast() {
                guard used.insert(tree) else {
                    if unreadableTrees.contains(tree) { complete = false }
                    continue
                }
                let listing: Tree
                do {
                    listing = try loadTree(tree, decompressor: decompressor)
                } catch {
                    if throwing { throw error }
                    unreadableTrees.insert(tree)
                    complete = false
                    continue
                }
                for node in listing.nodes {
                    if let subtree = node.subtree { pending.append(subtree) }
                    used.formUnion(node.content)
                }
            }
            if !complete { unreadable.append(snapshot.id) }
        }
        // A delta needs its chain of bases, even when no kept snapshot names them any more.
        for (delta, base) in index.bases where used.contains(delta) {
            var next: BlobID? = base
            while let current = next, used.insert(current) { next = index.bases[current] }
        }
        return used
    }
}
