import Crypto
import Foundation
import Posix

/// One blob's place, as a fixed 52-byte record of the index cache: id (32), pack number, offset, length and raw
/// length (u32 little endian each), then kind | compressed << 4 | group member << 5, then for a group member its
/// inner offset (24 bits, little endian; groups are at most 1 MiB), else three zero bytes.
struct IndexRecord {
    static let size = 52
    var id: BlobID
    var location: BlobLocation
    /// A delta's base. Not part of the 52 bytes: the cache keeps bases in their own table (see `IndexCacheFile`).
    var base: BlobID? = nil

    func write(to out: UnsafeMutableRawPointer) {
        id.store(to: out)
        out.storeBytes(of: UInt32(bitPattern: location.pack).littleEndian, toByteOffset: 32, as: UInt32.self)
        out.storeBytes(of: location.offset.littleEndian, toByteOffset: 36, as: UInt32.self)
        out.storeBytes(of: location.length.littleEndian, toByteOffset: 40, as: UInt32.self)
        out.storeBytes(of: location.rawLength.littleEndian, toByteOffset: 44, as: UInt32.self)
        out.storeBytes(of: location.kind.rawValue | (location.compressed ? 0x10 : 0) | (location.inner != nil ? 0x20 : 0), toByteOffset: 48, as: UInt8.self)
        let inner = location.inner ?? 0
        for byte in 0..<3 { out.storeBytes(of: UInt8(truncatingIfNeeded: inner >> (8 * UInt32(byte))), toByteOffset: 49 + byte, as: UInt8.self) }
    }

    /// Nil when the record cannot be one we wrote (unknown kind, pack number out of range).
    static func read(_ raw: UnsafeRawPointer, packCount: Int) -> IndexRecord? {
        let id = BlobID(UnsafeRawBufferPointer(start: raw, count: 32))
        let pack = Int32(bitPattern: UInt32(littleEndian: raw.loadUnaligned(fromByteOffset: 32, as: UInt32.self)))
        let flags = raw.load(fromByteOffset: 48, as: UInt8.self)
        guard pack >= 0, Int(pack) < packCount, let kind = BlobKind(rawValue: flags & 0x0F) else { return nil }
        let location = BlobLocation(pack: pack, kind: kind, compressed: flags & 0x10 != 0,
                                    offset: UInt32(littleEndian: raw.loadUnaligned(fromByteOffset: 36, as: UInt32.self)),
                                    length: UInt32(littleEndian: raw.loadUnaligned(fromByteOffset: 40, as: UInt32.self)),
                                    rawLength: UInt32(littleEndian: raw.loadUnaligned(fromByteOffset: 44, as: UInt32.self)))
        var record = IndexRecord(id: id, location: location)
        if flags & 0x20 != 0 {
            record.location.inner = (0..<3).reduce(UInt32(0)) { $0 | UInt32(raw.load(fromByteOffset: 49 + $1, as: UInt8.self)) << (8 * UInt32($1)) }
        }
        return record
    }
}

/// The index cache: every blob location of the index files it names, sorted by id, memory-mapped. A lookup is a
/// binary search that touches about 20 pages, which the kernel may drop again at will; so the agent's own memory
/// does not grow with the repository (a hash table in memory costs about 75 bytes per blob: 750 MB for a server
/// of ten million chunks).
///
/// Layout: "FKIXC003", record count (u64), pack count (u32), index file count (u32), delta count (u32), four zero
/// bytes, the pack names and the index file names (32 bytes each), the pack numbers sorted by pack name (u32 little
/// endian each: the lookup from name to number), the records, then each delta's id and base (64 bytes), sorted by
/// id. Pack names and delta bases are read from the mapping (see `PackNames`, `DeltaBases`), so neither grows the
/// agent's memory with the repository. The cache is derived data: it lives next to the repository (`cache/`), is
/// rebuilt from the authenticated index files whenever it does not match them, and a wrong record can only point at
/// bytes that then fail authentication. It is not itself authenticated, so what deletes or rewrites by the index
/// (prune, repair) and verify rebuild it first.
final class IndexCacheFile: @unchecked Sendable {
    // @unchecked: the mapping is read-only and never changes after init; unmapped in deinit only.
    static let magic = Array("FKIXC003".utf8)
    let path: String
    let count: Int
    let packCount: Int
    let indexFiles: Set<String>
    let deltaCount: Int
    private let mapping: UnsafeMutableRawPointer
    private let mappedSize: Int
    private let records: UnsafeRawPointer
    private let packNames: UnsafeRawPointer
    private let packOrder: UnsafeRawPointer
    private let deltas: UnsafeRawPointer

    /// Maps the cache at `path`; nil when it is missing, unreadable or malformed (the caller rebuilds it).
    init?(path: String) {
        // Not a FIFO (O_NONBLOCK: opening one would wait for a writer), nor anything else but a regular file.
        let descriptor = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK)
        guard descriptor >= 0 else { return nil }
        defer { close(descriptor) }
        var info = stat()
        guard fstat(descriptor, &info) == 0, info.st_mode & S_IFMT == S_IFREG, info.st_size >= 32 else { return nil }
        let size = Int(info.st_size)
        guard let mapped = mmap(nil, size, PROT_READ, MAP_SHARED, descriptor, 0), mapped != UnsafeMutableRawPointer(bitPattern: -1) else { return nil }
        let raw = UnsafeRawPointer(mapped)
        // Every count is checked against the file's size before it is used: a damaged file must not crash us.
        let storedCount = UInt64(littleEndian: raw.loadUnaligned(fromByteOffset: 8, as: UInt64.self))
        let packCount = Int(UInt32(littleEndian: raw.loadUnaligned(fromByteOffset: 16, as: UInt32.self)))
        let fileCount = Int(UInt32(littleEndian: raw.loadUnaligned(fromByteOffset: 20, as: UInt32.self)))
        let deltaCount = Int(UInt32(littleEndian: raw.loadUnaligned(fromByteOffset: 24, as: UInt32.self)))
        let headerSize = Self.headerSize(packs: packCount, indexFiles: fileCount)
        let count = storedCount <= UInt64(size / IndexRecord.size) ? Int(storedCount) : -1
        guard Array(UnsafeRawBufferPointer(start: raw, count: 8)) == Self.magic, count >= 0,
              size == headerSize + count * IndexRecord.size + deltaCount * 64 else {
            munmap(mapped, size)
            return nil
        }
        func name(at index: Int) -> String { Hex.encode(Array(UnsafeRawBufferPointer(start: raw + 32 + index * 32, count: 32))) }
        func id(at offset: Int) -> BlobID { BlobID(UnsafeRawBufferPointer(start: raw + offset, count: 32)) }
        let orderStart = 32 + (packCount + fileCount) * 32
        let deltasStart = headerSize + count * IndexRecord.size
        // The name lookup is a binary search: its table must list every pack once, in strictly increasing name order.
        var previous: UnsafeRawPointer?
        for position in 0..<packCount {
            let number = Int(UInt32(littleEndian: raw.loadUnaligned(fromByteOffset: orderStart + position * 4, as: UInt32.self)))
            let current = raw + 32 + number * 32
            guard number < packCount, previous.map({ memcmp($0, current, 32) < 0 }) ?? true else {
                munmap(mapped, size)
                return nil
            }
            previous = current
        }
        // Bases are found by binary search too: the delta ids must be strictly increasing.
        for position in 1..<max(deltaCount, 1) where !(id(at: deltasStart + (position - 1) * 64) < id(at: deltasStart + position * 64)) {
            munmap(mapped, size)
            return nil
        }
        self.path = path
        self.count = count
        self.packCount = packCount
        packNames = raw + 32
        packOrder = raw + orderStart
        indexFiles = Set((0..<fileCount).map { name(at: packCount + $0) })
        self.deltaCount = deltaCount
        deltas = raw + deltasStart
        mapping = mapped
        mappedSize = size
        records = raw + headerSize
        // Lookups land anywhere in the file. A small cache is worth reading whole in the background (one sequential
        // read instead of a page fault per probe when it is not in the page cache); a large one is read as probed.
        madvise(mapped, size, size <= Self.readAheadLimit ? MADV_WILLNEED : MADV_RANDOM)
    }

    deinit { munmap(mapping, mappedSize) }

    static let readAheadLimit = 32 << 20

    static func headerSize(packs: Int, indexFiles: Int) -> Int { 32 + (packs + indexFiles) * 32 + packs * 4 }

    func packNameBytes(_ number: Int) -> UnsafeRawBufferPointer { UnsafeRawBufferPointer(start: packNames + number * 32, count: 32) }

    func packName(_ number: Int) -> String { Hex.encode(packNameBytes(number)) }

    /// The number of the pack at `position` in name order.
    func packNumber(inNameOrderAt position: Int) -> Int32 {
        Int32(UInt32(littleEndian: packOrder.loadUnaligned(fromByteOffset: position * 4, as: UInt32.self)))
    }

    /// The number of the pack named `name` (32 bytes), by binary search of the name-order table.
    func packNumber(of name: [UInt8]) -> Int32? {
        name.withUnsafeBytes { wanted in
            var low = 0, high = packCount
            while low < high {
                let middle = (low + high) / 2
                let number = packNumber(inNameOrderAt: middle)
                let order = memcmp(packNames + Int(number) * 32, wanted.baseAddress!, 32)
                if order == 0 { return number }
                if order < 0 { low = middle + 1 } else { high = middle }
            }
            return nil
        }
    }

    func id(at index: Int) -> BlobID { BlobID(UnsafeRawBufferPointer(start: records + index * IndexRecord.size, count: 32)) }

    func record(at index: Int) -> IndexRecord? { IndexRecord.read(records + index * IndexRecord.size, packCount: packCount) }

    /// The delta at `position` of the delta table (in id order) and its base.
    func delta(at position: Int) -> (delta: BlobID, base: BlobID) {
        (BlobID(UnsafeRawBufferPointer(start: deltas + position * 64, count: 32)),
         BlobID(UnsafeRawBufferPointer(start: deltas + position * 64 + 32, count: 32)))
    }

    /// The base of the delta `id`; nil when `id` is not a delta here.
    func base(of id: BlobID) -> BlobID? {
        var low = 0, high = deltaCount
        while low < high {
            let middle = (low + high) / 2
            let candidate = delta(at: middle)
            if candidate.delta == id { return candidate.base }
            if candidate.delta < id { low = middle + 1 } else { high = middle }
        }
        return nil
    }

    func location(of id: BlobID) -> BlobLocation? { position(of: id).flatMap { record(at: $0)?.location } }

    /// Where `id`'s record is, by binary search; nil when the cache does not list it.
    func position(of id: BlobID) -> Int? {
        var low = 0, high = count
        while low < high {
            let middle = (low + high) / 2
            let candidate = self.id(at: middle)
            if candidate == id { return middle }
            if candidate < id { low = middle + 1 } else { high = middle }
        }
        return nil
    }

    /// Writes a cache of `sources` (each sorted by id; where an id repeats, the last source wins, but a whole blob
    /// wins over a delta) to `path`,
    /// atomically, streaming: memory stays at one record per source. Delta bases travel with their records and are
    /// written to a side file during the merge, which is appended after the records (already in id order).
    static func write(path: String, packs: PackNames, indexFiles: [String], sources: [any IndexRecordSource]) throws {
        // Both files are temporary files next to the cache, removed if anything below fails.
        var output = try CacheOutput(cachePath: path)
        var deltaOutput = try CacheOutput(cachePath: path)
        // The counts are only known after merging: placeholders now, filled in at the end. The header goes out
        // piece by piece (the output buffers it): with a million packs it would be 36 MB in memory.
        try output.put(magic + [UInt8](repeating: 0, count: 8))
        try output.put(integer: UInt32(packs.count))
        try output.put(integer: UInt32(indexFiles.count))
        try output.put(integer: UInt32(0))
        try output.put([0, 0, 0, 0])
        for name in packs { try output.put(name: name) }
        for name in indexFiles { try output.put(name: name) }
        for number in packs.numbersInNameOrder() { try output.put(integer: UInt32(number)) }

        var heads = sources.map { $0.next() }
        var written = 0
        var deltaCount = 0
        var buffer = [UInt8](repeating: 0, count: IndexRecord.size * 4096)
        var buffered = 0
        while true {
            // The smallest id among the sources' heads; on a tie the later source's record is kept, unless only
            // the earlier one is stored whole (a whole blob depends on no base; see `LoadedIndex.add`).
            var best: Int?
            for index in heads.indices {
                guard let head = heads[index] else { continue }
                if let current = best, let bestHead = heads[current] {
                    if bestHead.id < head.id { continue }
                    if bestHead.id == head.id && bestHead.base == nil && head.base != nil { continue }
                }
                best = index
            }
            guard let chosen = best, let record = heads[chosen] else { break }
            for index in heads.indices where heads[index]?.id == record.id { heads[index] = sources[index].next() }
            buffer.withUnsafeMutableBytes { record.write(to: $0.baseAddress! + buffered * IndexRecord.size) }
            buffered += 1
            written += 1
            if let base = record.base {
                var pair: [UInt8] = []
                record.id.append(to: &pair)
                base.append(to: &pair)
                try deltaOutput.put(pair)
                deltaCount += 1
            }
            if buffered * IndexRecord.size == buffer.count {
                try output.put(buffer)
                buffered = 0
            }
        }
        try output.put(Array(buffer[0..<buffered * IndexRecord.size]))
        try output.append(contentsOf: &deltaOutput)
        try output.overwrite(at: 8, integer: UInt64(written))
        try output.overwrite(at: 24, integer: UInt32(deltaCount))
        try output.commit()
    }
}

/// A file being written for `IndexCacheFile.write`: a temporary file next to the cache, written through a buffer,
/// and renamed over the cache by `commit` (without fsync: the cache can always be rebuilt from the index files).
/// Dropped without a commit, the temporary file is removed. Every failure names the cache and the cause.
private struct CacheOutput: ~Copyable {
    static let bufferSize = 1 << 20

    let cachePath: String
    private let file: TemporaryFile
    /// Bytes not yet in the file; they go after the first `written`.
    private var buffer: [UInt8] = []
    private var written = 0

    init(cachePath: String) throws {
        self.cachePath = cachePath
        do throws(Errno) {
            file = try TemporaryFile.create(in: Directory.parentDirectory(of: cachePath), permissions: 0o600, flags: O_RDWR)
        } catch {
            throw Self.failure(cachePath, error)
        }
    }

    private static func failure(_ cachePath: String, _ error: Errno) -> RepositoryError {
        var message = "cannot write the index cache \(cachePath): \(error.operation) failed: \(error.text)"
        if error.isDiskFull { message += " (the disk is full; free space and run the command again)" }
        return RepositoryError(message)
    }

    mutating func put(_ bytes: [UInt8]) throws {
        buffer += bytes
        if buffer.count >= Self.bufferSize { try flush() }
    }

    mutating func put<T: FixedWidthInteger>(integer value: T) throws { try put(withUnsafeBytes(of: value.littleEndian) { Array($0) }) }

    /// A pack or index file name, as its 32 bytes.
    mutating func put(name: String) throws {
        guard let bytes = Hex.decode(name), bytes.count == 32 else { throw RepositoryError("internal error: \(name) is not a 32-byte name") }
        try put(bytes)
    }

    /// Writes `value` over what is at `offset` (a count that was a placeholder).
    mutating func overwrite<T: FixedWidthInteger>(at offset: Int, integer value: T) throws {
        try flush()
        do throws(Errno) {
            try withUnsafeBytes(of: value.littleEndian) { bytes in Result { () throws(Errno) in try file.file.write(all: bytes, at: offset) } }.get()
        } catch {
            throw Self.failure(cachePath, error)
        }
    }

    /// Copies everything put into `other` so far onto the end of this file.
    mutating func append(contentsOf other: inout CacheOutput) throws {
        try other.flush()
        var chunk = [UInt8](repeating: 0, count: 1 << 16)
        var offset = 0
        while offset < other.written {
            let count: Int
            do throws(Errno) {
                count = try chunk.withUnsafeMutableBytes { bytes in Result { () throws(Errno) in try other.file.file.read(into: bytes, at: offset) } }.get()
            } catch {
                throw Self.failure(cachePath, error)
            }
            guard count > 0 else { throw RepositoryError("cannot write the index cache \(cachePath): its temporary file \(other.file.path) was cut short") }
            try put(Array(chunk[0..<count]))
            offset += count
        }
    }

    /// Writes what is buffered and renames the file over the cache.
    consuming func commit() throws {
        try flush()
        do throws(Errno) {
            try file.commit(to: cachePath, durable: false)
        } catch {
            throw Self.failure(cachePath, error)
        }
    }

    private mutating func flush() throws {
        guard !buffer.isEmpty else { return }
        do throws(Errno) {
            try buffer.withUnsafeBytes { bytes in Result { () throws(Errno) in try file.file.write(all: bytes, at: written) } }.get()
        } catch {
            throw Self.failure(cachePath, error)
        }
        written += buffer.count
        buffer.removeAll(keepingCapacity: true)
    }
}

/// Records in id order, for `IndexCacheFile.write`.
protocol IndexRecordSource: AnyObject {
    func next() -> IndexRecord?
}

/// Reads a cache file's records in order (the old cache, when new entries are merged into it), each delta with its
/// base: both tables are in id order, so they are walked side by side.
final class CacheFileRecords: IndexRecordSource {
    private let file: IndexCacheFile
    private var position = 0
    private var deltaPosition = 0
    init(_ file: IndexCacheFile) { self.file = file }
    func next() -> IndexRecord? {
        while position < file.count {
            defer { position += 1 }
            guard var record = file.record(at: position) else { continue }
            while deltaPosition < file.deltaCount && file.delta(at: deltaPosition).delta < record.id { deltaPosition += 1 }
            if deltaPosition < file.deltaCount, case let (delta, base) = file.delta(at: deltaPosition), delta == record.id { record.base = base }
            return record
        }
        return nil
    }
}

/// Records held in memory, sorted once.
final class SortedRecords: IndexRecordSource {
    private let records: [IndexRecord]
    private var position = 0
    init(_ records: [IndexRecord]) { self.records = records.sorted { $0.id < $1.id } }
    func next() -> IndexRecord? {
        guard position < records.count else { return nil }
        defer { position += 1 }
        return records[position]
    }
}

/// Where each blob lives: the index cache (when the repository has one) with the entries added since it was built
/// in memory on top. `IndexedBlobs.foldLimit` bounds that in-memory part; past it the two are merged into a new
/// cache file.
struct IndexedBlobs: Sequence {
    static let foldLimit = 1 << 18
    /// Below this many entries, reading them from index files at open is cheaper than rewriting the cache.
    static let minimumEarlyFold = 1 << 13
    var cache: IndexCacheFile?
    var recent: [BlobID: BlobLocation] = [:]

    init(cache: IndexCacheFile? = nil) { self.cache = cache }

    /// The in-memory entries as records, each delta with its base from `bases`.
    func recentRecords(bases: DeltaBases) -> [IndexRecord] { recent.map { IndexRecord(id: $0.key, location: $0.value, base: bases[$0.key]) } }

    subscript(id: BlobID) -> BlobLocation? {
        get { recent[id] ?? cache?.location(of: id) }
        set { recent[id] = newValue }
    }

    /// Whether `id` is listed, without decoding its record (a backup asks this for every unchanged file's blobs).
    func contains(_ id: BlobID) -> Bool {
        (!recent.isEmpty && recent[id] != nil) || cache?.position(of: id) != nil
    }

    func makeIterator() -> AnyIterator<(key: BlobID, value: BlobLocation)> {
        var position = 0
        var recentIterator = recent.makeIterator()
        return AnyIterator {
            if let cache {
                while position < cache.count {
                    defer { position += 1 }
                    guard let record = cache.record(at: position) else { continue }
                    if recent[record.id] == nil { return (record.id, record.location) }
                }
            }
            return recentIterator.next()
        }
    }
}

/// Each delta blob's base: the index cache's delta table with the deltas added since it was built in memory on top.
/// Only deltas (database dump chunks) have a base, so ordinary entries cost nothing here.
struct DeltaBases: Sequence {
    var cache: IndexCacheFile?
    /// Added since the cache was built. A nil value records a blob stored whole that the cache calls a delta.
    var recent: [BlobID: BlobID?] = [:]

    init(cache: IndexCacheFile? = nil) { self.cache = cache }

    subscript(id: BlobID) -> BlobID? {
        if !recent.isEmpty, let added = recent[id] { return added }
        guard let cache, cache.deltaCount > 0 else { return nil }
        return cache.base(of: id)
    }

    /// Records the base of `id`, or that `id` is stored whole.
    mutating func set(_ base: BlobID?, for id: BlobID) {
        if base != nil || cache?.base(of: id) != nil {
            recent.updateValue(base, forKey: id)
        } else {
            recent[id] = nil
        }
    }

    var isEmpty: Bool { makeIterator().next() == nil }

    func makeIterator() -> AnyIterator<(delta: BlobID, base: BlobID)> {
        var position = 0
        var recentIterator = recent.makeIterator()
        return AnyIterator {
            if let cache {
                while position < cache.deltaCount {
                    defer { position += 1 }
                    let pair = cache.delta(at: position)
                    if recent[pair.delta] == nil { return pair }
                }
            }
            while let (delta, base) = recentIterator.next() {
                if let base { return (delta, base) }
            }
            return nil
        }
    }
}
