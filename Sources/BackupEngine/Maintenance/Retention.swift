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
    /// Packs the index named that are gone: left out of the new index (their blobs are lost; backups store them
    /// again from the source).
    public var missingPacks: [String] = []
    /// Kept snapshots with a directory listing that cannot be read. What only such a listing leads to cannot be told
    /// from garbage, so while there are any, no pack is deleted or rewritten (`repairSnapshots` first).
    public var snapshotsWithUnreadableListings: [String] = []
}

extension Repository {
    /// Applies `policy` to each group of snapshots (same tags: account, kind, host and, for dumps, database), then
    /// frees the data no kept snapshot needs. Holds an exclusive lease. Crash-safe: snapshots are forgotten first;
    /// packs holding live blobs are rewritten and a new index is written before any old index or pack is deleted,
    /// so a kill at any point leaves a repository that verifies (at worst with garbage the next prune removes).
    public func prune(policy: @escaping (_ tags: [String: String]) -> RetentionPolicy, dryRun: Bool) throws -> PruneReport {
        try withLock(exclusive: true) {
            // Another process may have added index files or snapshots since we opened the repository. The index cache
            // is rebuilt from the authenticated index files: it is derived data, and a damaged record would make
            // prune rewrite or delete packs by it.
            try reloadIndex(rebuildCache: true)
            // The packs only a damaged index file names would look unindexed, and be deleted below.
            let damagedFiles = damagedIndexFiles
            guard damagedFiles.isEmpty else {
                throw RepositoryError("index file \(damagedFiles.map { String($0.prefix(16)) }.joined(separator: ", ")) is damaged; prune would take "
                    + "the packs only it names for garbage. Run `fleetkeep-agent repair index` first (it rebuilds the index from the packs)")
            }
            var report = PruneReport(dryRun: dryRun)
            // Listed before any pack is rewritten, so a new pack is never taken for an unindexed one. Packs that are
            // gone drop out of the index: the new index is written without them.
            let inventory = try excludeMissingPacks()
            report.missingPacks = inventory.missing
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
            let index = indexSnapshot
            var (used, unreadable) = try reachableBlobsSkippingUnreadable(kept, index: index)
            let unindexed = inventory.unindexed
            // Packs no index names are normally what an interrupted backup left. But when kept snapshots need blobs
            // or listings the index lacks, an index file may be gone, and those packs may be the only copy: deleting
            // them would lose every snapshot. Checked before anything is removed. Only packs `repair index` can index
            // count: one whose header is damaged would keep prune refusing for ever.
            let neededOutsideIndex = used.countOutsideIndex
            let indexable = neededOutsideIndex > 0 || !unreadable.isEmpty ? indexablePacks(unindexed) : []
            if !indexable.isEmpty {
                throw RepositoryError("\(indexable.count) packs are named by no index file, while kept snapshots need \(neededOutsideIndex) blobs "
                    + "the index does not have\(unreadable.isEmpty ? "" : " (\(unreadable.count) snapshots have listings that cannot be read)"); "
                    + "those packs may hold them (an index file may be lost), so prune changed nothing. Run `fleetkeep-agent repair index` "
                    + "first (it rebuilds the index from the packs' own headers), then prune again")
            }
            if !dryRun {
                for id in report.removedSnapshots { try storage.remove("snapshots/" + id) }
            }
            report.snapshotsWithUnreadableListings = unreadable.sorted()
            if !unreadable.isEmpty {
                // Nothing can be proven garbage: every indexed blob is kept.
                for (id, _) in index.blobs { used.insert(id) }
            }
            for pack in unindexed { report.bytesFreed += Int64(try storage.size(Self.packPath(pack)) ?? 0) }
            report.unindexedPacksDeleted = unindexed.count
            // A group's members share their bytes: count each stored range once.
            func storedBytes(_ entries: [(id: BlobID, location: BlobLocation)]) -> Int64 {
                Dictionary(entries.map { ($0.location.offset, Int64($0.location.length)) }, uniquingKeysWith: { first, _ in first }).values.reduce(0, +)
            }
            var deadPacks: [String] = []
            var rewritten: [String] = []
            // The new index goes out in files of at most `foldLimit` entries, as the packs are looked at, so neither
            // the kept entries nor the rewritten packs' entries of a large repository are all in memory at once.
            var pendingIndex: [(pack: String, entries: [PackEntry])] = []
            var pendingEntries = 0
            let writer = dryRun ? nil : PackWriter(storage: storage, cipher: dataCipher)
            func flushIndex() throws {
                defer {
                    pendingIndex = []
                    pendingEntries = 0
                }
                guard let writer else { return }
                try writeIndex(pendingIndex + (try writer.finish()))
                writer.markIndexed()
            }
            do {
                try index.forEachPack(limit: foldLimit) { number, entries in
                    let pack = index.packs[Int(number)]
                    let live = entries.filter { used.contains($0.id) }
                    let liveBytes = storedBytes(live)
                    let totalBytes = storedBytes(entries)
                    if live.isEmpty {
                        deadPacks.append(pack)
                        report.bytesFreed += totalBytes
                        return
                    }
                    if liveBytes * 5 < totalBytes * 4 {
                        // More than a fifth unused: copy the live blobs (still sealed) into new packs.
                        rewritten.append(pack)
                        report.bytesFreed += totalBytes - liveBytes
                        if let writer {
                            let bytes = try self.storage.read(Self.packPath(pack))
                            // Each stored range is copied once, with the entries of its live blobs (a group keeps its
                            // dead members' bytes; only their entries go).
                            for (_, blobs) in Dictionary(grouping: live, by: { $0.location.offset }).sorted(by: { $0.key < $1.key }) {
                                let location = blobs[0].location
                                let end = Int(location.offset) + Int(location.length)
                                guard end <= bytes.count else {
                                    throw RepositoryError("pack \(pack.prefix(16)) is truncated; run `fleetkeep-agent repair snapshots` before pruning")
                                }
                                try writer.append(sealed: Array(bytes[Int(location.offset)..<end]), kind: location.kind,
                                                  entries: blobs.map { index.entry($0.id, $0.location) })
                            }
                        }
                    } else if !dryRun {
                        pendingIndex.append((pack, live.map { index.entry($0.id, $0.location) }))
                    }
                    pendingEntries += live.count
                    if pendingEntries >= self.foldLimit { try flushIndex() }
                }
                report.packsDeleted = deadPacks.count + rewritten.count
                report.packsRewritten = rewritten.count
                if dryRun { return report }
                try flushIndex()
            } catch {
                writer?.abandon()
                throw error
            }
            for name in index.indexFiles { try storage.remove("index/" + name) }
            for pack in deadPacks + rewritten + unindexed { try storage.remove(Self.packPath(pack)) }
            storage.removeTemporaryFiles()
            try reloadIndex()
            return report
        }
    }
}
