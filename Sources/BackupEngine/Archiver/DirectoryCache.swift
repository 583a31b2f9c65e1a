import Crypto
import Foundation
import Posix

/// What the last backup of a tree stored for each of its directories: a digest of the directory's listing and the
/// id of the tree it stored for it. Kept locally, one file per snapshot (`cache/dirs/<snapshot>`), like restic's and
/// borg's files caches but per directory.
///
/// Why: an unchanged re-run used to load, decrypt, decompress and decode the parent snapshot's tree of every
/// directory, only to build, encode and authenticate the same tree again. With this cache, a directory whose
/// listing digest is what the last backup recorded, and whose subdirectories all came out as the trees recorded for
/// them, is the recorded tree: neither its old tree nor a new one is touched.
///
/// The digest covers every entry the tree would hold, in order: its name and each `stat` field a node takes (mode,
/// owner, group, size, mtime, ctime, inode) plus the device. It is keyed with the repository's id key, so an account
/// owner who controls names and times cannot aim for a collision. A directory is recorded only when its tree
/// came from its listing exactly: none of its entries failed, none was a file with several hard links (their nodes
/// depend on where the walk met the other links), and every file read kept the times it was listed with.
///
/// The cache is trusted only as far as the repository: a recorded tree must still be in the index, and the cache is
/// not used at all while packs are missing (their blobs are then stored again from the files, which needs the
/// files' old trees) and is deleted by every repair. A damaged, forged or foreign file is ignored: it carries a
/// keyed digest of its content and the snapshot it was written for.
///
/// Records are found by the directory's key, the first 8 bytes of the id key's HMAC of its path (`key(for:)`), not by
/// the path itself: 72 bytes a record and no string, for the old records and the new ones alike. Two paths with one
/// key cannot mislead the backup: a record is used only if the listing's digest (names, inodes) is the one it
/// recorded.
///
/// Format: `FKDIR002`, the snapshot name (32 bytes), then per directory its key (8 bytes, little-endian), the
/// listing digest and the tree id (32 bytes each); last, the keyed digest of everything before it.
struct DirectoryCache {
    struct Record: Equatable {
        let listing: BlobID
        let tree: BlobID
    }

    static let magic = Array("FKDIR002".utf8)
    var records: [UInt64: Record] = [:]

    init(records: [UInt64: Record] = [:]) { self.records = records }

    /// A directory's key in the records, from its path relative to the backed-up tree ("" for the top).
    static func key(for path: String, repository: Repository) -> UInt64 { repository.blobID(FileName.bytes(of: path)).a }

    /// The same key, computed with one thread's context of the repository's id key (no lock; see
    /// `HMACSHA256.Key.makeThreadContext`).
    static func key(for path: String, ids: HMACSHA256.ThreadContext) -> UInt64 { BlobID(bytes: ids.authenticate(FileName.bytes(of: path))).a }

    /// The directory holding the caches, inside the repository's cache directory.
    static func directory(in cacheDirectory: String) -> String { cacheDirectory + "/dirs" }

    static func path(in cacheDirectory: String, snapshot: String) -> String { directory(in: cacheDirectory) + "/" + snapshot }

    /// The cache written with snapshot `snapshot`, or nil if there is none or it is not intact.
    static func load(snapshot: String, cacheDirectory: String, repository: Repository) -> DirectoryCache? {
        guard let name = BlobID(hex: snapshot),
              let data = FileManager.default.contents(atPath: path(in: cacheDirectory, snapshot: snapshot)) else { return nil }
        let bytes = [UInt8](data)
        guard bytes.count >= magic.count + 64 else { return nil }
        let body = bytes[..<(bytes.count - 32)]
        let stored = bytes.withUnsafeBytes { BlobID(UnsafeRawBufferPointer(rebasing: $0[(bytes.count - 32)...])) }
        guard repository.blobID(body) == stored else { return nil }
        var reader = ByteReader(Array(body), what: "directory cache \(snapshot)")
        guard (try? reader.take(magic.count)) == magic, (try? reader.id()) == name else { return nil }
        var records: [UInt64: Record] = [:]
        records.reserveCapacity((bytes.count - magic.count - 64) / 72)
        while !reader.isAtEnd {
            guard let keyBytes = try? reader.take(8), let listing = try? reader.id(), let tree = try? reader.id() else { return nil }
            let key = keyBytes.withUnsafeBytes { UInt64(littleEndian: $0.loadUnaligned(as: UInt64.self)) }
            records[key] = Record(listing: listing, tree: tree)
        }
        return DirectoryCache(records: records)
    }

    /// Writes the cache for snapshot `snapshot` (temporary file and rename, no fsync: it can always be rebuilt) and
    /// removes `replacing`'s, which only that snapshot's children could use. Best effort: a cache that cannot be
    /// written costs the next backup its shortcut, nothing more.
    func write(snapshot: String, replacing: String?, cacheDirectory: String, repository: Repository) {
        guard let name = BlobID(hex: snapshot) else { return }
        var writer = ByteWriter()
        writer.bytes = Self.magic
        writer.id(name)
        writer.bytes.reserveCapacity(Self.magic.count + 64 + records.count * 72)
        for (key, record) in records {
            withUnsafeBytes(of: key.littleEndian) { writer.bytes.append(contentsOf: $0) }
            writer.id(record.listing)
            writer.id(record.tree)
        }
        writer.id(repository.blobID(writer.bytes))
        try? AtomicFile.write(writer.bytes, to: Self.path(in: cacheDirectory, snapshot: snapshot), permissions: 0o600, durable: false,
                              missingDirectory: .create(permissions: 0o700))
        if let replacing, replacing != snapshot, BlobID(hex: replacing) != nil {
            unlink(Self.path(in: cacheDirectory, snapshot: replacing))
        }
    }

    /// Deletes the caches of snapshots not in `snapshots` (forgotten since, or never written) that are older than
    /// `before`: a cache written by a backup running alongside, for a snapshot this one has not seen, stays.
    static func removeStale(keeping snapshots: Set<String>, before: Date, cacheDirectory: String) {
        let directory = directory(in: cacheDirectory)
        guard let names = try? FileManager.default.contentsOfDirectory(atPath: directory) else { return }
        for name in names where !snapshots.contains(name) {
            var info = stat()
            guard lstat(directory + "/" + name, &info) == 0, Double(info.st_mtim.tv_sec) < before.timeIntervalSince1970 else { continue }
            unlink(directory + "/" + name)
        }
    }

    /// Deletes every directory cache (after a repair, which may drop blobs that recorded trees refer to).
    static func removeAll(cacheDirectory: String) {
        try? FileManager.default.removeItem(atPath: directory(in: cacheDirectory))
    }

    /// The digest of a directory's listing (see the type's comment); nil when the directory cannot be recorded.
    static func listingDigest(of entries: [TreeScanner.Entry], ids: HMACSHA256.ThreadContext) -> BlobID? {
        var bytes: [UInt8] = []
        bytes.reserveCapacity(entries.count * 96)
        for entry in entries {
            guard entry.statError == 0 else { return nil }
            let info = entry.info
            if info.st_mode & S_IFMT == S_IFREG && info.st_nlink > 1 { return nil }
            entry.bytes.withUnsafeBufferPointer { name in
                name.withMemoryRebound(to: UInt8.self) { bytes.append(contentsOf: $0) }
            }
            if entry.bytes.last != 0 { bytes.append(0) }
            func field(_ value: UInt64) { withUnsafeBytes(of: value.littleEndian) { bytes.append(contentsOf: $0) } }
            field(UInt64(info.st_mode)); field(UInt64(info.st_uid)); field(UInt64(info.st_gid))
            field(UInt64(bitPattern: Int64(info.st_size)))
            field(UInt64(bitPattern: Int64(info.st_mtim.tv_sec))); field(UInt64(bitPattern: Int64(info.st_mtim.tv_nsec)))
            field(UInt64(bitPattern: Int64(info.st_ctim.tv_sec))); field(UInt64(bitPattern: Int64(info.st_ctim.tv_nsec)))
            field(UInt64(info.st_ino)); field(UInt64(info.st_dev))
        }
        return BlobID(bytes: ids.authenticate(bytes))
    }
}
