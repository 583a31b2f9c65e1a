import Foundation

/// How many snapshots to keep: the newest `keepLast`, plus the newest one of each of the last `keepDaily` days,
/// `keepWeekly` ISO weeks and `keepMonthly` months that have snapshots (as restic and borg count them).
public struct RetentionPolicy: Codable, Sendable, Equatable {
    public var keepLast: Int
    public var keepDaily: Int
    public var keepWeekly: Int
    public var keepMonthly: Int

    public init(keepLast: Int = 0, keepDaily: Int = 0, keepWeekly: Int = 0, keepMonthly: Int = 0) {
        self.keepLast = keepLast
        self.keepDaily = keepDaily
        self.keepWeekly = keepWeekly
        self.keepMonthly = keepMonthly
    }

    /// Keeps everything when nothing is configured: an empty policy must never delete all backups.
    public var keepsEverything: Bool { keepLast == 0 && keepDaily == 0 && keepWeekly == 0 && keepMonthly == 0 }

    /// The ids to keep among `snapshots` (one group: same account, kind and host).
    public func select(_ snapshots: [Snapshot]) -> Set<String> {
        if keepsEverything { return Set(snapshots.map(\.id)) }
        let newestFirst = snapshots.sorted { ($0.time, $0.id) > ($1.time, $1.id) }
        var keep = Set(newestFirst.prefix(keepLast).map(\.id))
        var calendar = Calendar(identifier: .iso8601)
        calendar.timeZone = TimeZone(identifier: "UTC")!
        func bucket(_ count: Int, _ key: (Date) -> String) {
            var seen = Set<String>()
            for snapshot in newestFirst where seen.count < count {
                if seen.insert(key(snapshot.time)).inserted { keep.insert(snapshot.id) }
            }
        }
        bucket(keepDaily) { let c = calendar.dateComponents([.year, .month, .day], from: $0); return "\(c.year!)-\(c.month!)-\(c.day!)" }
        bucket(keepWeekly) { let c = calendar.dateComponents([.yearForWeekOfYear, .weekOfYear], from: $0); return "\(c.yearForWeekOfYear!)-\(c.weekOfYear!)" }
        bucket(keepMonthly) { let c = calendar.dateComponents([.year, .month], from: $0); return "\(c.year!)-\(c.month!)" }
        return keep
    }
}

/// What `prune` did (or, with a dry run, would do).
public struct PruneReport: Codable, Sendable {
    public var dryRun: Bool
    public var keptSnapshots: [String] = []
    public var removedSnapshots: [String] = []
    public var packsDeleted = 0
    public var packsRewritten = 0
    /// Packs no index named (left by interrupted backups), deleted.
    public var unindexedPacksDeleted = 0
    public var bytesFreed: Int64 = 0
}

extension Repository {
    /// Applies `policy` to each group of snapshots (same tags: account, kind, host and, for dumps, database), then
    /// frees the data no kept snapshot needs. Holds an exclusive lease. Crash-safe: snapshots are forgotten first;
    /// packs holding live blobs are rewritten and a new index is written before any old index or pack is deleted,
    /// so a kill at any point leaves a repository that verifies (at worst with garbage the next prune removes).
    public func prune(policy: @escaping (_ tags: [String: String]) -> RetentionPolicy, dryRun: Bool) throws -> PruneReport {
        try withLock(exclusive: true) {
            // Another process may have added index files or snapshots since we opened the repository.
            try reloadIndex()
            var report = PruneReport(dryRun: dryRun)
            let all = try snapshots()
            let groups = Dictionary(grouping: all) { $0.tags }
            var kept: [Snapshot] = []
            for (tags, members) in groups {
                let keep = policy(tags).select(members)
                for snapshot in members {
                    if keep.contains(snapshot.id) { kept.append(snapshot); report.keptSnapshots.append(snapshot.id) }
                    else { report.removedSnapshots.append(snapshot.id) }
                }
            }
            report.keptSnapshots.sort()
            report.removedSnapshots.sort()
            if !dryRun {
                for id in report.removedSnapshots { try storage.remove("snapshots/" + id) }
            }
            let used = try reachableBlobs(kept)
            let index = indexSnapshot
            var byPack: [Int32: [(BlobID, BlobLocation)]] = [:]
            for (id, location) in index.blobs { byPack[location.pack, default: []].append((id, location)) }
            // A group's members share their bytes: count each stored range once.
            func storedBytes(_ entries: [(BlobID, BlobLocation)]) -> Int64 {
                Dictionary(entries.map { ($0.1.offset, Int64($0.1.length)) }, uniquingKeysWith: { first, _ in first }).values.reduce(0, +)
            }
            var deadPacks: [String] = []
            var rewrite: [(pack: String, live: [(BlobID, BlobLocation)])] = []
            var liveEntries: [(pack: String, entries: [PackEntry])] = []
            for (number, pack) in index.packs.enumerated() {
                let entries = byPack[Int32(number)] ?? []
                let live = entries.filter { used.contains($0.0) }
                let liveBytes = storedBytes(live)
                let totalBytes = storedBytes(entries)
                if live.isEmpty {
                    deadPacks.append(pack)
                    report.bytesFreed += totalBytes
                } else if liveBytes * 5 < totalBytes * 4 {
                    // More than a fifth unused: copy the live blobs (still sealed) into new packs.
                    rewrite.append((pack, live))
                    report.bytesFreed += totalBytes - liveBytes
                } else {
                    liveEntries.append((pack, live.map { index.entry($0.0, $0.1) }))
                }
            }
            let indexed = Set(index.packs)
            let unindexed = try packNames().filter { !indexed.contains($0) }
            for pack in unindexed { report.bytesFreed += Int64(try storage.size(Self.packPath(pack)) ?? 0) }
            report.unindexedPacksDeleted = unindexed.count
            report.packsDeleted = deadPacks.count + rewrite.count
            report.packsRewritten = rewrite.count
            if dryRun { return report }
            let writer = PackWriter(storage: storage, dataKey: keys.dataKey)
            do {
                for (pack, live) in rewrite {
                    let bytes = try storage.read(Self.packPath(pack))
                    // Each stored range is copied once, with the entries of its live blobs (a group keeps its dead
                    // members' bytes; only their entries go).
                    for (_, blobs) in Dictionary(grouping: live, by: { $0.1.offset }).sorted(by: { $0.key < $1.key }) {
                        let location = blobs[0].1
                        try writer.append(sealed: Array(bytes[Int(location.offset)..<Int(location.offset + location.length)]), kind: location.kind,
                                          entries: blobs.map { index.entry($0.0, $0.1) })
                    }
                }
                let newPacks = try writer.finish()
                try writeIndex(liveEntries + newPacks)
            } catch {
                writer.abandon()
                throw error
            }
            for name in index.indexFiles { try storage.remove("index/" + name) }
            for pack in deadPacks + rewrite.map(\.pack) + unindexed { try storage.remove(Self.packPath(pack)) }
            (storage as? LocalStorage)?.removeTemporaryFiles()
            try reloadIndex()
            return report
        }
    }
}
