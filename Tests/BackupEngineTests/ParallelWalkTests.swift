@testable import BackupEngine
import Foundation
import Testing
import TestSupport

/// The tree scanner lists directories on several threads ahead of the walk; the snapshot must still hold every
/// entry exactly once, with its contents, and be the same snapshot whatever the scanner's threads and bounds.
struct ParallelWalkTests {
    /// A tree with a chain of 60 nested directories and one directory of 3000 entries (files, directories with a
    /// file each, symlinks), plus a few ordinary accounts' worth of files.
    static func makeTree(at home: String) throws {
        let manager = FileManager.default
        var deep = home + "/deep"
        for level in 0..<60 {
            deep += "/level\(level)"
            try manager.createDirectory(atPath: deep, withIntermediateDirectories: true)
            try Data("file at level \(level)\n".utf8).write(to: URL(fileURLWithPath: deep + "/file"))
        }
        let wide = home + "/wide"
        try manager.createDirectory(atPath: wide, withIntermediateDirectories: true)
        for index in 0..<3000 {
            let path = wide + String(format: "/entry%04d", index)
            switch index % 6 {
            case 0:
                try manager.createDirectory(atPath: path, withIntermediateDirectories: false)
                try Data("inside \(index)\n".utf8).write(to: URL(fileURLWithPath: path + "/inner"))
            case 1:
                try manager.createSymbolicLink(atPath: path, withDestinationPath: "entry\(index - 1)/inner")
            default:
                // Sizes from empty to a few chunks' worth of small files.
                let bytes = [UInt8]((0..<(index * 37 % 5000)).map { UInt8(truncatingIfNeeded: $0 &* 31 &+ index) })
                try Data(bytes).write(to: URL(fileURLWithPath: path))
            }
        }
    }

    /// The test tree at `scratch/home` and a new repository at `scratch/repo`.
    static func treeAndRepository(in scratch: TemporaryDirectory) throws -> (home: String, repository: Repository) {
        let home = scratch.appending("home")
        try makeTree(at: home)
        let storage = LocalStorage(root: scratch.appending("repo"))
        try Repository.initialize(storage: storage, keySource: .keyFile(scratch.appending("key")))
        return (home, try Repository.open(storage: storage, keySource: .keyFile(scratch.appending("key"))))
    }

    /// Every entry under `root` by relative path: its kind and its content (file bytes, link target).
    static func entries(under root: String) throws -> [String: String] {
        var result: [String: String] = [:]
        func visit(_ relative: String) throws {
            let path = relative.isEmpty ? root : root + "/" + relative
            for name in try FileManager.default.contentsOfDirectory(atPath: path) {
                let child = relative.isEmpty ? name : relative + "/" + name
                let full = root + "/" + child
                var info = stat()
                #expect(lstat(full, &info) == 0)
                switch info.st_mode & S_IFMT {
                case S_IFDIR:
                    result[child] = "directory"
                    try visit(child)
                case S_IFLNK:
                    result[child] = "link " + (try FileManager.default.destinationOfSymbolicLink(atPath: full))
                default:
                    result[child] = "file " + (try Data(contentsOf: URL(fileURLWithPath: full))).base64EncodedString()
                }
            }
        }
        try visit("")
        return result
    }

    /// Every path in a snapshot, counting how many times each was seen.
    static func snapshotPaths(_ repository: Repository, _ snapshot: Snapshot) throws -> [String: Int] {
        var seen: [String: Int] = [:]
        func visit(_ tree: Tree, _ prefix: String) throws {
            for node in tree.nodes {
                let path = prefix.isEmpty ? node.name : prefix + "/" + node.name
                seen[path, default: 0] += 1
                if node.kind == .directory, let subtree = node.subtree { try visit(try repository.loadTree(subtree), path) }
            }
        }
        try visit(try repository.loadTree(snapshot.tree), "")
        return seen
    }

    @Test func deepAndWideTreesAreBackedUpWithEveryEntryOnce() throws {
        let scratch = TemporaryDirectory(prefix: "fk-walk")
        let home = scratch.appending("home")
        try Self.makeTree(at: home)
        try HostingFixture.create(root: scratch.appending("server"), accounts: 2, sizeMB: 2, seed: 5)
        try FileManager.default.moveItem(atPath: scratch.appending("server/home"), toPath: home + "/accounts")
        let storage = LocalStorage(root: scratch.appending("repo"))
        try Repository.initialize(storage: storage, keySource: .keyFile(scratch.appending("key")))
        let repository = try Repository.open(storage: storage, keySource: .keyFile(scratch.appending("key")))

        let snapshot = try repository.backup(directory: home, options: BackupOptions(tags: ["kind": "files"]))
        #expect(snapshot.summary.errors.isEmpty, "\(snapshot.summary.errors)")
        let source = try Self.entries(under: home)
        #expect(source.count > 3000 + 60 + 500)

        let seen = try Self.snapshotPaths(repository, snapshot)
        #expect(Set(seen.keys) == Set(source.keys), "missing: \(Set(source.keys).subtracting(seen.keys).sorted().prefix(5)), extra: \(Set(seen.keys).subtracting(source.keys).sorted().prefix(5))")
        #expect(seen.values.allSatisfy { $0 == 1 }, "seen more than once: \(seen.filter { $0.value != 1 }.keys.sorted().prefix(5))")

        let target = scratch.appending("restore")
        #expect(try repository.restore(snapshot, target: target).errors.isEmpty)
        let restored = try Self.entries(under: target)
        #expect(restored.count == source.count)
        for (path, content) in source where restored[path] != content {
            Issue.record("restored \(path) differs from the source")
        }

        // An unchanged re-run reads nothing and makes the same tree.
        let again = try repository.backup(directory: home, options: BackupOptions(tags: ["kind": "files"]))
        #expect(again.summary.filesRead == 0)
        #expect(again.tree == snapshot.tree)
    }

    @Test func snapshotDoesNotDependOnTheScannersThreadsOrBounds() throws {
        let scratch = TemporaryDirectory(prefix: "fk-walk")
        let (home, repository) = try Self.treeAndRepository(in: scratch)
        var trees: Set<String> = []
        // One lister with a window of one directory and no read-ahead is (nearly) the serial walk; then the default;
        // then many listers with a tiny read-ahead bound, started at once and started as the disk asks for them.
        // Different tags: no parent, so every file is read each time.
        for (index, limits) in [TreeScanner.Limits(threads: 1, directoryWindow: 1, readAheadBytes: 0),
                                TreeScanner.Limits(),
                                TreeScanner.Limits(threads: 16, initialThreads: 16, directoryWindow: 4, readAheadBytes: 4096),
                                TreeScanner.Limits(threads: 16, initialThreads: 1, directoryWindow: 4, readAheadBytes: 4096)].enumerated() {
            var options = BackupOptions(tags: ["kind": "files", "run": "\(index)"])
            options.scanning = limits
            let snapshot = try repository.backup(directory: home, options: options)
            #expect(snapshot.summary.errors.isEmpty)
            #expect(snapshot.summary.filesUnchanged == 0)
            trees.insert(snapshot.tree)
        }
        #expect(trees.count == 1, "the snapshot's tree depends on how the scanner ran")
    }

    /// Walks a scanner to its end as the backup does (taking each listing in order) and returns the threads it
    /// started.
    static func scanToTheEnd(_ home: String, limits: TreeScanner.Limits, repository: Repository) throws -> (listers: Int, readAhead: Bool) {
        let descriptor = open(home, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        try #require(descriptor >= 0)
        defer { close(descriptor) }
        let scanner = try TreeScanner(descriptor: descriptor, parentTree: nil, repository: repository, excludes: [], limits: limits)
        defer { scanner.close() }
        func walk(_ directory: ScannedDirectory) throws {
            defer { scanner.finished(directory) }
            guard case .listed(let listing) = try scanner.take(directory) else { return }
            for entry in listing.entries { if let child = entry.child { try walk(child) } }
        }
        try walk(scanner.root)
        return scanner.started
    }

    /// On a warm page cache the scanner keeps to its first listers and starts no read-ahead; once a lister has to
    /// read from the disk, it starts them all. (Dropping the page cache needs root.)
    @Test(.enabled(if: getuid() == 0, "dropping the page cache needs root"))
    func theScannerGrowsOnlyWhenListingReadsFromTheDisk() throws {
        let scratch = TemporaryDirectory(prefix: "fk-walk-grow")
        let (home, repository) = try Self.treeAndRepository(in: scratch)
        let limits = TreeScanner.Limits(threads: 6, initialThreads: 2, directoryWindow: 256, readAheadBytes: 1 << 20)

        _ = try Self.scanToTheEnd(home, limits: limits, repository: repository)  // fills the caches if anything was out
        let warm = try Self.scanToTheEnd(home, limits: limits, repository: repository)
        #expect(warm.listers == 2 && !warm.readAhead)

        sync()
        try Data("3\n".utf8).write(to: URL(fileURLWithPath: "/proc/sys/vm/drop_caches"))
        let cold = try Self.scanToTheEnd(home, limits: limits, repository: repository)
        #expect(cold.listers == 6 && cold.readAhead)
    }
}

/// Excluded paths are looked up by directory (`TreeScanner.namesByDirectory`), not by each entry's whole path.
struct ExcludedPathTests {
    @Test func excludedPathsLeaveOutExactlyTheirEntriesAtAnyDepth() throws {
        let scratch = TemporaryDirectory(prefix: "fk-exclude")
        let home = scratch.appending("home")
        let manager = FileManager.default
        for directory in ["mail/cur", "www/cache/pages", "www/cachet", "www/deep/cache", "cache"] {
            try manager.createDirectory(atPath: home + "/" + directory, withIntermediateDirectories: true)
        }
        for file in ["mail/cur/1", "www/cache/pages/a.html", "www/cachet/kept", "www/deep/cache/kept", "cache/kept", "www/index.php"] {
            try Data("x\n".utf8).write(to: URL(fileURLWithPath: home + "/" + file))
        }
        let storage = LocalStorage(root: scratch.appending("repo"))
        try Repository.initialize(storage: storage, keySource: .keyFile(scratch.appending("key")))
        let repository = try Repository.open(storage: storage, keySource: .keyFile(scratch.appending("key")))

        // "www/cache" leaves out that directory alone (not "www/cachet", not "cache" elsewhere); the paths with an
        // empty part name nothing, as they named nothing when every entry's path was looked up whole.
        let excludes: Set<String> = ["mail", "www/cache", "/cache", "www//deep", "www/deep/"]
        let snapshot = try repository.backup(directory: home, options: BackupOptions(tags: ["kind": "files"], excludes: excludes))
        #expect(snapshot.summary.errors.isEmpty)
        let paths = Set(try ParallelWalkTests.snapshotPaths(repository, snapshot).keys)
        #expect(paths == ["www", "www/cachet", "www/cachet/kept", "www/deep", "www/deep/cache", "www/deep/cache/kept",
                          "www/index.php", "cache", "cache/kept"])
    }

    @Test func namesByDirectorySplitsAtTheLastSlash() {
        #expect(TreeScanner.namesByDirectory(["mail", "a/b/c", "a/b/d", "x/"]) == ["": ["mail"], "a/b": ["c", "d"]])
        #expect(TreeScanner.namesByDirectory(["", "/", "//a", "a//b"]).isEmpty)
        // A "/" then a combining mark: one Character, but still the separator, as in the whole path it names.
        #expect(TreeScanner.namesByDirectory(["a/\u{301}b"]) == ["a": ["\u{301}b"]])
    }
}
