import Crypto
import Foundation
import Posix

/// The repository's snapshots, decoded, gathered into one local file (`cache/snapshots`) sealed with the
/// repository's data key.
///
/// Every backup lists every snapshot to find its parents, and a repository keeps thousands (30 days of every
/// account and kind). Reading each small file cost a disk seek on a cold page cache (half a millisecond each here),
/// so the first version of this cache kept the sealed files in one file; decoding each one's JSON was then the cost:
/// about 22 µs a snapshot, 37 ms for 1,648, at the start of every backup (BENCHMARKS.md, "Listing snapshots").
/// This version keeps them decoded, in a binary form that reads in about 1 µs.
///
/// Trust: the whole file is one AES-256-GCM box under the repository's data key, so only this repository's own
/// programs can have written it; a damaged, truncated, foreign or older-format cache does not open, and costs
/// reading the files again, never a wrong snapshot. Snapshot files never change (their names are their hashes), so
/// an entry cannot go stale; one whose file is gone is dropped by the next listing. `verify` does not use the cache;
/// it checks the files themselves.
///
/// Format: `FKSNC002`, then the sealed payload: a varint count, then for each snapshot its name (32 bytes) and
/// `encode(_:)`'s bytes.
struct SnapshotCache {
    static let magic = Array("FKSNC002".utf8)
    static let aad = Array("fleetkeep snapshot cache".utf8)
    let path: String
    let cipher: AES256GCM.Key

    /// The cached snapshots by name (their `id`); empty when the file is missing, does not open or is malformed.
    func read() -> [String: Snapshot] {
        guard let data = FileManager.default.contents(atPath: path), data.count > Self.magic.count,
              Array(data.prefix(Self.magic.count)) == Self.magic,
              let payload = try? cipher.open(data.dropFirst(Self.magic.count), aad: Self.aad) else { return [:] }
        var reader = ByteReader(payload, what: path)
        do {
            let count = try reader.count(elementSize: 32)
            var snapshots: [String: Snapshot] = [:]
            snapshots.reserveCapacity(count)
            for _ in 0..<count {
                let name = try reader.id().hex
                snapshots[name] = try Self.decode(&reader, id: name)
            }
            guard reader.isAtEnd else { return [:] }
            return snapshots
        } catch {
            return [:]
        }
    }

    /// Replaces the cache with `snapshots` (each `id` a snapshot file's name; temporary file and rename, no fsync:
    /// it can always be rebuilt). A cache that cannot be written (a read-only repository, a full disk) is left as it
    /// was.
    func write(_ snapshots: [Snapshot]) {
        var writer = ByteWriter()
        let named = snapshots.compactMap { snapshot in BlobID(hex: snapshot.id).map { ($0, snapshot) } }
        writer.varint(UInt64(named.count))
        for (name, snapshot) in named {
            writer.id(name)
            Self.encode(snapshot, into: &writer)
        }
        guard let sealed = try? cipher.seal(writer.bytes, aad: Self.aad) else { return }
        try? AtomicFile.write(Self.magic + sealed, to: path, permissions: 0o600, durable: false, missingDirectory: .create(permissions: 0o700))
    }

    // MARK: The binary form of one snapshot

    /// Every field of `Snapshot`, `BackupSummary` and `RootDirectory`. A field added to one of them must be added
    /// here and the magic's number raised (SnapshotCacheTests counts the fields, so that it cannot be forgotten).
    static func encode(_ snapshot: Snapshot, into writer: inout ByteWriter) {
        writer.varint(snapshot.time.timeIntervalSince1970.bitPattern)
        writer.varint(UInt64(snapshot.tags.count))
        for (key, value) in snapshot.tags.sorted(by: { $0.key < $1.key }) {
            writer.string(key)
            writer.string(value)
        }
        writer.string(snapshot.tree)
        optional(snapshot.parent, into: &writer) { $1.string($0) }
        let summary = snapshot.summary
        for value in [summary.filesNew, summary.filesChanged, summary.filesUnchanged, summary.directories, summary.filesRead] {
            writer.signed(Int64(value))
        }
        optional(summary.directoriesUnchanged, into: &writer) { $1.signed(Int64($0)) }
        for value in [summary.bytesRead, summary.bytesTotal, Int64(summary.blobsAdded), summary.bytesAdded, summary.bytesStored] {
            writer.signed(value)
        }
        writer.varint(summary.seconds.bitPattern)
        writer.varint(UInt64(summary.errors.count))
        for error in summary.errors { writer.string(error) }
        optional(snapshot.root, into: &writer) { root, writer in
            writer.uint32(root.uid)
            writer.uint32(root.gid)
            writer.uint32(root.mode)
            writer.signed(root.mtime)
        }
    }

    static func decode(_ reader: inout ByteReader, id: String) throws -> Snapshot {
        let time = Date(timeIntervalSince1970: Double(bitPattern: try reader.varint()))
        var tags: [String: String] = [:]
        for _ in 0..<(try reader.count(elementSize: 2)) {
            let key = try reader.string()
            tags[key] = try reader.string()
        }
        let tree = try reader.string()
        let parent = try optional(&reader) { try $0.string() }
        var summary = BackupSummary()
        summary.filesNew = Int(try reader.signed())
        summary.filesChanged = Int(try reader.signed())
        summary.filesUnchanged = Int(try reader.signed())
        summary.directories = Int(try reader.signed())
        summary.filesRead = Int(try reader.signed())
        summary.directoriesUnchanged = try optional(&reader) { Int(try $0.signed()) }
        summary.bytesRead = try reader.signed()
        summary.bytesTotal = try reader.signed()
        summary.blobsAdded = Int(try reader.signed())
        summary.bytesAdded = try reader.signed()
        summary.bytesStored = try reader.signed()
        summary.seconds = Double(bitPattern: try reader.varint())
        for _ in 0..<(try reader.count()) { summary.errors.append(try reader.string()) }
        let root = try optional(&reader) { reader in
            RootDirectory(uid: try reader.uint32(), gid: try reader.uint32(), mode: try reader.uint32(), mtime: try reader.signed())
        }
        return Snapshot(id: id, time: time, tags: tags, tree: tree, parent: parent, summary: summary, root: root)
    }

    private static func optional<Value>(_ value: Value?, into writer: inout ByteWriter, _ write: (Value, inout ByteWriter) -> Void) {
        guard let value else { writer.byte(0); return }
        writer.byte(1)
        write(value, &writer)
    }

    private static func optional<Value>(_ reader: inout ByteReader, _ read: (inout ByteReader) throws -> Value) throws -> Value? {
        switch try reader.byte() {
        case 0: return nil
        case 1: return try read(&reader)
        default: throw reader.damaged()
        }
    }
}
