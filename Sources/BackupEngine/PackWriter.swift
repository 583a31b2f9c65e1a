import Crypto
import Foundation
import Synchronization
import Zstd

/// Collects sealed blobs into packs (~8 MiB) and commits each full pack atomically.
///
/// On a `LocalStorage` a pack is streamed into a temporary file as blobs arrive, so no pack is ever held in memory;
/// on other storages (SFTP) it is buffered and handed to `RepositoryStorage.write`. Thread-safe: workers append
/// concurrently; the open pack sits behind one Mutex and the slow part (fsync, rename) happens outside it.
final class PackWriter: Sendable {
    static let targetPackSize = 8 << 20

    private struct OpenPack {
        let sink: any PackSink
        var entries: [PackEntry] = []
        var size = 0
    }

    private struct State {
        var current: OpenPack?
        /// Ids being stored by this writer, so a chunk seen twice is compressed and encrypted once.
        var reserved: Set<BlobID> = []
        /// Packs committed by this writer, with their entries: the caller turns them into an index file.
        var written: [(pack: String, entries: [PackEntry])] = []
        var bytesStored: Int64 = 0
        var blobs = 0
    }

    private let state = Mutex(State())
    private let storage: any RepositoryStorage
    private let dataKey: [UInt8]
    /// Blobs already in the repository's index are never stored again.
    private let isIndexed: @Sendable (BlobID) -> Bool
    private let beforePackCommit: (@Sendable (String) throws -> Void)?

    init(storage: any RepositoryStorage, dataKey: [UInt8], isIndexed: @escaping @Sendable (BlobID) -> Bool = { _ in false },
         beforePackCommit: (@Sendable (String) throws -> Void)? = nil) {
        self.storage = storage
        self.dataKey = dataKey
        self.isIndexed = isIndexed
        self.beforePackCommit = beforePackCommit
    }

    /// True when the caller should store `id`; false when it is already stored or being stored.
    func reserve(_ id: BlobID) -> Bool {
        if isIndexed(id) { return false }
        return state.withLock { $0.reserved.insert(id).inserted }
    }

    /// Releases a reservation after a failure, so a later attempt stores the blob.
    func unreserve(_ id: BlobID) {
        _ = state.withLock { $0.reserved.remove(id) }
    }

    /// Compresses (when that saves at least 1/32), encrypts and appends one blob. May commit a full pack.
    func add(id: BlobID, kind: BlobKind, plaintext: UnsafeRawBufferPointer, compressor: ZstdCompressor) throws {
        var sealed: [UInt8]?
        if plaintext.count >= 64, Self.looksCompressible(plaintext, compressor: compressor),
           let compressed = try? compressor.compress(plaintext), compressed.count < plaintext.count - plaintext.count / 32 {
            sealed = try AES256GCM.seal(compressed, key: dataKey)
        }
        let compressed = sealed != nil
        if sealed == nil { sealed = try AES256GCM.seal(plaintext, key: dataKey) }
        try addSealed(id: id, kind: kind, compressed: compressed, sealed: sealed!, rawLength: UInt32(plaintext.count))
    }

    /// Large chunks are tried on a 32 KiB sample first: media files (most of a hosting account's bytes) do not
    /// compress, and compressing them whole only to throw the result away was a third of the backup's CPU time.
    static func looksCompressible(_ plaintext: UnsafeRawBufferPointer, compressor: ZstdCompressor) -> Bool {
        let sampleSize = 32 << 10
        guard plaintext.count >= 4 * sampleSize else { return true }
        let start = plaintext.count / 2 - sampleSize / 2
        let sample = UnsafeRawBufferPointer(rebasing: plaintext[start..<start + sampleSize])
        guard let compressed = try? compressor.compress(sample) else { return false }
        return compressed.count < sampleSize - sampleSize / 16
    }

    /// Appends a blob that is already sealed (prune copies live blobs out of mostly-dead packs this way).
    func addSealed(id: BlobID, kind: BlobKind, compressed: Bool, sealed: [UInt8], rawLength: UInt32) throws {
        let full: OpenPack? = try state.withLock { state throws -> OpenPack? in
            if state.current == nil { state.current = OpenPack(sink: try makeSink()) }
            try state.current!.sink.append(sealed)
            state.current!.entries.append(PackEntry(id: id, kind: kind, compressed: compressed, offset: UInt32(state.current!.size),
                                                    length: UInt32(sealed.count), rawLength: rawLength))
            state.current!.size += sealed.count
            state.bytesStored += Int64(sealed.count)
            state.blobs += 1
            guard state.current!.size >= Self.targetPackSize else { return nil }
            defer { state.current = nil }
            return state.current
        }
        if let full { try commit(full) }
    }

    /// Commits the partial last pack. Returns every pack committed, for the index.
    func finish() throws -> (packs: [(pack: String, entries: [PackEntry])], bytesStored: Int64, blobs: Int) {
        let last = state.withLock { state -> OpenPack? in
            defer { state.current = nil }
            return state.current
        }
        if let last { try commit(last) }
        return state.withLock { ($0.written, $0.bytesStored, $0.blobs) }
    }

    /// After a failure: drops the open pack's temporary file and deletes the packs this writer committed (no index
    /// refers to them yet, so nothing can need them), which also gives the space back on a full disk.
    func abandon() {
        let (open, written) = state.withLock { state in
            defer { state.current = nil; state.written = [] }
            return (state.current, state.written)
        }
        open?.sink.abort()
        for (pack, _) in written { try? storage.remove(Repository.packPath(pack)) }
    }

    private func makeSink() throws -> any PackSink {
        if let local = storage as? LocalStorage { return try FilePackSink(storage: local) }
        return MemoryPackSink(storage: storage)
    }

    /// A pack is its sealed blobs, then its sealed header (the entries), then the header's length (4 bytes, little
    /// endian), so it can be read back without the index. Its name is random: 32 bytes, hex.
    private func commit(_ pack: OpenPack) throws {
        do {
            var header = ByteWriter()
            BinaryCodec.encode(pack.entries, into: &header)
            var trailer = try AES256GCM.seal(header.bytes, key: dataKey, aad: Array("fleetkeep pack header".utf8))
            withUnsafeBytes(of: UInt32(trailer.count).littleEndian) { trailer.append(contentsOf: $0) }
            let name = Hex.encode(SecureRandom.bytes(32))
            try beforePackCommit?(name)
            try pack.sink.commit(trailer: trailer, path: Repository.packPath(name))
            state.withLock { $0.written.append((name, pack.entries)) }
        } catch {
            pack.sink.abort()
            throw error
        }
    }
}

/// Where a pack's bytes go while it is being filled. Used by one thread at a time: under the writer's lock while
/// filling, then by the thread that commits it (hence `@unchecked Sendable` on the implementations).
protocol PackSink: Sendable {
    func append(_ bytes: [UInt8]) throws
    func commit(trailer: [UInt8], path: String) throws
    func abort()
}

/// Streams a pack into `data/.tmp-*` and renames it into place: constant memory however large the backup.
final class FilePackSink: PackSink, @unchecked Sendable {
    private let storage: LocalStorage
    private let temporary: String
    private var descriptor: Int32

    init(storage: LocalStorage) throws {
        self.storage = storage
        (descriptor, temporary) = try storage.createTemporaryFile(in: "data")
    }

    func append(_ bytes: [UInt8]) throws {
        try storage.writeAll(descriptor, bytes, path: "data/pack")
    }

    func commit(trailer: [UInt8], path: String) throws {
        try storage.writeAll(descriptor, trailer, path: path)
        try storage.commitTemporaryFile(descriptor, temporary, to: path)
        descriptor = -1
    }

    func abort() {
        if descriptor >= 0 { close(descriptor); descriptor = -1 }
        unlink(temporary)
    }

    deinit { if descriptor >= 0 { close(descriptor); unlink(temporary) } }
}

/// Buffers a pack for storages that can only write whole files (SFTP).
final class MemoryPackSink: PackSink, @unchecked Sendable {
    private let storage: any RepositoryStorage
    private var buffer: [UInt8] = []

    init(storage: any RepositoryStorage) { self.storage = storage }

    func append(_ bytes: [UInt8]) throws { buffer.append(contentsOf: bytes) }

    func commit(trailer: [UInt8], path: String) throws {
        buffer.append(contentsOf: trailer)
        try storage.write(path, buffer)
        buffer = []
    }

    func abort() { buffer = [] }
}
