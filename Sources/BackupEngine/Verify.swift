import Crypto
import Foundation
import Zstd

/// What `verify` found. `damagedFiles` maps a snapshot id to the paths whose data is damaged or missing.
public struct VerifyReport: Codable, Sendable {
    public var snapshots = 0
    public var packs = 0
    public var blobsChecked = 0
    public var bytesRead: Int64 = 0
    public var problems: [String] = []
    public var damagedFiles: [String: [String]] = [:]
    public var isHealthy: Bool { problems.isEmpty && damagedFiles.isEmpty }
}

extension Repository {
    /// Checks that every pack the index names exists and is large enough, and that every snapshot's trees and
    /// file contents are reachable. With `readData`, also reads every pack and authenticates every blob.
    public func verify(readData: Bool) throws -> VerifyReport {
        var report = VerifyReport()
        let index = indexSnapshot
        var bad = Set<BlobID>()
        var packEntries: [Int32: [(BlobID, BlobLocation)]] = [:]
        for (id, location) in index.blobs { packEntries[location.pack, default: []].append((id, location)) }
        let decompressor = ZstdDecompressor()
        for (number, pack) in index.packs.enumerated() {
            let entries = packEntries[Int32(number)] ?? []
            let needed = entries.map { Int($0.1.offset + $0.1.length) }.max() ?? 0
            report.packs += 1
            guard let size = try storage.size(Self.packPath(pack)), size >= needed else {
                report.problems.append("pack \(pack.prefix(16)) is missing or truncated")
                bad.formUnion(entries.map(\.0))
                continue
            }
            guard readData else { continue }
            let bytes = try storage.read(Self.packPath(pack))
            report.bytesRead += Int64(bytes.count)
            if SHA256.hex(bytes) != pack { report.problems.append("pack \(pack.prefix(16)) content does not match its name (damaged)") }
            for (id, location) in entries {
                report.blobsChecked += 1
                let sealed = Array(bytes[Int(location.offset)..<Int(location.offset + location.length)])
                if (try? openBlob(sealed, id: id, rawLength: Int(location.rawLength), pack: pack, decompressor: decompressor)) == nil {
                    bad.insert(id)
                }
            }
        }
        if !bad.isEmpty { report.problems.append("\(bad.count) damaged or missing blobs") }
        let (snapshots, damagedSnapshots) = try snapshotsWithDamage()
        for name in damagedSnapshots { report.problems.append("snapshot file \(name.prefix(16)) is damaged") }
        report.snapshots = snapshots.count
        for snapshot in snapshots {
            var damaged: [String] = []
            walk(tree: snapshot.tree, path: "", bad: bad, index: index, into: &damaged)
            if !damaged.isEmpty { report.damagedFiles[snapshot.id] = damaged }
        }
        return report
    }

    private func walk(tree: String, path: String, bad: Set<BlobID>, index: LoadedIndex, into damaged: inout [String]) {
        guard let id = BlobID(hex: tree), !bad.contains(id), index.blobs[id] != nil, let listing = try? loadTree(tree) else {
            damaged.append(path.isEmpty ? "/" : path + "/")
            return
        }
        for node in listing.nodes {
            let child = path.isEmpty ? node.name : path + "/" + node.name
            if let subtree = node.subtree { walk(tree: subtree, path: child, bad: bad, index: index, into: &damaged) }
            for hex in node.content ?? [] {
                guard let blob = BlobID(hex: hex), !bad.contains(blob), index.blobs[blob] != nil else {
                    damaged.append(child)
                    break
                }
            }
        }
    }

    /// Every blob (trees and contents) that the given snapshots reach.
    func reachableBlobs(_ snapshots: [Snapshot]) throws -> Set<BlobID> {
        var used = Set<BlobID>()
        var pending = snapshots.compactMap { BlobID(hex: $0.tree) }
        while let tree = pending.popLast() {
            guard used.insert(tree).inserted else { continue }
            let listing = try loadTree(tree.hex)
            for node in listing.nodes {
                if let subtree = node.subtree.flatMap(BlobID.init(hex:)) { pending.append(subtree) }
                for hex in node.content ?? [] { if let id = BlobID(hex: hex) { used.insert(id) } }
            }
        }
        return used
    }
}
