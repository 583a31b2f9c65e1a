import Crypto
import Foundation
import Posix
import Synchronization
import Zstd

/// A deduplicated, compressed, encrypted backup repository on any `RepositoryStorage`.
///
/// Layout: `config`, `keys/`, `data/XX/<pack>`, `index/<id>`, `snapshots/<id>`, `locks/<id>`. See docs/REPOSITORY.md.
public final class Repository: Sendable {
    public let storage: any RepositoryStorage
    let keys: MasterKeys
    /// `keys.idKey`, prepared once: every chunk stored and every blob read is hashed with it.
    let idKey: HMACSHA256.Key
    /// `keys.dataKey`, prepared once: every blob, index and snapshot is sealed and opened with it.
    let dataCipher: AES256GCM.Key
    private let indexState: ReadWriteLock<LoadedIndex>
    /// Groups of small blobs opened last, by "pack/offset" (see `loadGroupMember`).
    private let openedGroups = Mutex<[(key: String, plaintext: [UInt8])]>([])
    /// Where this repository's local caches live (index and snapshot caches): `cache/` inside a local repository, a
    /// local directory the caller chose for a remote one, nil for none (the whole index is then held in memory).
    let cacheDirectory: String?
    /// The index cache; nil keeps the whole index in memory.
    var indexCachePath: String? { cacheDirectory.map { $0 + "/index" } }

    struct LoadedIndex {
        var packs = PackNames()
        var blobs = IndexedBlobs()
        /// Delta blob -> its base. Only deltas (dump chunks) are here, so ordinary entries stay 20 bytes.
        var bases = DeltaBases()
        var indexFiles: [String] = []
        /// Index files that did not authenticate or decode when they were read: skipped, so one flipped byte costs
        /// only the entries of that file (until `repairIndex` rebuilds the index from the packs), not the repository.
        var damagedIndexFiles: [String] = []

        /// The bases `id` is built on, nearest first (empty for a whole blob); nil for a chain that is broken (a base
        /// missing from the index) or longer than `maximumDeltaDepth` (damaged, or looping).
        func deltaChain(_ id: BlobID) -> [BlobID]? {
            var chain: [BlobID] = [], current = id
            while let base = bases[current] {
                chain.append(base)
                guard chain.count <= Repository.maximumDeltaDepth, blobs[base] != nil else { return nil }
                current = base
            }
            return chain
        }

        /// Indexed, and for a delta, every base down its chain indexed too.
        func isUsable(_ id: BlobID) -> Bool { blobs.contains(id) && (bases[id] == nil || deltaChain(id) != nil) }

        /// How many deltas lead from `id` to a blob stored whole (0 for a whole blob); nil for a broken chain.
        func deltaDepth(_ id: BlobID) -> Int? { deltaChain(id)?.count }

        /// The entry for `id` as it appears in a pack header.
        func entry(_ id: BlobID, _ location: BlobLocation) -> PackEntry {
            PackEntry(id: id, kind: location.kind, compressed: location.compressed, offset: location.offset,
                      length: location.length, rawLength: location.rawLength, base: bases[id], inner: location.inner)
        }

        init() {}

        /// The index as the cache has it; index files it does not cover are added on top.
        init(cache: IndexCacheFile) {
            packs = PackNames(cache: cache)
            blobs = IndexedBlobs(cache: cache)
            bases = DeltaBases(cache: cache)
            indexFiles = Array(cache.indexFiles)
        }

        /// The entries added since the cache was built, as records carrying their bases.
        var recentRecords: [IndexRecord] { blobs.recentRecords(bases: bases) }

        /// Forgets the in-memory entries once they are in a cache file (a run of a rebuild).
        mutating func dropRecent() {
            blobs.recent = [:]
            bases.recent = [:]
        }

        mutating func add(pack: String, entries: [PackEntry]) {
            let number = packs.number(of: pack) ?? packs.append(pack)
            for entry in entries {
                // A blob stored twice (a backup stored again a blob whose delta chain broke, or an interrupted prune)
                // keeps its whole copy: a whole blob depends on no other, whatever order the index files are read in.
                if entry.base != nil, blobs[entry.id] != nil, bases[entry.id] == nil { continue }
                bases.set(entry.base, for: entry.id)
                blobs[entry.id] = BlobLocation(pack: number, kind: entry.kind, compressed: entry.compressed, offset: entry.offset,
                                               length: entry.length, rawLength: entry.rawLength, inner: entry.inner)
            }
        }
    }

    static func packPath(_ name: String) -> String { "data/\(name.prefix(2))/\(name)" }

    /// Index entries held in memory before they are merged into the index cache (a parameter for the tests).
    let foldLimit: Int

    private init(storage: any RepositoryStorage, keys: MasterKeys, foldLimit: Int = IndexedBlobs.foldLimit, cacheDirectory: String? = nil) {
        self.storage = storage
        self.keys = keys
        idKey = HMACSHA256.Key(keys.idKey)
        dataCipher = AES256GCM.Key(keys.dataKey)
        self.foldLimit = foldLimit
        indexState = ReadWriteLock(LoadedIndex())
        self.cacheDirectory = cacheDirectory ?? storage.defaultCacheDirectory
    }

    /// Creates a new repository. With a key file source, the key file is created (0600) when it does not exist yet.
    @discardableResult
    public static func initialize(storage: any RepositoryStorage, keySource: KeySource) throws -> Repository {
        if try storage.size("config") != nil {
            throw RepositoryError("a repository already exists at \(storage.location)")
        }
        let secret = try keySource.secret(create: true)
        let keys = MasterKeys.generate()
        let sealed = try SealedKeyFile.seal(keys, with: keySource, secret: secret)
        try storage.write("keys/" + Hex.encode(SecureRandom.bytes(16)), Array(try JSONEncoder().encode(sealed)))
        let config: [String: String] = ["version": String(repositoryFormatVersion), "id": Hex.encode(SecureRandom.bytes(16))]
        try storage.write("config", Array(try JSONEncoder().encode(config)))
        return Repository(storage: storage, keys: keys)
    }

    /// Opens an existing repository and loads its index. A local repository keeps its caches inside, in `cache/`.
    public static func open(storage: any RepositoryStorage, keySource: KeySource) throws -> Repository {
        try open(storage: storage, keySource: keySource, foldLimit: IndexedBlobs.foldLimit, cacheDirectory: nil)
    }

    /// Opens an existing repository, keeping its index and snapshot caches in the local directory `cacheDirectory`
    /// (created 0700 when needed): how a remote repository gets the same bounded memory and cheap re-opens as a local
    /// one. The caches are derived from the repository's authenticated files and can be deleted at any time.
    public static func open(storage: any RepositoryStorage, keySource: KeySource, cacheDirectory: String) throws -> Repository {
        try open(storage: storage, keySource: keySource, foldLimit: IndexedBlobs.foldLimit, cacheDirectory: cacheDirectory)
    }

    static func open(storage: any RepositoryStorage, keySource: KeySource, foldLimit: Int, cacheDirectory: String? = nil) throws -> Repository {
        guard try storage.size("config") != nil else {
            throw RepositoryError("no repository at \(storage.location); create one with `fleetkeep-agent repo init`")
        }
        let version = try formatVersion(of: try storage.read("config"), at: storage.location)
        guard readableRepositoryFormatVersions.contains(version) else {
            throw RepositoryError("repository at \(storage.location) has format version \(version); this agent reads versions "
                + "\(readableRepositoryFormatVersions.lowerBound) to \(readableRepositoryFormatVersions.upperBound)"
                + (version > repositoryFormatVersion ? ", so upgrade the agent to use it" : ""))
        }
        let keys = try openKeys(storage: storage, secret: try keySource.secret(create: false))
        let repository = Repository(storage: storage, keys: keys, foldLimit: foldLimit, cacheDirectory: cacheDirectory)
        try repository.reloadIndex()
        return repository
    }

    /// The format version in a repository's `config`. Only the version is read, as a string or a number: a newer
    /// agent may add fields of any type, and such a repository must be refused as newer ("upgrade the agent"),
    /// not called damaged.
    static func formatVersion(of config: [UInt8], at location: String) throws -> Int {
        guard let declared = try? JSONDecoder().decode(DeclaredVersion.self, from: Data(config)) else {
            throw RepositoryError("repository config at \(location) is damaged (not a JSON object with a version); "
                + "copy `config` from the off-site copy, which holds the same file")
        }
        if let version = Int(declared.text) { return version }
        // Not a whole number: a version scheme this agent does not know, so a newer one.
        throw RepositoryError("repository at \(location) has format version \(declared.text.prefix(20).debugDescription), which this agent "
            + "does not know; upgrade the agent to use it")
    }

    /// The `version` of a config, written as a string (as this agent does) or as a number; other fields are ignored.
    private struct DeclaredVersion: Decodable {
        let text: String
        enum Keys: String, CodingKey { case version }
        init(from decoder: any Decoder) throws {
            let container = try decoder.container(keyedBy: Keys.self)
            if let text = try? container.decode(String.self, forKey: .version) {
                self.text = text
            } else if let number = try? container.decode(Int.self, forKey: .version) {
                text = String(number)
            } else {
                text = String(try container.decode(Double.self, forKey: .version))
            }
        }
    }

    /// Opens the master keys with `secret`, trying every entry of `keys/`. A `keys/` entry that is not a key entry
    /// at all (damaged) is named as such; only when every entry is intact and none opens is it "wrong key". A key
    /// entry that is intact JSON but whose sealed bytes were changed cannot be told from a wrong key (the GCM tag
    /// fails either way), so that message mentions both.
    static func openKeys(storage: any RepositoryStorage, secret: [UInt8]) throws -> MasterKeys {
        let names = try storage.list("keys")
        var damaged: [String] = []
        for name in names {
            // A storage error (unreadable file) is thrown as it is; only bytes that are not a key entry are damage.
            let bytes = try storage.read("keys/" + name)
            guard let file = try? JSONDecoder().decode(SealedKeyFile.self, from: Data(bytes)), file.isWellFormed else {
                damaged.append(name)
                continue
            }
            if let keys = try file.open(secret) { return keys }
        }
        let fix = "copy keys/ from the off-site copy (it holds the same key entries), or open the repository with a key whose entry is intact"
        if !damaged.isEmpty {
            let list = damaged.map { "keys/\($0)" }.joined(separator: ", ")
            let others = names.count - damaged.count
            throw RepositoryError("key entry \(list) of the repository at \(storage.location) is damaged (not a readable key entry)"
                + (others > 0 ? ", and the given key opens none of the \(others) other entries" : "") + "; " + fix)
        }
        guard !names.isEmpty else {
            throw RepositoryError("the repository at \(storage.location) has no key entries (keys/ is empty or missing); " + fix)
        }
        throw RepositoryError("wrong key: the given key file or passphrase opens none of the \(names.count) key entries of the repository at "
            + "\(storage.location) (if it is the right key, its entry in keys/ may be damaged: " + fix + ")")
    }

    // MARK: Index

    /// Index files hold, per pack, its name (32 bytes) and its entries; the whole is zstd-compressed and sealed.
    static let indexAAD = Array("fleetkeep index".utf8)

    /// The index cache could not be written; the index is then held in memory.
    struct IndexCacheUnavailable: Error {}

    /// Loads the index: from the index cache plus the index files it does not cover yet, or, without a usable
    /// cache (none yet, an index file it covers is gone after a prune, `rebuildCache`), from every index file,
    /// writing a new cache as it goes. Either way at most `foldLimit` entries are held in memory.
    /// Entries of the packs in `excludedPacks` (packs that are gone) are left out, and so is every index file that
    /// does not authenticate (named in `damagedIndexFiles`).
    func reloadIndex(rebuildCache: Bool = false, excludedPacks: Set<String> = []) throws {
        // Opened groups are from before: a reload (verify, prune) must read the packs as they are now.
        openedGroups.withLock { $0.removeAll() }
        let names = try storage.list("index")
        let reader = IndexFileReader(decompressor: ZstdDecompressor(), excludedPacks: excludedPacks)
        var loaded: LoadedIndex?
        if let cachePath = indexCachePath {
            if !rebuildCache, excludedPacks.isEmpty, try !excludedPackReturned(cachePath: cachePath),
               let cache = IndexCacheFile(path: cachePath), cache.indexFiles.isSubset(of: Set(names)) {
                var fromCache = LoadedIndex(cache: cache)
                for name in names where !cache.indexFiles.contains(name) { try readIndexFile(name, into: &fromCache, reader: reader) }
                if fromCache.blobs.recent.count >= foldLimit { try? fold(&fromCache) }
                loaded = fromCache
            } else {
                do {
                    loaded = try buildIndexCache(from: names, reader: reader)
                } catch is IndexCacheUnavailable {
                    // A read-only repository or a full disk: the index is still readable, only not cached (below).
                }
            }
        }
        if loaded == nil {
            var inMemory = LoadedIndex()
            for name in names { try readIndexFile(name, into: &inMemory, reader: reader) }
            loaded = inMemory
        }
        if let loaded { indexState.write { $0 = loaded } }
    }

    /// Whether a pack whose entries the index cache leaves out (it was gone when the cache was built) is back: put
    /// back from another copy, say. The cache must then be rebuilt with its entries, or prune would take it for an
    /// unindexed pack and delete it.
    private func excludedPackReturned(cachePath: String) throws -> Bool {
        guard let list = FileManager.default.contents(atPath: cachePath + Self.excludedPacksSuffix) else { return false }
        for name in String(decoding: list, as: UTF8.self).split(separator: "\n") where name.count == 64 {
            if try storage.size(Self.packPath(String(name))) != nil { return true }
        }
        return false
    }

    /// Beside the index cache: the packs it leaves out, one name a line.
    static let excludedPacksSuffix = ".excluded-packs"

    private static func writeExcludedPacks(_ packs: Set<String>, cachePath: String) throws {
        let path = cachePath + excludedPacksSuffix
        if packs.isEmpty {
            guard unlink(path) == 0 || errno == ENOENT else { throw IndexCacheUnavailable() }
            return
        }
        do throws(Errno) {
            try AtomicFile.write(Array(packs.sorted().joined(separator: "\n").utf8), to: path, permissions: 0o600, durable: false)
        } catch {
            throw IndexCacheUnavailable()
        }
    }

    /// Index files that were skipped at the last load because they do not authenticate (see `repairIndex`).
    public var damagedIndexFiles: [String] { indexState.read { $0.damagedIndexFiles } }

    /// Reads every index file into a new cache: entries go to sorted run files a batch at a time, and the runs are
    /// merged into the cache at the end, so memory stays at `foldLimit` entries. Throws `IndexCacheUnavailable` when
    /// the cache cannot be written.
    private func buildIndexCache(from names: [String], reader: IndexFileReader) throws -> LoadedIndex {
        guard let cachePath = indexCachePath else { throw IndexCacheUnavailable() }
        do {
            try FileManager.default.createDirectory(atPath: Directory.parentDirectory(of: cachePath),
                                                    withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
        } catch {
            throw IndexCacheUnavailable()
        }
        // Written before the cache: a cache without some packs' entries is never there without this list.
        try Self.writeExcludedPacks(reader.excludedPacks, cachePath: cachePath)
        var loaded = LoadedIndex()
        var runs: [IndexCacheFile] = []
        defer { for run in runs { unlink(run.path) } }
        for name in names {
            try readIndexFile(name, into: &loaded, reader: reader)
            if loaded.blobs.recent.count >= foldLimit {
                runs.append(try Self.writeCache(cachePath + ".run\(runs.count)", packs: loaded.packs, indexFiles: [],
                                                sources: [SortedRecords(loaded.recentRecords)]))
                loaded.dropRecent()
            }
        }
        try fold(&loaded, runs: runs)
        return loaded
    }

    /// Merges the cache, `runs` and the in-memory entries into a new index cache, which then covers every index
    /// file loaded.
    private func fold(_ loaded: inout LoadedIndex, runs: [IndexCacheFile] = []) throws {
        guard let cachePath = indexCachePath else { return }
        let sources: [any IndexRecordSource] = (loaded.blobs.cache.map { [CacheFileRecords($0)] } ?? []) + runs.map(CacheFileRecords.init)
            + [SortedRecords(loaded.recentRecords)]
        let cache = try Self.writeCache(cachePath, packs: loaded.packs, indexFiles: loaded.indexFiles, sources: sources)
        // The new cache names every pack, with the same numbers, and holds every base: what was in memory can go.
        loaded.blobs = IndexedBlobs(cache: cache)
        loaded.bases = DeltaBases(cache: cache)
        loaded.packs = PackNames(cache: cache)
    }

    /// Writes a cache file and maps it; `IndexCacheUnavailable` when either fails.
    private static func writeCache(_ path: String, packs: PackNames, indexFiles: [String],
                                   sources: [any IndexRecordSource]) throws -> IndexCacheFile {
        do {
            try IndexCacheFile.write(path: path, packs: packs, indexFiles: indexFiles, sources: sources)
        } catch {
            throw IndexCacheUnavailable()
        }
        guard let file = IndexCacheFile(path: path) else { throw IndexCacheUnavailable() }
        return file
    }

    /// How index files are read during one load.
    private struct IndexFileReader {
        let decompressor: ZstdDecompressor
        let excludedPacks: Set<String>
    }

    /// Adds one index file's entries to `loaded`, all or none: a file that does not authenticate or decode is
    /// recorded in `damagedIndexFiles` and skipped. A storage error (the file cannot be read at all) is thrown.
    private func readIndexFile(_ name: String, into loaded: inout LoadedIndex, reader: IndexFileReader) throws {
        let sealed = try storage.read("index/" + name)
        guard let packs = try? decodeIndexFile(sealed, name: name, decompressor: reader.decompressor) else {
            loaded.damagedIndexFiles.append(name)
            return
        }
        for (pack, entries) in packs where !reader.excludedPacks.contains(pack) { loaded.add(pack: pack, entries: entries) }
        loaded.indexFiles.append(name)
    }

    /// An index file's packs and their entries; throws when it does not authenticate or decode.
    func decodeIndexFile(_ sealed: [UInt8], name: String, decompressor: ZstdDecompressor) throws -> [(pack: String, entries: [PackEntry])] {
        let what = "index file index/\(name.prefix(16))"
        let plain: [UInt8]
        do {
            plain = try decompressor.decompress(try dataCipher.open(sealed, aad: Self.indexAAD), maxOutputSize: 1 << 30)
        } catch {
            throw RepositoryError("\(what) is damaged: it does not authenticate (flipped bytes or truncation)")
        }
        var reader = ByteReader(plain, what: what)
        var packs: [(pack: String, entries: [PackEntry])] = []
        while !reader.isAtEnd {
            let pack = try reader.id()
            packs.append((pack.hex, try BinaryCodec.decode(&reader)))
        }
        return packs
    }

    /// Writes an index file for `packs` and adds them to the loaded index.
    @discardableResult
    func writeIndex(_ packs: [(pack: String, entries: [PackEntry])]) throws -> String? {
        guard !packs.isEmpty else { return nil }
        var plain = ByteWriter()
        for (pack, entries) in packs {
            guard let id = BlobID(hex: pack) else { throw RepositoryError("internal error: pack name \(pack) is not 64 hex digits") }
            plain.id(id)
            BinaryCodec.encode(entries, into: &plain)
        }
        let sealed = try dataCipher.seal(try Zstd.compress(plain.bytes), aad: Self.indexAAD)
        let name = SHA256.hex(sealed)
        try storage.write("index/" + name, sealed)
        indexState.write { state in
            for (pack, entries) in packs { state.add(pack: pack, entries: entries) }
            state.indexFiles.append(name)
            // A long first backup adds entries at every checkpoint: fold them into the cache before they add up.
            // A cache that cannot be written (full disk) only means the entries stay in memory.
            if state.blobs.recent.count >= foldLimit { try? fold(&state) }
        }
        return name
    }

    /// Entries not in the cache are read from their index files at every open (decrypted, decompressed, hashed
    /// into memory: about a microsecond each), while a fold rewrites the whole cache once. So a backup folds what it
    /// added once that reaches a quarter of the cache, and at least `IndexedBlobs.minimumEarlyFold` entries: a new
    /// repository is mapped from its first backup on, and a large one is not rewritten after every small backup
    /// (`foldLimit` still bounds what stays in memory). A cache that cannot be written changes nothing.
    func foldIndexIfWorthwhile(minimum: Int = IndexedBlobs.minimumEarlyFold) {
        indexState.write { state in
            let recent = state.blobs.recent.count
            guard recent > 0, recent >= max(minimum, (state.blobs.cache?.count ?? 0) / 4) else { return }
            try? fold(&state)
        }
    }

    /// Whether `id` is stored as far as the index knows: indexed, and for a delta, every base down its chain
    /// indexed too. Backups deduplicate only against such blobs (a delta on a lost base is stored again).
    func isIndexed(_ id: BlobID) -> Bool {
        indexState.read { $0.isUsable(id) }
    }

    /// `isIndexed` for every id, under one lock: an unchanged file's blobs, checked before the file is skipped.
    func areIndexed(_ ids: [BlobID]) -> Bool {
        indexState.read { state in ids.allSatisfy(state.isUsable) }
    }

    /// See `LoadedIndex.deltaDepth`.
    func indexSnapshotDeltaDepth(_ id: BlobID) -> Int? { indexState.read { $0.deltaDepth(id) } }


    func location(of id: BlobID) -> (pack: String, location: BlobLocation)? {
        indexState.read { state in
            state.blobs[id].map { (state.packs[Int($0.pack)], $0) }
        }
    }

    var indexSnapshot: LoadedIndex { indexState.read { $0 } }

    /// A group of small blobs, named by where it is stored.
    struct BlobGroup: Equatable {
        let pack: Int32
        let offset: UInt32
    }

    /// The group of small blobs `id` belongs to; nil for a blob stored on its own.
    func group(of id: BlobID) -> BlobGroup? {
        indexState.read { state in
            state.blobs[id].flatMap { $0.inner == nil ? nil : BlobGroup(pack: $0.pack, offset: $0.offset) }
        }
    }

    // MARK: Blobs

    func decrypt<D: ContiguousBytes>(_ sealed: D, what: @autoclosure () -> String) throws -> [UInt8] {
        do {
            return try dataCipher.open(sealed)
        } catch {
            throw RepositoryError("\(what()) is damaged: it does not authenticate (flipped bytes or truncation)")
        }
    }

    /// Longest chain of delta blobs (each compressed against the one before) a backup may create. Restoring a
    /// delta decompresses its whole chain, so this bounds that work; 32 daily dumps make about one whole copy a month.
    static let maximumDeltaDepth = 32

    /// Reads, decrypts, decompresses and authenticates one blob (for a delta, its chain of bases first).
    func loadBlob(_ id: BlobID, decompressor: ZstdDecompressor) throws -> [UInt8] {
        try loadBlob(id, decompressor: decompressor, depth: 0)
    }

    private func loadBlob(_ id: BlobID, decompressor: ZstdDecompressor, depth: Int) throws -> [UInt8] {
        guard let (pack, location) = location(of: id) else {
            throw RepositoryError("blob \(id) is missing from the index (repository incomplete; run verify)")
        }
        if let base = indexState.read({ $0.bases[id] }) {
            guard depth < Self.maximumDeltaDepth + 1 else {
                throw RepositoryError("blob \(id) sits on a chain of deltas longer than \(Self.maximumDeltaDepth) (damaged or looping index)")
            }
            let prefix = try loadBlob(base, decompressor: decompressor, depth: depth + 1)
            let sealed = try readSealed(id, pack: pack, location: location)
            return try openBlob(sealed, id: id, location: location, pack: pack, decompressor: decompressor, prefix: prefix)
        }
        if location.inner != nil { return try loadGroupMember(id, pack: pack, location: location, decompressor: decompressor) }
        return try openBlob(try readSealed(id, pack: pack, location: location), id: id, location: location, pack: pack, decompressor: decompressor)
    }

    /// A member of a group: the group is read and opened once and kept among the last few, because restore asks
    /// for its members one after another (and from several threads).
    private func loadGroupMember(_ id: BlobID, pack: String, location: BlobLocation, decompressor: ZstdDecompressor) throws -> [UInt8] {
        let key = "\(pack)/\(location.offset)"
        let plaintext: [UInt8]
        if let cached = openedGroups.withLock({ groups in groups.last { $0.key == key }?.plaintext }) {
            plaintext = cached
        } else {
            plaintext = try openGroup(try readSealed(id, pack: pack, location: location), pack: pack, decompressor: decompressor)
            openedGroups.withLock { groups in
                groups.append((key, plaintext))
                if groups.count > 8 { groups.removeFirst() }
            }
        }
        return try groupMember(id, of: plaintext, location: location, pack: pack)
    }

    /// Decrypts and decompresses a group's sealed bytes to the plaintexts of its members.
    func openGroup<D: ContiguousBytes>(_ sealed: D, pack: String, decompressor: ZstdDecompressor) throws -> [UInt8] {
        let payload = try decrypt(sealed, what: "a group of small blobs in pack \(pack.prefix(16))")
        do {
            return try decompressor.decompress(payload, maxOutputSize: PackEntry.maximumGroupSize)
        } catch {
            throw RepositoryError("a group of small blobs in pack \(pack.prefix(16)) does not decompress (damaged)")
        }
    }

    /// One member's plaintext out of its group's, authenticated by its id.
    func groupMember(_ id: BlobID, of group: [UInt8], location: BlobLocation, pack: String) throws -> [UInt8] {
        let start = Int(location.inner ?? 0), end = start + Int(location.rawLength)
        guard end <= group.count else { throw RepositoryError("blob \(id) lies outside its group in pack \(pack.prefix(16)) (damaged)") }
        let plain = Array(group[start..<end])
        guard idKey.authenticate(plain) == id.bytes else {
            throw RepositoryError("blob \(id) in pack \(pack.prefix(16)) does not match its id (damaged)")
        }
        return plain
    }

    /// A hint that blob `id` will be loaded soon (see `RepositoryStorage.prefetch`); nothing when it is unknown.
    func prefetch(_ id: BlobID) {
        guard let (pack, location) = location(of: id) else { return }
        storage.prefetch(Self.packPath(pack), offset: Int(location.offset), length: Int(location.length))
    }

    private func readSealed(_ id: BlobID, pack: String, location: BlobLocation) throws -> [UInt8] {
        do {
            return try storage.read(Self.packPath(pack), offset: Int(location.offset), length: Int(location.length))
        } catch {
            throw RepositoryError("blob \(id) cannot be read from pack \(pack.prefix(16)): \(error)")
        }
    }

    /// `prefix` is the base's plaintext for a delta blob, nil otherwise.
    func openBlob<D: ContiguousBytes>(_ sealed: D, id: BlobID, location: BlobLocation, pack: String, decompressor: ZstdDecompressor,
                                      prefix: [UInt8]? = nil) throws -> [UInt8] {
        let payload = try decrypt(sealed, what: "blob \(id) in pack \(pack.prefix(16))")
        let plain: [UInt8]
        if location.compressed {
            do {
                if let prefix {
                    plain = try decompressor.decompress(payload, maxOutputSize: Int(location.rawLength), prefix: prefix)
                } else {
                    plain = try decompressor.decompress(payload, maxOutputSize: Int(location.rawLength))
                }
            } catch {
                throw RepositoryError("blob \(id) in pack \(pack.prefix(16)) does not decompress (damaged)")
            }
        } else {
            plain = payload
        }
        guard plain.count == Int(location.rawLength), idKey.authenticate(plain) == id.bytes else {
            throw RepositoryError("blob \(id) in pack \(pack.prefix(16)) does not match its id (damaged)")
        }
        return plain
    }

    func blobID<D: ContiguousBytes>(_ data: D) -> BlobID { BlobID(bytes: idKey.authenticate(data)) }

    func loadTree(_ id: BlobID, decompressor: ZstdDecompressor = ZstdDecompressor()) throws -> Tree {
        guard location(of: id)?.location.kind != .data else { throw RepositoryError("blob \(id) is file data, not a directory listing (damaged)") }
        return try Tree(decoding: try loadBlob(id, decompressor: decompressor), what: "tree \(id)")
    }

    func loadTree(_ hex: String, decompressor: ZstdDecompressor = ZstdDecompressor()) throws -> Tree {
        guard let id = BlobID(hex: hex) else { throw RepositoryError("snapshot refers to a malformed tree id \(hex.debugDescription)") }
        return try loadTree(id, decompressor: decompressor)
    }

    // MARK: Snapshots

    /// Every snapshot, oldest first. Damaged snapshot files are reported in `damaged`.
    public func snapshots() throws -> [Snapshot] {
        try snapshotsWithDamage().snapshots
    }

    /// Every snapshot, oldest first, and the names of the snapshot files that cannot be read (damaged).
    public func snapshotsReportingDamage() throws -> (snapshots: [Snapshot], damaged: [String]) {
        try snapshotsWithDamage()
    }

    /// Every snapshot and the names of the damaged ones. Snapshot files are read through the local snapshot cache
    /// unless `useCache` is false (verify, which must see the files themselves).
    func snapshotsWithDamage(useCache: Bool = true) throws -> (snapshots: [Snapshot], damaged: [String]) {
        var result: [Snapshot] = []
        var damaged: [String] = []
        let decoder = JSONDecoder()
        decoder.dateDecodingStrategy = UTCTime.jsonDecoding
        let names = try storage.list("snapshots")
        let cache = useCache ? snapshotCache : nil
        let cached = cache?.read() ?? [:]
        var missed = false
        for name in names {
            if let hit = cached[name] {
                result.append(hit)
                continue
            }
            missed = true
            guard let sealed = try? storage.read("snapshots/" + name),
                  let plain = try? dataCipher.open(sealed, aad: Self.snapshotAAD),
                  var snapshot = try? decoder.decode(Snapshot.self, from: Data(plain)) else {
                damaged.append(name)
                continue
            }
            snapshot.id = name
            result.append(snapshot)
        }
        // Rewritten when it missed a snapshot or holds one that is gone (after a backup or a prune).
        if let cache, missed || result.count != cached.count {
            cache.write(result)
        }
        return (result.sorted { ($0.time, $0.id) < ($1.time, $1.id) }, damaged)
    }

    /// Beside the index cache.
    private var snapshotCache: SnapshotCache? { cacheDirectory.map { SnapshotCache(path: $0 + "/snapshots", cipher: dataCipher) } }

    static let snapshotAAD = Array("fleetkeep snapshot".utf8)

    func writeSnapshot(_ snapshot: Snapshot) throws -> String {
        try writeSealedSnapshot(snapshot).name
    }

    private func sealSnapshot(_ snapshot: Snapshot) throws -> (name: String, sealed: [UInt8]) {
        let encoder = JSONEncoder()
        encoder.dateEncodingStrategy = UTCTime.jsonEncoding
        encoder.outputFormatting = [.sortedKeys]
        let sealed = try dataCipher.seal(try encoder.encode(snapshot), aad: Self.snapshotAAD)
        return (SHA256.hex(sealed), sealed)
    }

    private func writeSealedSnapshot(_ snapshot: Snapshot) throws -> (name: String, sealed: [UInt8]) {
        let entry = try sealSnapshot(snapshot)
        try storage.write("snapshots/" + entry.name, entry.sealed)
        return entry
    }

    /// Writes snapshots together (`RepositoryStorage.writeTogether`: on a local disk they are synced as a group and
    /// their directory once, instead of two waits for the device per snapshot) and rewrites the snapshot cache as
    /// `listed` and the new ones, so the next backup finds every snapshot there instead of reading this run's files.
    /// `written` gets each one's index and the snapshot as it will read back from its file (its name as `id`) once
    /// it is durable. If the write fails, the snapshots made durable before the failure are still cached and
    /// reported; of the others, some may be stored, each whole, and the next listing shows them.
    ///
    /// `listed`: every snapshot the caller knows to be in the repository (a backup session: those it listed at its
    /// start and those it wrote since). The cache is not read back first, which cost as much as writing it
    /// (thousands of snapshots on a server of hundreds of accounts). A snapshot another process wrote meanwhile is
    /// left out, and read from its file by the next listing.
    func writeSnapshots(_ snapshots: [Snapshot], listed: [Snapshot], written: (Int, Snapshot) -> Void) throws {
        let sealed = try snapshots.map(sealSnapshot)
        var durable = 0
        defer {
            let stored = (0..<durable).map { index in
                var stored = snapshots[index]
                stored.id = sealed[index].name
                // As the file will read back: its time went through the file's text form.
                stored.time = UTCTime.parse(UTCTime.format(stored.time)) ?? stored.time
                return stored
            }
            if !stored.isEmpty { snapshotCache?.write(listed + stored) }
            for (index, snapshot) in stored.enumerated() { written(index, snapshot) }
        }
        try storage.writeTogether(sealed.map { (path: "snapshots/" + $0.name, data: $0.sealed) }) { durable = min($0, sealed.count) }
    }

    /// Finds a snapshot by id prefix, or "latest" among those whose tags include `tags`.
    public func findSnapshot(_ reference: String, tags: [String: String] = [:]) throws -> Snapshot {
        let matching = try snapshots().filter { snapshot in tags.allSatisfy { snapshot.tags[$0.key] == $0.value } }
        if reference == "latest" {
            guard let latest = matching.last else {
                throw RepositoryError("no snapshot matches \(tags.isEmpty ? "" : "\(tags) ")in \(storage.location); see `fleetkeep-agent snapshots`")
            }
            return latest
        }
        let found = matching.filter { $0.id.hasPrefix(reference) }
        guard found.count == 1 else {
            throw RepositoryError(found.isEmpty ? "no snapshot \(reference) in \(storage.location)" : "snapshot id \(reference) is ambiguous; give more characters")
        }
        return found[0]
    }
}
