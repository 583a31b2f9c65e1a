import Foundation

/// What a copy to another repository (the off-site push) did.
public struct CopyReport: Codable, Sendable {
    public var snapshotsCopied = 0
    public var snapshotsAlreadyThere = 0
    public var packsUploaded = 0
    public var packsAlreadyThere = 0
    public var bytesUploaded: Int64 = 0
    public var seconds: Double = 0
}

extension Repository {
    /// Makes `storage` a second home of this repository: the same config and sealed keys, so it stays encrypted
    /// with the same keys and the remote host never sees plaintext. Does nothing when it is already there.
    public func replicateConfiguration(to storage: any RepositoryStorage) throws {
        if try storage.size("config") != nil { return }
        for name in try self.storage.list("keys") { try storage.write("keys/" + name, try self.storage.read("keys/" + name)) }
        try storage.write("config", try self.storage.read("config"))
    }

    /// Copies `snapshots` and the packs they need to `remote`, uploading only packs the remote lacks.
    /// Order keeps the remote consistent at every moment: packs, then an index for them, then snapshot files.
    /// An interrupted copy resumes: packs that finished uploading are found by name and size and not sent again.
    public func copy(_ snapshots: [Snapshot], to remote: Repository, progress: (@Sendable (CopyReport) -> Void)? = nil) throws -> CopyReport {
        let started = Date()
        var report = CopyReport()
        let index = indexSnapshot
        let needed = try reachableBlobs(snapshots)
        var entriesByPack: [Int32: [PackEntry]] = [:]
        var neededPacks = Set<Int32>()
        for id in needed {
            guard let location = index.blobs[id] else { throw RepositoryError("blob \(id) needed by a snapshot is missing locally; run verify") }
            neededPacks.insert(location.pack)
        }
        for (id, location) in index.blobs where neededPacks.contains(location.pack) {
            entriesByPack[location.pack, default: []].append(PackEntry(id: id, kind: location.kind, offset: location.offset,
                                                                        length: location.length, rawLength: location.rawLength))
        }
        let remoteIndexed = Set(remote.indexSnapshot.packs)
        var newlyIndexed: [(pack: String, entries: [PackEntry])] = []
        for number in neededPacks.sorted() {
            let pack = index.packs[Int(number)]
            let entries = entriesByPack[number] ?? []
            if remoteIndexed.contains(pack) {
                report.packsAlreadyThere += 1
                continue
            }
            let path = Self.packPath(pack)
            let localSize = try storage.size(path)
            if let remoteSize = try remote.storage.size(path), remoteSize == localSize {
                report.packsAlreadyThere += 1
            } else {
                let bytes = try storage.read(path)
                try remote.storage.write(path, bytes)
                report.packsUploaded += 1
                report.bytesUploaded += Int64(bytes.count)
                progress?(report)
            }
            newlyIndexed.append((pack, entries))
        }
        if let name = try remote.writeIndex(newlyIndexed) {
            report.bytesUploaded += Int64(try remote.storage.size("index/" + name) ?? 0)
        }
        let remoteSnapshots = Set(try remote.storage.list("snapshots"))
        for snapshot in snapshots {
            if remoteSnapshots.contains(snapshot.id) {
                report.snapshotsAlreadyThere += 1
                continue
            }
            let bytes = try storage.read("snapshots/" + snapshot.id)
            try remote.storage.write("snapshots/" + snapshot.id, bytes)
            report.snapshotsCopied += 1
            report.bytesUploaded += Int64(bytes.count)
        }
        report.seconds = Date().timeIntervalSince(started)
        return report
    }
}
