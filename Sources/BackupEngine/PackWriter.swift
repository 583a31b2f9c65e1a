import Crypto
import Foundation
import Synchronization
import Zstd

/// Collects sealed blobs into packs (~8 MiB) and writes each full pack atomically.
/// Thread-safe: workers reserve ids and append blobs concurrently; everything mutable sits behind one Mutex.
final class PackWriter: Sendable {
    static let targetPackSize = 8 << 20
    /// Room for a full pack plus the largest blob and the header, so appending never reallocates (and copies).
    static let bufferCapacity = targetPackSize + (9 << 20)

    /// Moves the current pack out of the state, leaving an empty one behind.
    private static func takePack(_ state: inout State) -> ([UInt8], [PackEntry]) {
        var buffer: [UInt8] = []
        swap(&buffer, &state.buffer)
        defer { state.entries = [] }
        return (buffer, state.entries)
    }

    private struct State {
        var buffer: [UInt8] = []
        var entries: [PackEntry] = []
        /// Ids already stored or being stored, so a chunk seen twice is compressed and encrypted once.
        var reserved: Set<BlobID>
        /// Packs written by this writer, with their entries: the caller turns them into an index file.
        var written: [(pack: String, entries: [PackEntry])] = []
        var bytesStored: Int64 = 0
    }

    private let state: Mutex<State>
    private let storage: any RepositoryStorage
    private let dataKey: [UInt8]
    private let beforePackWrite: (@Sendable (String) throws -> Void)?

    init(storage: any RepositoryStorage, dataKey: [UInt8], known: Set<BlobID>, beforePackWrite: (@Sendable (String) throws -> Void)? = nil) {
        self.storage = storage
        self.dataKey = dataKey
        self.beforePackWrite = beforePackWrite
        state = Mutex(State(reserved: known))
    }

    /// True when the caller should store `id`; false when it is already stored or reserved.
    func reserve(_ id: BlobID) -> Bool {
        state.withLock { $0.reserved.insert(id).inserted }
    }

    /// Releases a reservation after a failure, so a later attempt stores the blob.
    func unreserve(_ id: BlobID) {
        _ = state.withLock { $0.reserved.remove(id) }
    }

    /// Compresses (when it pays), encrypts and appends one blob. May write a full pack.
    func add(id: BlobID, kind: BlobKind, plaintext: UnsafeRawBufferPointer, compressor: ZstdCompressor) throws {
        var payload = [UInt8]()
        payload.reserveCapacity(plaintext.count + 1)
        if plaintext.count >= 64, Self.looksCompressible(plaintext, compressor: compressor),
           let compressed = try? compressor.compress(plaintext), compressed.count < plaintext.count - plaintext.count / 32 {
            payload.append(1)
            payload.append(contentsOf: compressed)
        } else {
            payload.append(0)
            payload.append(contentsOf: plaintext)
        }
        try addSealed(id: id, kind: kind, sealed: try AES256GCM.seal(payload, key: dataKey), rawLength: UInt32(plaintext.count))
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
    func addSealed(id: BlobID, kind: BlobKind, sealed: [UInt8], rawLength: UInt32) throws {
        let full: ([UInt8], [PackEntry])? = state.withLock { state in
            state.entries.append(PackEntry(id: id, kind: kind, offset: UInt32(state.buffer.count), length: UInt32(sealed.count), rawLength: rawLength))
            if state.buffer.capacity == 0 { state.buffer.reserveCapacity(Self.bufferCapacity) }
            state.buffer.append(contentsOf: sealed)
            state.bytesStored += Int64(sealed.count)
            guard state.buffer.count >= Self.targetPackSize else { return nil }
            return Self.takePack(&state)
        }
        if case (var buffer, let entries)? = full { try writePack(&buffer, entries) }
    }

    /// Writes the partial last pack. Returns every pack written, for the index.
    func finish() throws -> (packs: [(pack: String, entries: [PackEntry])], bytesStored: Int64) {
        let last: ([UInt8], [PackEntry])? = state.withLock { state in
            guard !state.entries.isEmpty else { return nil }
            return Self.takePack(&state)
        }
        if case (var buffer, let entries)? = last { try writePack(&buffer, entries) }
        return state.withLock { ($0.written, $0.bytesStored) }
    }

    /// A pack is its sealed blobs, then its sealed header, then the header's length (4 bytes, little endian).
    /// Its name is the SHA-256 of its bytes, so a damaged pack can be recognized by name alone.
    private func writePack(_ pack: inout [UInt8], _ entries: [PackEntry]) throws {
        var header = [UInt8]()
        BinaryCodec.encode(entries, into: &header)
        let sealedHeader = try AES256GCM.seal(header, key: dataKey)
        pack.append(contentsOf: sealedHeader)
        BinaryCodec.append(UInt32(sealedHeader.count), to: &pack)
        let name = SHA256.hex(pack)
        try beforePackWrite?(name)
        try storage.write(Repository.packPath(name), pack)
        state.withLock { $0.written.append((name, entries)) }
    }
}
