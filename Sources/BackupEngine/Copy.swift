import Crypto
import Foundation

/// The files of a repository, for an off-site copier deciding what the remote lacks.
public struct RepositoryFileList: Codable, Sendable, Equatable {
    /// Repository-relative path -> size in bytes.
    public var files: [String: Int]

    public init(files: [String: Int]) { self.files = files }
}

/// What `Repository.copy` did.
public struct CopyReport: Codable, Sendable {
    public var filesCopied = 0
    public var bytesCopied: Int64 = 0
    public var filesSkipped = 0
    public var filesRemoved = 0
}

extension Repository {
    /// Every file of the repository on `storage`: `config`, `keys/*`, `data/XX/*`, `index/*`, `snapshots/*`
    /// (never `locks/` or temporary files). Every name but `config` is unique to its content (random or a hash),
    /// so a file present on both sides with the same size need not be copied again.
    public static func files(in storage: any RepositoryStorage) throws -> RepositoryFileList {
        var files: [String: Int] = [:]
        func add(_ path: String) throws { if let size = try storage.size(path) { files[path] = size } }
        try add("config")
        for directory in ["keys", "index", "snapshots"] {
            for name in try storage.list(directory) { try add(directory + "/" + name) }
        }
        for sub in try storage.list("data") where sub.count == 2 {
            for name in try storage.list("data/" + sub) { try add("data/" + sub + "/" + name) }
        }
        return RepositoryFileList(files: files)
    }

    /// Makes `destination` a copy of the repository on `source`, transferring only missing (or differently sized)
    /// files. Order keeps every intermediate state of the destination consistent: config and keys, then packs,
    /// then index files, then snapshots; with `mirrorDeletes`, snapshots, then index files, then packs that the
    /// source no longer has are removed last (so what prune freed locally is freed remotely too).
    /// The destination is a full repository: `Repository.open(storage: destination, keySource:)` restores from it.
    public static func copy(from source: any RepositoryStorage, to destination: any RepositoryStorage, mirrorDeletes: Bool = true,
                            progress: (@Sendable (_ path: String, _ bytes: Int) -> Void)? = nil) throws -> CopyReport {
        var report = CopyReport()
        let have = try files(in: source).files
        let remote = try files(in: destination).files
        func rank(_ path: String) -> Int {
            if path == "config" || path.hasPrefix("keys/") { return 0 }
            if path.hasPrefix("data/") { return 1 }
            if path.hasPrefix("index/") { return 2 }
            return 3
        }
        for path in have.keys.sorted(by: { (rank($0), $0) < (rank($1), $1) }) {
            if remote[path] == have[path] && path != "config" {
                report.filesSkipped += 1
                continue
            }
            let bytes = try source.read(path)
            try destination.write(path, bytes)
            report.filesCopied += 1
            report.bytesCopied += Int64(bytes.count)
            progress?(path, bytes.count)
        }
        guard mirrorDeletes else { return report }
        for path in remote.keys.sorted(by: { (-rank($0), $0) < (-rank($1), $1) }) where have[path] == nil && rank(path) > 0 {
            try destination.remove(path)
            report.filesRemoved += 1
        }
        return report
    }

    /// Seals this repository's master keys for one more key file or passphrase (e.g. an escrow passphrase).
    public func addKey(_ source: KeySource) throws {
        let secret = try source.secret(create: true)
        let sealed = try SealedKeyFile.seal(keys, with: source, secret: secret)
        try storage.write("keys/" + Hex.encode(SecureRandom.bytes(16)), Array(try JSONEncoder().encode(sealed)))
    }
}
