import Crypto
import Foundation
import Posix

/// The repository's snapshot files, sealed as they are, gathered into one local file (`cache/snapshots`).
///
/// Every backup lists every snapshot to find its parents. A repository keeps hundreds (30 days of every account and
/// kind), and reading each small file costs a disk seek when it is not in the page cache: half a millisecond each
/// here, a third of a second for 600. The cache is read in one go instead. It holds the sealed bytes, so nothing
/// in it is in the clear, and an entry is used only when its SHA-256 is the snapshot's name (which is how snapshot
/// files are named): a damaged or stale cache costs reading the files again, never a wrong snapshot.
/// `verify` does not use it; it checks the files themselves.
///
/// Format: `FKSNC001`, then for each snapshot its name (32 bytes), the sealed length (u32, little-endian) and the
/// sealed bytes.
struct SnapshotCache {
    static let magic = Array("FKSNC001".utf8)
    let path: String

    /// The cached sealed snapshots by name; empty when the file is missing or malformed.
    func read() -> [String: [UInt8]] {
        guard let data = FileManager.default.contents(atPath: path) else { return [:] }
        var reader = ByteReader([UInt8](data), what: path)
        guard (try? reader.take(Self.magic.count)) == Self.magic else { return [:] }
        var entries: [String: [UInt8]] = [:]
        while !reader.isAtEnd {
            guard let name = try? reader.id(), let length = try? reader.uint32(), let sealed = try? reader.take(Int(length)) else { return [:] }
            entries[name.hex] = sealed
        }
        return entries
    }

    /// Replaces the cache with `entries` (temporary file and rename; no fsync, it can always be rebuilt). A cache
    /// that cannot be written (a read-only repository, a full disk) is left as it was.
    func write(_ entries: [(name: String, sealed: [UInt8])]) {
        var writer = ByteWriter()
        writer.bytes = Self.magic
        for (name, sealed) in entries {
            guard let id = BlobID(hex: name), sealed.count <= Int(UInt32.max) else { continue }
            writer.id(id)
            writer.uint32(UInt32(sealed.count))
            writer.bytes += sealed
        }
        try? AtomicFile.write(writer.bytes, to: path, permissions: 0o600, durable: false, missingDirectory: .create(permissions: 0o700))
    }

    /// Adds snapshots just written to the cache as it is now. Only a cache that exists is extended: one that is
    /// missing or malformed is rebuilt by the next read from the files, which also drops entries whose files are gone.
    func add(_ entries: [(name: String, sealed: [UInt8])]) {
        let cached = read()
        guard !cached.isEmpty else { return }
        let names = Set(entries.map(\.name))
        write(cached.filter { !names.contains($0.key) }.map { ($0.key, $0.value) } + entries)
    }

    /// True when `sealed` is the content of the snapshot file `name`.
    static func matches(_ sealed: [UInt8], name: String) -> Bool { SHA256.hex(sealed) == name }
}
