import Crypto
import Foundation

/// One blob's place, as a fixed 52-byte record of the index cache: id (32), pack number, offset, length and raw
/// length (u32 little endian each), then kind | compressed << 4 | group member << 5, then for a group member its
/// inner offset (24 bits, little endian; groups are at most 1 MiB), else three zero bytes.
struct IndexRecord {
    static let size = 52
    var id: BlobID
    var location: BlobLocation

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
/// Layout: "FKIXC002", record count (u64), pack count (u32), index file count (u32), delta count (u32), four zero
/// bytes, the pack names and the index file names (32 bytes each), the pack numbers sorted by pack name (u32 little
/// endian each: the lookup from name to number), each delta's id and base (64 bytes), then the records. Pack names
/// are read from the mapping (see `PackNames`). Deltas (database dump chunks) are few, so their bases are loaded
/// into memory. The cache is derived data: it lives next to the repository (`cache/`), is rebuilt from the
/// authenticated index files whenever it does not match them, and a wrong record can only point at bytes that then
/// fail authentication.
final class IndexCacheFile: @unchecked Sendable {
    // @unchecked: the mapping is read-only and never changes after init; unmapped in deinit only.
    static let magic = Array("FKIXC002".utf8)
    let path: String
    let count: Int
    let packCount: Int
    let indexFiles: Set<String>
    let bases: [BlobID: BlobID]
    private let mapping: UnsafeMutableRawPointer
    private let mappedSize: Int
    private let records: UnsafeRawPointer
    private let packNames: UnsafeRawPointer
    private let packOrder: UnsafeRawPointer

    /// Maps the cache at `path`; nil when it is missing, unreadable or malformed (the caller rebuilds it).
    init?(path: String) {
        let descriptor = open(path, O_RDONLY | O_CLOEXEC)
        guard descriptor >= 0 else { return nil }
        defer { close(descriptor) }
        var info = stat()
        guard fstat(descriptor, &info) == 0, info.st_size >= 32 else { return nil }
        let size = Int(info.st_size)
        guard let mapped = mmap(nil, size, PROT_READ, MAP_SHARED, descriptor, 0), mapped != UnsafeMutableRawPointer(bitPattern: -1) else { return nil }
        let raw = UnsafeRawPointer(mapped)
        // Every count is checked against the file's size before it is used: a damaged file must not crash us.
        let storedCount = UInt64(littleEndian: raw.loadUnaligned(fromByteOffset: 8, as: UInt64.self))
        let packCount = Int(UInt32(littleEndian: raw.loadUnaligned(fromByteOffset: 16, as: UInt32.self)))
        let fileCount = Int(UInt32(littleEndian: raw.loadUnaligned(fromByteOffset: 20, as: UInt32.self)))
        let deltaCount = Int(UInt32(littleEndian: raw.loadUnaligned(fromByteOffset: 24, as: UInt32.self)))
        let headerSize = Self.headerSize(packs: packCount, indexFiles: fileCount, deltas: deltaCount)
        let count = storedCount <= UInt64(size / IndexRecord.size) ? Int(storedCount) : -1
        guard Array(UnsafeRawBufferPointer(start: raw, count: 8)) == Self.magic, count >= 0,
              size == headerSize + count * IndexRecord.size else {
            munmap(mapped, size)
            return nil
        }
        func name(at index: Int) -> String { Hex.encode(Array(UnsafeRawBufferPointer(start: raw + 32 + index * 32, count: 32))) }
        func id(at offset: Int) -> BlobID { BlobID(UnsafeRawBufferPointer(start: raw + offset, count: 32)) }
        let orderStart = 32 + (packCount + fileCount) * 32
        let deltasStart = orderStart + packCount * 4
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
        self.path = path
        self.count = count
        self.packCount = packCount
        packNames = raw + 32
        packOrder = raw + orderStart
        indexFiles = Set((0..<fileCount).map { name(at: packCount + $0) })
        bases = Dictionary((0..<deltaCount).map { (id(at: deltasStart + $0 * 64), id(at: deltasStart + $0 * 64 + 32)) }, uniquingKeysWith: { $1 })
        mapping = mapped
        mappedSize = size
        records = raw + headerSize
        madvise(mapped, size, MADV_RANDOM)
    }

    deinit { munmap(mapping, mappedSize) }

    static func headerSize(packs: Int, indexFiles: Int, deltas: Int) -> Int { 32 + (packs + indexFiles) * 32 + packs * 4 + deltas * 64 }

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

    func location(of id: BlobID) -> BlobLocation? {
        var low = 0, high = count
        while low < high {
            let middle = (low + high) / 2
            let candidate = self.id(at: middle)
            if candidate == id { return record(at: middle)?.location }
            if candidate < id { low = middle + 1 } else { high = middle }
        }
        return nil
    }

    /// Writes a cache of `sources` (each sorted by id; where an id repeats, the last source wins) to `path`,
    /// atomically, streaming: memory stays at one record per source.
    static func write(path: String, packs: PackNames, indexFiles: [String], bases: [BlobID: BlobID], sources: [any IndexRecordSource]) throws {
        let temporary = path + ".tmp-" + UUID().uuidString
        let descriptor = open(temporary, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0o600)
        guard descriptor >= 0, let stream = fdopen(descriptor, "w") else {
            if descriptor >= 0 { close(descriptor) }
            throw RepositoryError("cannot write the index cache \(temporary): \(String(cString: strerror(errno)))")
        }
        var closed = false
        defer {
            if !closed { fclose(stream) }
            unlink(temporary)
        }
        func put(_ bytes: [UInt8]) throws {
            guard bytes.isEmpty || fwrite(bytes, 1, bytes.count, stream) == bytes.count else {
                throw RepositoryError("cannot write the index cache \(temporary): \(String(cString: strerror(errno))) (is the disk full?)")
            }
        }
        func put<T: FixedWidthInteger>(integer value: T) throws { try put(withUnsafeBytes(of: value.littleEndian) { Array($0) }) }
        // The count is only known after merging: write a placeholder and fill it in at the end. The header goes out
        // piece by piece (stdio buffers it): with a million packs it would be 36 MB in memory.
        try put(magic + [UInt8](repeating: 0, count: 8))
        try put(integer: UInt32(packs.count))
        try put(integer: UInt32(indexFiles.count))
        try put(integer: UInt32(bases.count))
        try put([0, 0, 0, 0])
        func putName(_ name: String) throws {
            guard let bytes = Hex.decode(name), bytes.count == 32 else { throw RepositoryError("internal error: \(name) is not a 32-byte name") }
            try put(bytes)
        }
        for name in packs { try putName(name) }
        for name in indexFiles { try putName(name) }
        for number in packs.numbersInNameOrder() { try put(integer: UInt32(number)) }
        for (id, base) in bases {
            var pair: [UInt8] = []
            id.append(to: &pair)
            base.append(to: &pair)
            try put(pair)
        }

        var heads = sources.map { $0.next() }
        var written = 0
        var buffer = [UInt8](repeating: 0, count: IndexRecord.size * 4096)
        var buffered = 0
        while true {
            // The smallest id among the sources' heads; on a tie the later source's record is kept.
            var best: Int?
            for index in heads.indices {
                guard let head = heads[index] else { continue }
                if let current = best, let bestHead = heads[current], bestHead.id < head.id { continue }
                best = index
            }
            guard let chosen = best, let record = heads[chosen] else { break }
            for index in heads.indices where heads[index]?.id == record.id { heads[index] = sources[index].next() }
            buffer.withUnsafeMutableBytes { record.write(to: $0.baseAddress! + buffered * IndexRecord.size) }
            buffered += 1
            written += 1
            if buffered * IndexRecord.size == buffer.count {
                try put(buffer)
                buffered = 0
            }
        }
        try put(Array(buffer[0..<buffered * IndexRecord.size]))
        guard fseek(stream, 8, SEEK_SET) == 0 else { throw RepositoryError("cannot write the index cache \(temporary)") }
        try put(withUnsafeBytes(of: UInt64(written).littleEndian) { Array($0) })
        guard fflush(stream) == 0 else { throw RepositoryError("cannot write the index cache \(temporary): \(String(cString: strerror(errno)))") }
        closed = true
        guard fclose(stream) == 0, rename(temporary, path) == 0 else {
            throw RepositoryError("cannot write the index cache \(path): \(String(cString: strerror(errno)))")
        }
    }
}

/// Records in id order, for `IndexCacheFile.write`.
protocol IndexRecordSource: AnyObject {
    func next() -> IndexRecord?
}

/// Reads a cache file's records in order (the old cache, when new entries are merged into it).
final class CacheFileRecords: IndexRecordSource {
    private let file: IndexCacheFile
    private var position = 0
    init(_ file: IndexCacheFile) { self.file = file }
    func next() -> IndexRecord? {
        while position < file.count {
            defer { position += 1 }
            if let record = file.record(at: position) { return record }
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
    var cache: IndexCacheFile?
    var recent: [BlobID: BlobLocation] = [:]

    init(cache: IndexCacheFile? = nil) { self.cache = cache }

    var recentRecords: [IndexRecord] { recent.map { IndexRecord(id: $0.key, location: $0.value) } }

    subscript(id: BlobID) -> BlobLocation? {
        get { recent[id] ?? cache?.location(of: id) }
        set { recent[id] = newValue }
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
