import Foundation

/// Lets the idle agent daemon give back the pages of its program and shared libraries.
///
/// Most of a Swift daemon's resident set is clean, file-backed code and read-only data of the libraries it has
/// touched (libswiftCore, Foundation, libcrypto, ...; about 31 of 35 MiB here), while its own heap is about 3 MiB.
/// Between heartbeats minutes apart none of it is needed, so before sleeping the daemon drops the mappings of
/// read-only file mappings that hold no private (copied-on-write) pages. `MADV_DONTNEED` on such a mapping only
/// unmaps page-cache pages: nothing is lost, and the next heartbeat maps back what it uses through minor faults.
/// Writable mappings and any mapping with private pages (such as relocated GOT/RELRO pages) are left alone.
public enum IdleMemory {
    /// Drops clean file-backed pages; returns how many bytes of mappings were released (0 if /proc is unavailable).
    @discardableResult
    public static func releaseCleanFilePages() -> Int {
        // /proc files report size 0, so read to the end rather than by the stat size.
        guard let handle = FileHandle(forReadingAtPath: "/proc/self/smaps"),
              let data = try? handle.readToEnd() else { return 0 }
        try? handle.close()
        let smaps = String(decoding: data, as: UTF8.self)
        var candidates: [(start: UInt, end: UInt)] = []
        var current: (start: UInt, end: UInt, eligible: Bool)?
        func finish(anonymous: Int?) {
            if let mapping = current, mapping.eligible, anonymous == 0 { candidates.append((mapping.start, mapping.end)) }
        }
        var anonymous: Int?
        for line in smaps.split(separator: "\n", omittingEmptySubsequences: true) {
            if let header = parseHeader(line) {
                finish(anonymous: anonymous)
                current = header
                anonymous = nil
            } else if line.hasPrefix("Anonymous:") {
                anonymous = Int(line.dropFirst("Anonymous:".count).split(separator: " ").first ?? "")
            }
        }
        finish(anonymous: anonymous)
        var released = 0
        for mapping in candidates {
            guard let address = UnsafeMutableRawPointer(bitPattern: mapping.start) else { continue }
            if madvise(address, Int(mapping.end - mapping.start), MADV_DONTNEED) == 0 { released += Int(mapping.end - mapping.start) }
        }
        return released
    }

    /// `start-end perms offset dev inode path`: eligible when read-only, private and backed by a real file.
    private static func parseHeader(_ line: Substring) -> (start: UInt, end: UInt, eligible: Bool)? {
        let fields = line.split(separator: " ", maxSplits: 5, omittingEmptySubsequences: true)
        guard fields.count >= 5, let dash = fields[0].firstIndex(of: "-"),
              let start = UInt(fields[0][..<dash], radix: 16), let end = UInt(fields[0][fields[0].index(after: dash)...], radix: 16) else {
            return nil
        }
        let perms = fields[1]
        let path = fields.count > 5 ? fields[5].trimmingCharacters(in: .whitespaces) : ""
        let eligible = perms.count == 4 && !perms.contains("w") && perms.hasSuffix("p") && path.hasPrefix("/") && fields[4] != "0"
        return (start, end, eligible)
    }
}
