import Crypto
import Foundation

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
        let bytes = [UInt8](data)
        guard bytes.count >= 8, Array(bytes[0..<8]) == Self.magic else { return [:] }
        var entries: [String: [UInt8]] = [:]
        var position = 8
        while position < bytes.count {
            guard position + 36 <= bytes.count else { return [:] }
            let name = Hex.encode(bytes[position..<position + 32])
            let length = bytes[position + 32..<position + 36].reversed().reduce(0) { $0 << 8 | Int($1) }
            position += 36
            guard length <= bytes.count - position else { return [:] }
            entries[name] = Array(bytes[position..<position + length])
            position += length
        }
        return entries
    }

    /// Replaces the cache with `entries` (temporary file and rename; no fsync, it can always be rebuilt). A cache
    /// that cannot be written (a read-only repository, a full disk) is left as it was.
    func write(_ entries: [(name: String, sealed: [UInt8])]) {
        var bytes = Self.magic
        for (name, sealed) in entries {
            guard let raw = Hex.decode(name), raw.count == 32, sealed.count <= Int(UInt32.max) else { continue }
            bytes += raw
            withUnsafeBytes(of: UInt32(sealed.count).littleEndian) { bytes += $0 }
            bytes += sealed
        }
        try? FileManager.default.createDirectory(atPath: (path as NSString).deletingLastPathComponent,
                                                 withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
        let temporary = path + ".tmp-" + UUID().uuidString
        guard FileManager.default.createFile(atPath: temporary, contents: Data(bytes), attributes: [.posixPermissions: 0o600]) else { return }
        if rename(temporary, path) != 0 { unlink(temporary) }
    }

    /// True when `sealed` is the content of the snapshot file `name`.
    static func matches(_ sealed: [UInt8], name: String) -> Bool { SHA256.hex(sealed) == name }
}
