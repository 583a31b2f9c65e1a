import Crypto
import Foundation
import Synchronization
import Zstd

/// A deduplicated, compressed, encrypted backup repository on any `RepositoryStorage`.
///
/// Layout: `config`, `keys/`, `data/XX/<pack>`, `index/<id>`, `snapshots/<id>`, `locks/<id>`. See docs/REPOSITORY.md.
public final class Repository: Sendable {
    public let storage: any RepositoryStorage
    let keys: MasterKeys
    private let indexState: Mutex<LoadedIndex>

    struct LoadedIndex {
        var packs: [String] = []
        var packNumbers: [String: Int32] = [:]
        var blobs: [BlobID: BlobLocation] = [:]
        var indexFiles: [String] = []

        mutating func add(pack: String, entries: [PackEntry]) {
            let number: Int32
            if let existing = packNumbers[pack] {
                number = existing
            } else {
                number = Int32(packs.count)
                packs.append(pack)
                packNumbers[pack] = number
            }
            for entry in entries {
                blobs[entry.id] = BlobLocation(pack: number, kind: entry.kind, offset: entry.offset, length: entry.length, rawLength: entry.rawLength)
            }
        }
    }

    static func packPath(_ name: String) -> String { "data/\(name.prefix(2))/\(name)" }

    private init(storage: any RepositoryStorage, keys: MasterKeys) {
        self.storage = storage
        self.keys = keys
        indexState = Mutex(LoadedIndex())
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

    /// Opens an existing repository and loads its index.
    public static func open(storage: any RepositoryStorage, keySource: KeySource) throws -> Repository {
        guard try storage.size("config") != nil else {
            throw RepositoryError("no repository at \(storage.location); create one with `fleetkeep-agent repo init`")
        }
        guard let config = try? JSONDecoder().decode([String: String].self, from: Data(try storage.read("config"))),
              let version = config["version"].flatMap(Int.init) else {
            throw RepositoryError("repository config at \(storage.location) is damaged")
        }
        guard version == repositoryFormatVersion else {
            throw RepositoryError("repository at \(storage.location) has format version \(version); this agent reads version \(repositoryFormatVersion)")
        }
        let secret = try keySource.secret(create: false)
        var opened: MasterKeys?
        for name in try storage.list("keys") {
            guard let file = try? JSONDecoder().decode(SealedKeyFile.self, from: Data(try storage.read("keys/" + name))) else { continue }
            if let keys = try file.open(secret) { opened = keys; break }
        }
        guard let keys = opened else {
            throw RepositoryError("wrong key: the given key file or passphrase does not open the repository at \(storage.location)")
        }
        let repository = Repository(storage: storage, keys: keys)
        try repository.reloadIndex()
        return repository
    }

    // MARK: Index

    func reloadIndex() throws {
        var loaded = LoadedIndex()
        for name in try storage.list("index") {
            let sealed = try storage.read("index/" + name)
            let bytes = try decrypt(sealed, what: "index file index/\(name)")
            let plain = try Zstd.decompress(bytes, maxOutputSize: 1 << 30)
            var offset = 0
            while offset < plain.count {
                guard offset + 32 <= plain.count else { throw RepositoryError("index file index/\(name) is damaged") }
                let pack = Hex.encode(plain[offset..<offset + 32])
                offset += 32
                guard let entries = BinaryCodec.decode(plain, at: &offset) else { throw RepositoryError("index file index/\(name) is damaged") }
                loaded.add(pack: pack, entries: entries)
            }
            loaded.indexFiles.append(name)
        }
        indexState.withLock { $0 = loaded }
    }

    /// Writes an index file for `packs` and adds them to the loaded index.
    func writeIndex(_ packs: [(pack: String, entries: [PackEntry])]) throws -> String? {
        guard !packs.isEmpty else { return nil }
        var plain = [UInt8]()
        for (pack, entries) in packs {
            plain.append(contentsOf: Hex.decode(pack)!)
            BinaryCodec.encode(entries, into: &plain)
        }
        let sealed = try AES256GCM.seal(try Zstd.compress(plain), key: keys.dataKey)
        let name = SHA256.hex(sealed)
        try storage.write("index/" + name, sealed)
        indexState.withLock { state in
            for (pack, entries) in packs { state.add(pack: pack, entries: entries) }
            state.indexFiles.append(name)
        }
        return name
    }

    var knownBlobs: Set<BlobID> { indexState.withLock { Set($0.blobs.keys) } }

    func location(of id: BlobID) -> (pack: String, location: BlobLocation)? {
        indexState.withLock { state in
            state.blobs[id].map { (state.packs[Int($0.pack)], $0) }
        }
    }

    var indexSnapshot: LoadedIndex { indexState.withLock { $0 } }

    // MARK: Blobs

    func decrypt(_ sealed: [UInt8], what: String) throws -> [UInt8] {
        do {
            return try AES256GCM.open(sealed, key: keys.dataKey)
        } catch {
            throw RepositoryError("\(what) is damaged: it does not authenticate (flipped bytes or truncation)")
        }
    }

    /// Reads, decrypts, decompresses and authenticates one blob.
    func loadBlob(_ id: BlobID, decompressor: ZstdDecompressor = ZstdDecompressor()) throws -> [UInt8] {
        guard let (pack, location) = location(of: id) else {
            throw RepositoryError("blob \(id) is missing from the index (repository incomplete; run verify)")
        }
        let sealed = try storage.read(Self.packPath(pack), offset: Int(location.offset), length: Int(location.length))
        return try openBlob(sealed, id: id, rawLength: Int(location.rawLength), pack: pack, decompressor: decompressor)
    }

    func openBlob(_ sealed: [UInt8], id: BlobID, rawLength: Int, pack: String, decompressor: ZstdDecompressor) throws -> [UInt8] {
        let payload = try decrypt(sealed, what: "blob \(id) in pack \(pack.prefix(16))")
        guard let flag = payload.first else { throw RepositoryError("blob \(id) is empty") }
        let plain: [UInt8]
        if flag == 1 {
            plain = try payload.withUnsafeBytes { try decompressor.decompress(UnsafeRawBufferPointer(rebasing: $0.dropFirst()), maxOutputSize: rawLength) }
        } else {
            plain = Array(payload.dropFirst())
        }
        guard HMACSHA256.authenticate(plain, key: keys.idKey) == id.bytes else {
            throw RepositoryError("blob \(id) in pack \(pack.prefix(16)) does not match its id (damaged)")
        }
        return plain
    }

    func blobID<D: ContiguousBytes>(_ data: D) -> BlobID { BlobID(bytes: HMACSHA256.authenticate(data, key: keys.idKey)) }

    func loadTree(_ hex: String) throws -> Tree {
        guard let id = BlobID(hex: hex) else { throw RepositoryError("snapshot refers to a malformed tree id") }
        let bytes = try loadBlob(id)
        do {
            return try JSONDecoder().decode(Tree.self, from: Data(bytes))
        } catch {
            throw RepositoryError("tree \(id) is not a valid directory listing")
        }
    }

    // MARK: Snapshots

    /// Every snapshot, oldest first. Damaged snapshot files are reported in `damaged`.
    public func snapshots() throws -> [Snapshot] {
        try snapshotsWithDamage().snapshots
    }

    func snapshotsWithDamage() throws -> (snapshots: [Snapshot], damaged: [String]) {
        var result: [Snapshot] = []
        var damaged: [String] = []
        let decoder = JSONDecoder()
        decoder.dateDecodingStrategy = .custom { decoder in
            let text = try decoder.singleValueContainer().decode(String.self)
            guard let date = SnapshotTime.parse(text) else {
                throw DecodingError.dataCorrupted(.init(codingPath: decoder.codingPath, debugDescription: "bad time \(text)"))
            }
            return date
        }
        for name in try storage.list("snapshots") {
            guard let sealed = try? storage.read("snapshots/" + name),
                  let plain = try? AES256GCM.open(sealed, key: keys.dataKey),
                  var snapshot = try? decoder.decode(Snapshot.self, from: Data(plain)) else {
                damaged.append(name)
                continue
            }
            snapshot.id = name
            result.append(snapshot)
        }
        return (result.sorted { $0.time < $1.time }, damaged)
    }

    func writeSnapshot(_ snapshot: Snapshot) throws -> String {
        let encoder = JSONEncoder()
        encoder.dateEncodingStrategy = .custom { date, encoder in
            var container = encoder.singleValueContainer()
            try container.encode(SnapshotTime.format(date))
        }
        encoder.outputFormatting = [.sortedKeys]
        let sealed = try AES256GCM.seal(try encoder.encode(snapshot), key: keys.dataKey)
        let name = SHA256.hex(sealed)
        try storage.write("snapshots/" + name, sealed)
        return name
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

/// Snapshot times are ISO 8601 with milliseconds, so two backups in the same second still sort in order.
enum SnapshotTime {
    static func format(_ date: Date) -> String {
        date.formatted(.iso8601.year().month().day().time(includingFractionalSeconds: true).timeZone(separator: .omitted))
    }

    static func parse(_ text: String) -> Date? {
        (try? Date(text, strategy: .iso8601.year().month().day().time(includingFractionalSeconds: true).timeZone(separator: .omitted)))
            ?? (try? Date(text, strategy: .iso8601))
    }
}
