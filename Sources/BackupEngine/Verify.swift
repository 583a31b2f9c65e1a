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

    public var snapshots = 0
    public var packs = 0
    public var blobsChecked = 0
    public var bytesRead: Int64 = 0
    public var problems: [String] = []
    public var damagedFiles: [String: [String]] = [:]
    /// Packs in `data/` that no index names: left by an interrupted backup, harmless, removed by the next prune.
    public var unindexedPacks = 0
    /// Packs whose data was read (all with `readData`, or the chosen part).
    public var packsRead = 0
    public var isHealthy: Bool { problems.isEmpty && damagedFiles.isEmpty }
}

extension Repository {
    /// Checks that every pack the index names exists and is large enough, and that every snapshot's trees and
    /// file contents are reachable. With `readData`, also reads every pack, opens its header and authenticates
    /// every blob (decrypt, decompress, HMAC), so a flipped byte is found and attributed to snapshots and files.
    public func verify(readData: Bool, readPacks: ((String) -> Bool)? = nil) throws -> VerifyReport {
        var report = VerifyReport()
        // Verify trusts nothing derived: the index cache is rebuilt from the index files themselves.
        try reloadIndex(rebuildCache: true)
        let index = indexSnapshot
        var bad = Set<BlobID>()
        let decompressor = ZstdDecompressor()
        try index.forEachPack { number, entries in
            let pack = index.packs[Int(number)]
            let needed = entries.map { Int($0.1.offset + $0.1.length) }.max() ?? 0
            report.packs += 1
            guard let size = try self.storage.size(Self.packPath(pack)), size >= needed else {
                report.problems.append("pack \(pack.prefix(16)) is missing or truncated")
                bad.formUnion(entries.map(\.0))
                return
            }
            guard readData, readPacks?(pack) ?? true else { return }
            report.packsRead += 1
            let bytes: [UInt8]
            do {
                bytes = try self.storage.read(Self.packPath(pack))
            } catch {
                report.problems.append("pack \(pack.prefix(16)) cannot be read: \(error)")
                bad.formUnion(entries.map(\.0))
                return
            }
            report.bytesRead += Int64(bytes.count)
            if (try? self.packHeader(bytes, pack: pack)) == nil {
                report.problems.append("pack \(pack.prefix(16)) has a damaged header (its blobs are checked one by one)")
            }
            // A delta opens only with its base's plaintext: deltas are checked below, chain by chain. Blobs go in
            // offset order, so a group's members come together and the group is opened once and held alone.
            var group: (offset: UInt32, plaintext: [UInt8]?)?
            for (id, location) in entries.sorted(by: { $0.1.offset < $1.1.offset }) where index.bases[id] == nil {
                report.blobsChecked += 1
                let range = Int(location.offset)..<Int(location.offset + location.length)
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
        if !bad.isEmpty { report.problems.append("\(bad.count) damaged or missing blobs") }
        report.unindexedPacks = try unindexedPackNames(index: index).count
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
    /// copy). Listed one `data/xx` directory at a time and checked against the index's own lookup table, so neither
    /// the listing nor a set of indexed names is ever whole in memory.
    func unindexedPackNames(index: LoadedIndex) throws -> [String] {
        var unindexed: [String] = []
        for directory in try storage.list("data") where directory.count == 2 {
            for name in try storage.list("data/" + directory) where name.count == 64 && index.packs.number(of: name) == nil {
                unindexed.append(name)
            }
        }
        return unindexed
    }

    /// Decrypts a pack's own header (the trailer written after its blobs).
    func packHeader(_ bytes: [UInt8], pack: String) throws -> [PackEntry] {
        var reader = ByteReader(bytes, offset: max(bytes.count - 4, 0), what: "pack \(pack.prefix(16))")
        let length = Int(try reader.uint32())
        guard length + 4 <= bytes.count else { throw reader.damaged() }
        let sealed = bytes[(bytes.count - 4 - length)..<(bytes.count - 4)]
        let plain = try AES256GCM.open(Array(sealed), key: keys.dataKey, aad: Array("fleetkeep pack header".utf8))
        var headerReader = ByteReader(plain, what: "pack \(pack.prefix(16)) header")
        return try BinaryCodec.decode(&headerReader)
    }

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
    func reachableBlobs(_ snapshots: [Snapshot], index: LoadedIndex) throws -> BlobMarks {
        var used = BlobMarks(index: index)
        var pending = snapshots.compactMap { BlobID(hex: $0.tree) }
        let decompressor = ZstdDecompressor()
        while let tree = pending.popLast() {
            guard used.insert(tree) else { continue }
            let listing = try loadTree(tree, decompressor: decompressor)
            for node in listing.nodes {
                if let subtree = node.subtree { pending.append(subtree) }
                used.formUnion(node.content)
            }
        }
        // A delta needs its chain of bases, even when no kept snapshot names them any more.
        for (delta, base) in index.bases where used.contains(delta) {
            var next: BlobID? = base
            while let current = next, used.insert(current) { next = index.bases[current] }
        }
        return used
    }
}
