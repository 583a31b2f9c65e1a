import Crypto
import Foundation

/// Repository format version written to `config`; see docs/REPOSITORY.md. Version 2 added grouped blobs (pack
/// entry flag 0x20), so an agent that only knows version 1 refuses such a repository as newer instead of calling
/// its packs damaged.
public let repositoryFormatVersion = 2
/// Versions this agent opens. Version 1 differs only in lacking groups, which this agent reads in either.
public let readableRepositoryFormatVersions = 1...2

/// A blob's id: HMAC-SHA256(id key, plaintext). Stored as four words so hashing and comparing are cheap and an
/// index entry needs no heap allocation.
public struct BlobID: Hashable, Sendable, Comparable, CustomStringConvertible {
    let a: UInt64, b: UInt64, c: UInt64, d: UInt64

    init(_ raw: UnsafeRawBufferPointer) {
        precondition(raw.count == 32)
        a = UInt64(bigEndian: raw.loadUnaligned(fromByteOffset: 0, as: UInt64.self))
        b = UInt64(bigEndian: raw.loadUnaligned(fromByteOffset: 8, as: UInt64.self))
        c = UInt64(bigEndian: raw.loadUnaligned(fromByteOffset: 16, as: UInt64.self))
        d = UInt64(bigEndian: raw.loadUnaligned(fromByteOffset: 24, as: UInt64.self))
    }

    init(bytes: [UInt8]) {
        self = bytes.withUnsafeBytes { BlobID($0) }
    }

    public init?(hex: String) {
        guard let bytes = Hex.decode(hex), bytes.count == 32 else { return nil }
        self.init(bytes: bytes)
    }

    /// Writes the 32 bytes at `out` (the index cache's records), without an intermediate array.
    func store(to out: UnsafeMutableRawPointer) {
        for (index, word) in [a, b, c, d].enumerated() { out.storeBytes(of: word.bigEndian, toByteOffset: index * 8, as: UInt64.self) }
    }

    func append(to out: inout [UInt8]) {
        for word in [a, b, c, d] { withUnsafeBytes(of: word.bigEndian) { out.append(contentsOf: $0) } }
    }

    var bytes: [UInt8] {
        var out = [UInt8]()
        out.reserveCapacity(32)
        append(to: &out)
        return out
    }

    public var hex: String { Hex.encode(bytes) }
    public var description: String { String(hex.prefix(16)) }
    public static func < (lhs: BlobID, rhs: BlobID) -> Bool { (lhs.a, lhs.b, lhs.c, lhs.d) < (rhs.a, rhs.b, rhs.c, rhs.d) }
}

/// What a blob holds.
enum BlobKind: UInt8 {
    case data = 0
    case tree = 1
}

/// Where a blob lives: which pack (a number into the loaded pack list), where in it, and its sizes. 20 bytes.
struct BlobLocation {
    var pack: Int32
    var kind: BlobKind
    var compressed: Bool
    var offset: UInt32
    var length: UInt32
    var rawLength: UInt32
    /// For a member of a group (see `PackEntry.inner`): where its plaintext starts in the group's plaintext.
    var inner: UInt32? = nil
}

/// One entry of a pack header or an index file.
struct PackEntry {
    var id: BlobID
    var kind: BlobKind
    /// The sealed payload is a zstd frame (else the plaintext itself).
    var compressed: Bool
    var offset: UInt32
    var length: UInt32
    var rawLength: UInt32
    /// For a delta blob: the blob whose plaintext is the zstd prefix this one was compressed against.
    var base: BlobID? = nil
    /// For a member of a group: the sealed bytes at offset/length are one zstd frame holding several small blobs'
    /// plaintexts one after another (shared by every member's entry), and this blob's plaintext starts `inner`
    /// bytes into it. Small files compress better and faster together than one by one.
    var inner: UInt32? = nil

    /// flags (1) + id (32) + offset, length, raw length (3 x 4, little endian), then for a group member the inner
    /// offset (4), for a delta the base id (32).
    static let encodedSize = 1 + 32 + 12
    static let compressedFlag: UInt8 = 0x80
    static let deltaFlag: UInt8 = 0x40
    static let groupFlag: UInt8 = 0x20
    /// Largest group plaintext a reader accepts (a writer makes them up to 256 KiB plus one small blob).
    static let maximumGroupSize = 1 << 20
}

/// Binary encoding of pack headers and index files: a count, then fixed-size records.
enum BinaryCodec {
    static func encode(_ entries: [PackEntry], into out: inout ByteWriter) {
        out.uint32(UInt32(entries.count))
        for entry in entries {
            out.byte(entry.kind.rawValue | (entry.compressed ? PackEntry.compressedFlag : 0) | (entry.base != nil ? PackEntry.deltaFlag : 0)
                     | (entry.inner != nil ? PackEntry.groupFlag : 0))
            out.id(entry.id)
            out.uint32(entry.offset)
            out.uint32(entry.length)
            out.uint32(entry.rawLength)
            if let inner = entry.inner { out.uint32(inner) }
            if let base = entry.base { out.id(base) }
        }
    }

    static func decode(_ reader: inout ByteReader) throws -> [PackEntry] {
        let count = Int(try reader.uint32())
        guard count <= (reader.bytes.count - reader.offset) / PackEntry.encodedSize else { throw reader.damaged() }
        var entries: [PackEntry] = []
        entries.reserveCapacity(count)
        for _ in 0..<count {
            let flags = try reader.byte()
            guard let kind = BlobKind(rawValue: flags & ~(PackEntry.compressedFlag | PackEntry.deltaFlag | PackEntry.groupFlag)) else { throw reader.damaged() }
            let id = try reader.id()
            var entry = PackEntry(id: id, kind: kind, compressed: flags & PackEntry.compressedFlag != 0,
                                  offset: try reader.uint32(), length: try reader.uint32(), rawLength: try reader.uint32())
            if flags & PackEntry.groupFlag != 0 {
                // A group is one compressed frame of data blobs, never a delta; its members lie inside its plaintext.
                let inner = try reader.uint32()
                guard entry.compressed, kind == .data, flags & PackEntry.deltaFlag == 0,
                      UInt64(inner) + UInt64(entry.rawLength) <= UInt64(PackEntry.maximumGroupSize) else { throw reader.damaged() }
                entry.inner = inner
            }
            if flags & PackEntry.deltaFlag != 0 {
                // A delta is a zstd frame made against its base; anything else is a damaged entry.
                guard entry.compressed, kind == .data else { throw reader.damaged() }
                entry.base = try reader.id()
            }
            entries.append(entry)
        }
        return entries
    }
}

/// A snapshot file: when, what (tags), and the root tree.
public struct Snapshot: Codable, Sendable {
    /// The snapshot file's name (64 hex digits); not stored inside the file.
    public var id: String
    public var time: Date
    public var tags: [String: String]
    /// Root tree blob id (hex).
    public var tree: String
    public var parent: String?
    public var summary: BackupSummary
    /// The backed-up directory's own owner, mode and time (the tree holds only what is inside it), so a restore that
    /// has to make that directory (`home/USER` in `restore --all`) gives it back to its account. Absent in snapshots
    /// of a stream, and in those written before 2026-12-07; older agents ignore it.
    public var root: RootDirectory?

    public init(id: String, time: Date, tags: [String: String], tree: String, parent: String?, summary: BackupSummary,
                root: RootDirectory? = nil) {
        self.id = id
        self.time = time
        self.tags = tags
        self.tree = tree
        self.parent = parent
        self.summary = summary
        self.root = root
    }

    public var shortID: String { String(id.prefix(8)) }
}

/// A backed-up directory's own metadata (see `Snapshot.root`).
public struct RootDirectory: Codable, Sendable, Equatable {
    public var uid: UInt32
    public var gid: UInt32
    /// Permission bits only (0o7777).
    public var mode: UInt32
    /// Nanoseconds since the epoch.
    public var mtime: Int64

    public init(uid: UInt32, gid: UInt32, mode: UInt32, mtime: Int64) {
        self.uid = uid
        self.gid = gid
        self.mode = mode & 0o7777
        self.mtime = mtime
    }
}

/// Figures from one backup, shown to users (`--json`) and kept in the snapshot.
public struct BackupSummary: Codable, Sendable {
    public var filesNew = 0
    public var filesChanged = 0
    public var filesUnchanged = 0
    public var directories = 0
    /// Files whose content was read (unchanged files are not read at all).
    public var filesRead = 0
    /// Directories taken whole from the last backup's records (`DirectoryCache`): listed, but neither their old
    /// tree loaded nor a new one built. Absent in snapshots made before the directory cache.
    public var directoriesUnchanged: Int?
    public var bytesRead: Int64 = 0
    /// Size of all files in the snapshot.
    public var bytesTotal: Int64 = 0
    /// New blobs written to packs.
    public var blobsAdded = 0
    /// Plaintext bytes of the new blobs.
    public var bytesAdded: Int64 = 0
    /// Bytes the new blobs take in packs (after compression and encryption).
    public var bytesStored: Int64 = 0
    public var seconds: Double = 0
    /// Files that could not be read (vanished, permission denied); the backup still completes.
    public var errors: [String] = []
    public init() {}
}

/// Validates one name from a tree: a single path component that cannot leave its directory.
func validateTreeName(_ name: String) throws {
    guard !name.isEmpty, name != ".", name != "..", !name.contains("/"), !name.contains("\0"), !FileName.hasForgedEscape(name) else {
        throw RepositoryError("snapshot contains an unsafe file name \(FileName.printable(name).debugDescription); refusing to restore it (the repository may be damaged or tampered with)")
    }
}
