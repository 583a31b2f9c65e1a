import Crypto
import Foundation

/// Repository format version written to `config`; see docs/REPOSITORY.md.
public let repositoryFormatVersion = 1

/// A blob's id: HMAC-SHA256(id key, plaintext). Stored as four words so hashing and comparing are cheap.
public struct BlobID: Hashable, Sendable, Comparable, CustomStringConvertible {
    let a: UInt64, b: UInt64, c: UInt64, d: UInt64

    init(bytes: [UInt8]) {
        precondition(bytes.count == 32)
        func word(_ offset: Int) -> UInt64 { bytes[offset..<offset + 8].reduce(0) { $0 << 8 | UInt64($1) } }
        a = word(0); b = word(8); c = word(16); d = word(24)
    }

    public init?(hex: String) {
        guard let bytes = Hex.decode(hex), bytes.count == 32 else { return nil }
        self.init(bytes: bytes)
    }

    var bytes: [UInt8] {
        [a, b, c, d].flatMap { word in (0..<8).reversed().map { UInt8(truncatingIfNeeded: word >> (UInt64($0) * 8)) } }
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

/// Where a blob lives: which pack, where in it, and its sizes.
struct BlobLocation {
    var pack: Int32
    var kind: BlobKind
    var offset: UInt32
    var length: UInt32
    var rawLength: UInt32
}

/// One entry of a pack header or an index file.
struct PackEntry {
    var id: BlobID
    var kind: BlobKind
    var offset: UInt32
    var length: UInt32
    var rawLength: UInt32

    static let encodedSize = 1 + 32 + 12
}

/// Binary encoding of pack headers and index files: fixed-size little-endian records.
enum BinaryCodec {
    static func append(_ value: UInt32, to out: inout [UInt8]) {
        withUnsafeBytes(of: value.littleEndian) { out.append(contentsOf: $0) }
    }

    static func readUInt32(_ bytes: [UInt8], _ offset: Int) -> UInt32 {
        UInt32(bytes[offset]) | UInt32(bytes[offset + 1]) << 8 | UInt32(bytes[offset + 2]) << 16 | UInt32(bytes[offset + 3]) << 24
    }

    static func encode(_ entries: [PackEntry], into out: inout [UInt8]) {
        append(UInt32(entries.count), to: &out)
        for entry in entries {
            out.append(entry.kind.rawValue)
            out.append(contentsOf: entry.id.bytes)
            append(entry.offset, to: &out)
            append(entry.length, to: &out)
            append(entry.rawLength, to: &out)
        }
    }

    /// Decodes entries at `offset`, advancing it; nil when the bytes are malformed.
    static func decode(_ bytes: [UInt8], at offset: inout Int) -> [PackEntry]? {
        guard offset + 4 <= bytes.count else { return nil }
        let count = Int(readUInt32(bytes, offset))
        offset += 4
        guard count <= (bytes.count - offset) / PackEntry.encodedSize else { return nil }
        var entries: [PackEntry] = []
        entries.reserveCapacity(count)
        for _ in 0..<count {
            guard let kind = BlobKind(rawValue: bytes[offset]) else { return nil }
            let id = BlobID(bytes: Array(bytes[offset + 1..<offset + 33]))
            entries.append(PackEntry(id: id, kind: kind, offset: readUInt32(bytes, offset + 33), length: readUInt32(bytes, offset + 37),
                                     rawLength: readUInt32(bytes, offset + 41)))
            offset += PackEntry.encodedSize
        }
        return entries
    }
}

/// One entry of a directory listing (a tree blob).
public struct TreeNode: Codable, Sendable {
    public enum Kind: String, Codable, Sendable { case file, directory, symlink, hardlink, other }
    public var name: String
    public var kind: Kind
    public var mode: UInt32
    public var uid: UInt32
    public var gid: UInt32
    /// Nanoseconds since the epoch.
    public var mtime: Int64
    public var ctime: Int64
    public var inode: UInt64
    public var size: Int64
    /// Symlink target, or for `hardlink` the snapshot-relative path of the first link.
    public var target: String?
    /// Content blob ids (hex) of a file, in order.
    public var content: [String]?
    /// Tree blob id (hex) of a directory.
    public var subtree: String?
}

/// A directory listing as stored in a tree blob.
struct Tree: Codable {
    var nodes: [TreeNode]
}

/// A snapshot file: when, what (tags), and the root tree.
public struct Snapshot: Codable, Sendable {
    public var id: String
    public var time: Date
    public var tags: [String: String]
    public var tree: String
    public var parent: String?
    public var summary: BackupSummary

    public var shortID: String { String(id.prefix(8)) }
}

/// Figures from one backup, shown to users and kept in the snapshot.
public struct BackupSummary: Codable, Sendable {
    public var filesNew = 0
    public var filesChanged = 0
    public var filesUnchanged = 0
    public var directories = 0
    /// Files whose content was read (unchanged files are not read at all).
    public var filesRead = 0
    public var bytesRead: Int64 = 0
    public var bytesTotal: Int64 = 0
    public var blobsAdded = 0
    public var bytesAdded: Int64 = 0
    public var bytesStored: Int64 = 0
    public var seconds: Double = 0
    public var errors: [String] = []
    public init() {}
}

/// Validates one name from a tree: a single path component that cannot leave its directory.
func validateTreeName(_ name: String) throws {
    guard !name.isEmpty, name != ".", name != "..", !name.contains("/"), !name.contains("\0") else {
        throw RepositoryError("snapshot contains an unsafe file name \(name.debugDescription); refusing to restore it (the repository may be damaged or tampered with)")
    }
}
