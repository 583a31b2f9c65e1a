@testable import BackupEngine
import Crypto
import Foundation
import Testing
import TestSupport

/// Small files stored as groups: one zstd frame for many small blobs.
struct GroupTests {
    /// `count` small text files (compressible, each different) in `directory`.
    func writeSmallFiles(_ directory: String, count: Int, seed: Int) throws {
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        for index in 0..<count {
            let text = (0..<200).map { "line \($0) of file \(index) seed \(seed): <?php echo $value_\($0 * index); ?>\n" }.joined()
            try Data(text.utf8).write(to: URL(fileURLWithPath: "\(directory)/page-\(index).php"))
        }
    }

    func files(_ repository: Repository, _ tree: Tree, _ prefix: String = "") throws -> [(path: String, node: TreeNode)] {
        try tree.nodes.flatMap { node -> [(path: String, node: TreeNode)] in
            let path = prefix.isEmpty ? node.name : prefix + "/" + node.name
            if let subtree = node.subtree { return try files(repository, try repository.loadTree(subtree), path) }
            return node.kind == .file ? [(path, node)] : []
        }
    }

    @Test func smallFilesAreGroupedAndComeBackExactly() throws {
        let scene = try EngineScene(accounts: 1, sizeMB: 1)
        let repository = try scene.initialize()
        let source = scene.scratch.appending("site")
        try writeSmallFiles(source, count: 120, seed: 1)
        let snapshot = try repository.backup(directory: source, options: BackupOptions(tags: ["kind": "files"]))
        let all = try files(repository, try repository.loadTree(snapshot.tree))
        let locations = try all.map { try #require(repository.location(of: $0.node.content[0])) }
        #expect(locations.filter { $0.location.inner != nil }.count > 100, "small files were not grouped")
        #expect(Set(locations.map { "\($0.pack)/\($0.location.offset)" }).count < 20, "groups hold one file each")
        // Grouped, the 120 files take far less than compressed one by one would (each ~12 KiB of similar lines).
        #expect(snapshot.summary.bytesStored * 8 < snapshot.summary.bytesAdded, "\(snapshot.summary)")
        let target = scene.scratch.appending("out")
        #expect(try repository.restore(snapshot, target: target).errors.isEmpty)
        #expect(try scene.manifest(target) == scene.manifest(source))
        let fresh = try scene.open()
        #expect(try fresh.verify(readData: true).isHealthy)
        #expect(try fresh.restore(snapshot, target: target + "2").files == 120)
    }

    @Test func aFlippedByteInAGroupNamesEveryMemberAndSparesTheRest() throws {
        let scene = try EngineScene(accounts: 1, sizeMB: 1)
        let repository = try scene.initialize()
        let source = scene.scratch.appending("site")
        try writeSmallFiles(source + "/a", count: 60, seed: 2)
        try writeRandomFiles(source + "/b", count: 3, size: 300_000, prefix: "media")
        let snapshot = try repository.backup(directory: source, options: BackupOptions(tags: ["kind": "files"]))
        let all = try files(repository, try repository.loadTree(snapshot.tree))
        let (victimPath, victim) = try #require(all.first { $0.path.hasPrefix("a/") })
        let (pack, location) = try #require(repository.location(of: victim.content[0]))
        #expect(location.inner != nil)
        let members = try all.filter {
            let other = try #require(repository.location(of: $0.node.content[0]))
            return other.pack == pack && other.location.offset == location.offset && other.location.inner != nil
        }.map(\.path)
        #expect(members.count > 1)
        // Restore once before the damage, so this repository object holds the group opened.
        #expect(try repository.restore(snapshot, target: scene.scratch.appending("before")).errors.isEmpty)
        try scene.flipByte(inPack: pack, at: Int(location.offset) + 20)

        let report = try repository.verify(readData: true)
        #expect(!report.isHealthy)
        #expect(Set(report.damagedFiles[snapshot.id] ?? []) == Set(members), "verify should name exactly the group's files")
        // After verify, the same object reads the packs as they are now, not the group it opened before.
        let restored = try repository.restore(snapshot, target: scene.scratch.appending("out"))
        #expect(Set(restored.errors.compactMap { $0.split(separator: ":").first.map(String.init) }) == Set(members))
        #expect(restored.files == all.count - members.count)
        #expect(victimPath.hasPrefix("a/"))
    }

    @Test func pruneKeepsTheLiveMembersOfARewrittenGroup() throws {
        let scene = try EngineScene(accounts: 1, sizeMB: 1)
        let repository = try scene.initialize()
        let source = scene.scratch.appending("site")
        try writeSmallFiles(source, count: 80, seed: 3)
        _ = try repository.backup(directory: source, options: BackupOptions(tags: ["kind": "files"]))
        // Most files change: most members of the first backup's groups die, a few stay live.
        for index in 0..<80 where index % 8 != 0 { try FileManager.default.removeItem(atPath: "\(source)/page-\(index).php") }
        try writeSmallFiles(source + "/new", count: 40, seed: 4)
        let second = try repository.backup(directory: source, options: BackupOptions(tags: ["kind": "files"]))
        let report = try repository.prune(policy: { _ in RetentionPolicy(keepLast: 1) }, dryRun: false)
        #expect(report.packsRewritten + report.packsDeleted > 0, "\(report)")
        let reopened = try scene.open()
        #expect(try reopened.verify(readData: true).isHealthy)
        let target = scene.scratch.appending("out")
        #expect(try reopened.restore(second, target: target).errors.isEmpty)
        #expect(try scene.manifest(target) == scene.manifest(source))
    }

    @Test func aGroupEntryThatIsAlsoADeltaIsRefusedAsDamaged() throws {
        var out = ByteWriter()
        BinaryCodec.encode([PackEntry(id: BlobID(bytes: [UInt8](repeating: 7, count: 32)), kind: .data, compressed: true, offset: 0,
                                      length: 10, rawLength: 5, base: BlobID(bytes: [UInt8](repeating: 8, count: 32)), inner: 3)], into: &out)
        var reader = ByteReader(out.bytes, what: "test header")
        #expect(throws: RepositoryError.self) { _ = try BinaryCodec.decode(&reader) }
        var beyond = ByteWriter()
        BinaryCodec.encode([PackEntry(id: BlobID(bytes: [UInt8](repeating: 7, count: 32)), kind: .data, compressed: true, offset: 0,
                                      length: 10, rawLength: 5, inner: UInt32(PackEntry.maximumGroupSize))], into: &beyond)
        var beyondReader = ByteReader(beyond.bytes, what: "test header")
        #expect(throws: RepositoryError.self) { _ = try BinaryCodec.decode(&beyondReader) }
    }
}
