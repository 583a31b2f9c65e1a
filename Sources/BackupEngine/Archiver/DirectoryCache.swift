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
/// the path itself: 72 bytes a record and no string. Two paths with one key cannot mislead the backup: a record is
/// used only if the listing's digest (names, inodes) is the one it recorded.
///
/// Format: `FKDIR003`, the snapshot name (32 bytes), then per directory, in increasing order of key, its key (8 bytes,
/// little-endian), the listing digest and the tree id (32 bytes each); last, the keyed digest of everything before it.
/// The loaded file is searched where it lies (binary search over its records), so the last backup's records cost
/// their 72 bytes each and no dictionary: about 72 MB for a million directories.
struct DirectoryCache {
    struct Record: Equatable {
        let listing: BlobID
        let tree: BlobID
    }

    /// A record a backup made, with its directory's key; a backup collects these and `write` sorts them.
    struct Entry {
        let key: UInt64
        let record: Record
    }

    static let magic = Array("FKDIR003".utf8)
    private static let headerSize = 8 + 32
    private static let recordSize = 8 + 32 + 32

    /// The whole file as read: header, records sorted by strictly increasing key, digest.
    private let bytes: [UInt8]
    /// How many records it holds.
    let count: Int

    private init(bytes: [UInt8], count: Int) {
        self.bytes = bytes
        self.count = count
    }

    /// The record of the directory with key `key`, if the last backup made one.
    subscript(key: UInt64) -> Record? {
        bytes.withUnsafeBytes { raw -> Record? in
            var low = 0, high = count
            while low < high {
                let middle = low + (high - low) / 2
                let offset = Self.headerSize + middle * Self.recordSize
                let found = UInt64(littleEndian: raw.loadUnaligned(fromByteOffset: offset, as: UInt64.self))
                if found == key {
                    return Record(listing: BlobID(UnsafeRawBufferPointer(rebasing: raw[(offset + 8)..<(offset + 40)])),
                                  tree: BlobID(UnsafeRawBufferPointer(rebasing: raw[(offset + 40)..<(offset + 72)])))
                }
                if found < key { low = middle + 1 } else { high = middle }
            }
            return nil
        }
    }

    /// A directory's key in the records, from its path relative to the backed-up tree ("" for the top), computed with
    /// one thread's context of the repository's id key (no lock; see `HMACSHA256.Key.makeThreadContext`).
    static func key(for path: String, ids: HMACSHA256.ThreadContext) -> UInt64 { BlobID(bytes: ids.authenticate(FileName.bytes(of: path))).a }

    /// The directory holding the caches, inside the repository's cache directory.
    static func directory(in cacheDirectory: String) -> String { cacheDirectory + "/dirs" }

    static func path(in cacheDirectory: String, snapshot: String) -> String { directory(in: cacheDirectory) + "/" + snapshot }

    /// The cache written with snapshot `snapshot`, or nil if there is none or it is not intact.
    static func load(snapshot: String, cacheDirectory: String, repository: Repository) -> DirectoryCache? {
        guard let name = BlobID(hex: snapshot), let bytes = readFile(path(in: cacheDirectory, snapshot: snapshot)) else { return nil }
        let end = bytes.count - 32
        guard end >= headerSize, (end - headerSize) % recordSize == 0,
              repository.blobID(bytes[..<end]) == BlobID(bytes: Array(bytes[end...])),
              Array(bytes[..<magic.count]) == magic, BlobID(bytes: Array(bytes[magic.count..<headerSize])) == name else { return nil }
        let count = (end - headerSize) / recordSize
        // Binary search needs the order; a file out of order was not written by `write`.
        let ordered = bytes.withUnsafeBytes { raw in
            var previous: UInt64?
            for index in 0..<count {
                let key = UInt64(littleEndian: raw.loadUnaligned(fromByteOffset: headerSize + index * recordSize, as: UInt64.self))
                if let previous, key <= previous { return false }
                previous = key
            }
            return true
        }
        return ordered ? DirectoryCache(bytes: bytes, count: count) : nil
    }

    /// Caches larger than this are ignored: 1 GiB holds the records of 14 million directories.
    static let largestFile = 1 << 30

    /// The whole of a regular file no larger than `largestFile`, read in one buffer of its size; nil otherwise. Not a
    /// FIFO (opening one for reading would wait for a writer) nor a link, whatever was put in the cache's place.
    private static func readFile(_ path: String) -> [UInt8]? {
        do throws(Errno) {
            let file = try FileDescriptor.open(path, O_RDONLY | O_NONBLOCK | O_NOFOLLOW | O_CLOEXEC)
            let info = try file.status()
            guard info.st_mode & S_IFMT == S_IFREG, info.st_size >= 0, info.st_size <= largestFile else { return nil }
            return try file.read(count: Int(info.st_size), at: 0)
        } catch {
            return nil
        }
    }

    /// Writes the cache of `entries` for snapshot `snapshot` (temporary file and rename, no fsync: it can always be
    /// rebuilt) and removes `replacing`'s, which only that snapshot's children could use. Best effort: a cache that
    /// cannot be written costs the next backup its shortcut, nothing more. Keys that two directories share (two
    /// paths whose hashes begin alike) are left out: neither directory can be found by its key alone.
    /// `entries` is sorted in place: passed as its last reference, it is not copied.
    static func write(_ entries: consuming [Entry], snapshot: String, replacing: String?, cacheDirectory: String, repository: Repository) {
        guard let name = BlobID(hex: snapshot) else { return }
        var sorted = entries
        sorted.sort { $0.key < $1.key }
        var writer = ByteWriter()
        writer.bytes = magic
        writer.bytes.reserveCapacity(headerSize + sorted.count * recordSize + 32)
        writer.id(name)
        for (index, entry) in sorted.enumerated() {
            if index > 0 && sorted[index - 1].key == entry.key { continue }
            if index + 1 < sorted.count && sorted[index + 1].key == entry.key { continue }
            withUnsafeBytes(of: entry.key.littleEndian) { writer.bytes.append(contentsOf: $0) }
            writer.id(entry.record.listing)
            writer.id(entry.record.tree)
        }
        writer.id(repository.blobID(writer.bytes))
        try? AtomicFile.write(writer.bytes, to: path(in: cacheDirectory, snapshot: snapshot), permissions: 0o600, durable: false,
                              missingDirectory: .create(permissions: 0o700))
        if let replacing, replacing != snapshot, BlobID(hex: replacing) != nil {
            unlink(path(in: cacheDirectory, snapshot: replacing))
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
        // Entries read in place and each one's fields appended at once: this runs for every directory of every
        // backup, and copying entries and appending field by field was most of its cost.
        for index in entries.indices {
            guard entries[index].statError == 0 else { return nil }
            let info = entries[index].info
            if info.st_mode & S_IFMT == S_IFREG && info.st_nlink > 1 { return nil }
            entries[index].bytes.withUnsafeBufferPointer { name in
                name.withMemoryRebound(to: UInt8.self) { bytes.append(contentsOf: $0) }
            }
            if entries[index].bytes.last != 0 { bytes.append(0) }
            let fields = (UInt64(info.st_mode).littleEndian, UInt64(info.st_uid).littleEndian, UInt64(info.st_gid).littleEndian,
                          UInt64(bitPattern: Int64(info.st_size)).littleEndian,
                          UInt64(bitPattern: Int64(info.st_mtim.tv_sec)).littleEndian, UInt64(bitPattern: Int64(info.st_mtim.tv_nsec)).littleEndian,
                          UInt64(bitPattern: Int64(info.st_ctim.tv_sec)).littleEndian, UInt64(bitPattern: Int64(info.st_ctim.tv_nsec)).littleEndian,
                          UInt64(info.st_ino).littleEndian, UInt64(info.st_dev).littleEndian)
            withUnsafeBytes(of: fields) { bytes.append(contentsOf: $0) }
        }
        return BlobID(bytes: ids.authenticate(bytes))
    }
}
