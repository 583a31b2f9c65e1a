@testable import BackupEngine
import Crypto
import Foundation
import Synchronization
import Testing
import TestSupport

/// Damage to one file of a repository (a flipped byte, a lost pack) costs what that file held, never the rest:
/// commands go on, verify names the damage, and the next backup stores again what the source still has.
/// Only the engine's existing API is used here; the repair commands have their tests in RepairTests.
struct DamageContainmentTests {
    /// Flips one bit of the file at `path`, `offset` bytes from its start (from its end when negative).
    static func flipByte(_ path: String, at offset: Int) throws {
        var bytes = [UInt8](try Data(contentsOf: URL(fileURLWithPath: path)))
        bytes[offset >= 0 ? offset : bytes.count + offset] ^= 0x01
        try Data(bytes).write(to: URL(fileURLWithPath: path))
    }

    static func indexFiles(_ scene: EngineScene) throws -> Set<String> {
        Set(try FileManager.default.contentsOfDirectory(atPath: scene.repoPath + "/index"))
    }

    static func backup(_ repository: Repository, _ scene: EngineScene, account: String) throws -> Snapshot {
        try repository.backup(directory: scene.root + "/home/" + account, options: BackupOptions(tags: ["account": account, "kind": "files"]))
    }

    /// One flipped byte in one index file: every command still opens the repository, what the other index files
    /// list is restored, and verify reports the damaged index file instead of refusing (and of advising verify).
    @Test func flippedByteInAnIndexFileIsReportedNotFatal() throws {
        let scene = try EngineScene(accounts: 2, sizeMB: 2)
        let repository = try scene.initialize()
        let first = try Self.backup(repository, scene, account: "user000")
        let before = try Self.indexFiles(scene)
        let second = try Self.backup(repository, scene, account: "user001")
        let damaged = try #require(try Self.indexFiles(scene).subtracting(before).first)
        try Self.flipByte(scene.repoPath + "/index/" + damaged, at: 40)
        // Without the local cache every index file is read at open, the damaged one too.
        try FileManager.default.removeItem(atPath: scene.repoPath + "/cache")

        let reopened = try scene.open()
        #expect(Set(try reopened.snapshots().map(\.id)) == [first.id, second.id])
        let target = scene.scratch.appending("first")
        let restored = try reopened.restore(first, target: target)
        #expect(restored.errors.isEmpty, "\(restored.errors)")
        #expect(try scene.manifest(target) == scene.manifest(scene.root + "/home/user000"))

        let report = try reopened.verify(readData: false)
        #expect(!report.isHealthy)
        #expect(report.problems.contains { $0.contains("index file \(damaged.prefix(16)) is damaged") }, "\(report.problems)")
        #expect(!report.problems.contains { $0.contains("run verify") }, "\(report.problems)")
        // A backup still works (it stores again what only the damaged file listed).
        let third = try Self.backup(reopened, scene, account: "user001")
        let thirdTarget = scene.scratch.appending("third")
        #expect(try reopened.restore(third, target: thirdTarget).errors.isEmpty)
        #expect(try scene.manifest(thirdTarget) == scene.manifest(scene.root + "/home/user001"))
    }

    /// Deletes every pack that holds `ids`; returns their names.
    @discardableResult
    static func deletePacks(holding ids: [BlobID], in repository: Repository, scene: EngineScene) throws -> Set<String> {
        let packs = Set(try ids.map { try #require(repository.location(of: $0)).pack })
        for pack in packs { try FileManager.default.removeItem(atPath: scene.repoPath + "/" + Repository.packPath(pack)) }
        return packs
    }

    /// Every file below `tree` with its content ids, by path.
    static func files(in tree: Tree, _ prefix: String = "", repository: Repository) throws -> [(path: String, node: TreeNode)] {
        try tree.nodes.flatMap { node -> [(path: String, node: TreeNode)] in
            let path = prefix.isEmpty ? node.name : prefix + "/" + node.name
            if let subtree = node.subtree { return try files(in: try repository.loadTree(subtree), path, repository: repository) }
            return node.kind == .file ? [(path, node)] : []
        }
    }

    /// A pack with directory listings and a pack with file data are lost. The next backup of the account succeeds
    /// and stores them again from the source, prune succeeds, and afterwards the repository verifies clean: the old
    /// snapshot refers to the same blobs, which are whole again.
    @Test func lostPacksAreStoredAgainByTheNextBackupAndPruneSucceeds() throws {
        let scene = try EngineScene(accounts: 1, sizeMB: 4)
        let repository = try scene.initialize()
        let first = try Self.backup(repository, scene, account: "user000")
        let root = try #require(BlobID(hex: first.tree))
        let largest = try #require(try Self.files(in: try repository.loadTree(root), repository: repository)
            .filter { !$0.node.content.isEmpty }.max { $0.node.size < $1.node.size })
        try Self.deletePacks(holding: [root, largest.node.content[0]], in: repository, scene: scene)

        let reopened = try scene.open()
        let second = try Self.backup(reopened, scene, account: "user000")
        #expect(second.summary.errors.isEmpty, "\(second.summary.errors)")
        let afterBackup = try reopened.verify(readData: true)
        #expect(afterBackup.damagedFiles.isEmpty, "damaged after the backup: \(afterBackup.damagedFiles)")
        _ = try reopened.prune(policy: { _ in RetentionPolicy(keepLast: 10) }, dryRun: false)
        let report = try reopened.verify(readData: true)
        #expect(report.isHealthy, "\(report.problems) \(report.damagedFiles)")
        for snapshot in [first, second] {
            let target = scene.scratch.appending("restore-\(snapshot.shortID)")
            #expect(try reopened.restore(snapshot, target: target).errors.isEmpty)
            #expect(try scene.manifest(target) == scene.manifest(scene.root + "/home/user000"))
        }
        // And it stays so: later backups and prunes work as usual.
        _ = try Self.backup(reopened, scene, account: "user000")
        _ = try reopened.prune(policy: { _ in RetentionPolicy(keepLast: 10) }, dryRun: false)
        #expect(try reopened.verify(readData: false).isHealthy)
    }

    /// A lost pack whose blobs are still in the source, except for one file deleted since: only that file stays
    /// damaged (in the old snapshot), everything else is whole again.
    @Test func afterALostPackOnlyFilesGoneFromTheSourceStayDamaged() throws {
        let scene = try EngineScene(accounts: 1, sizeMB: 4)
        let repository = try scene.initialize()
        let first = try Self.backup(repository, scene, account: "user000")
        let files = try Self.files(in: try repository.loadTree(try #require(BlobID(hex: first.tree))), repository: repository)
        let victim = try #require(files.filter { !$0.node.content.isEmpty }.max { $0.node.size < $1.node.size })
        let lost = try Self.deletePacks(holding: [victim.node.content[0]], in: repository, scene: scene)
        // Every file with data in the lost packs is damaged now; one of them is deleted from the source as well.
        let damagedBefore = files.filter { file in file.node.content.contains { lost.contains(repository.location(of: $0)?.pack ?? "") } }
        #expect(damagedBefore.count >= 1)
        try FileManager.default.removeItem(atPath: scene.root + "/home/user000/" + victim.path)

        let reopened = try scene.open()
        #expect(try reopened.verify(readData: false).damagedFiles[first.id]?.count == damagedBefore.count)
        _ = try Self.backup(reopened, scene, account: "user000")
        let report = try reopened.verify(readData: true)
        #expect(report.damagedFiles == [first.id: [victim.path]], "\(report.damagedFiles)")
    }

    /// Database dumps: the pack with yesterday's dump (the bases of today's deltas) is lost. The next dump backup
    /// must not deduplicate against deltas whose base is gone: it stores those chunks whole again.
    @Test func deltasOnALostBaseAreStoredAgain() throws {
        let scratch = TemporaryDirectory(prefix: "fk-lost-base")
        let storage = LocalStorage(root: scratch.appending("repo"))
        let repository = try Repository.initialize(storage: storage, keySource: .keyFile(scratch.appending("k")))
        let monday = try DeltaTests.backup(repository, DeltaTests.dump(rows: 20_000, day: 0))
        let tuesday = try DeltaTests.backup(repository, DeltaTests.dump(rows: 20_000, day: 1))
        #expect(!repository.indexSnapshot.bases.isEmpty)
        let mondayChunks = try repository.loadTree(monday.tree).nodes[0].content
        let tuesdayChunks = try repository.loadTree(tuesday.tree).nodes[0].content
        let mondayPacks = Set(try mondayChunks.map { try #require(repository.location(of: $0)).pack })
        // Tuesday's deltas are in packs of their own (written a backup later), so this loses only Monday's data.
        #expect(mondayPacks.isDisjoint(with: Set(try tuesdayChunks.filter { repository.indexSnapshot.bases[$0] != nil }
            .map { try #require(repository.location(of: $0)).pack })))
        for pack in mondayPacks { try FileManager.default.removeItem(atPath: scratch.appending("repo/" + Repository.packPath(pack))) }

        let reopened = try Repository.open(storage: storage, keySource: .keyFile(scratch.appending("k")))
        let again = try DeltaTests.backup(reopened, DeltaTests.dump(rows: 20_000, day: 1))
        #expect(try DeltaTests.restored(reopened, again, scratch: scratch) == DeltaTests.dump(rows: 20_000, day: 1))
        _ = try reopened.prune(policy: { _ in RetentionPolicy(keepLast: 10) }, dryRun: false)
        let report = try reopened.verify(readData: true)
        // Monday's dump is gone from the source: only its snapshot stays damaged. Tuesday's is whole again.
        #expect(Set(report.damagedFiles.keys) == [monday.id], "\(report.damagedFiles)")
        #expect(try DeltaTests.restored(reopened, tuesday, scratch: scratch) == DeltaTests.dump(rows: 20_000, day: 1))
    }

    /// A flipped byte in a pack's header, or in the 4-byte trailer giving the header's length, is found without
    /// reading the pack's data.
    @Test(arguments: ["header", "trailer"])
    func damagedPackHeaderIsFoundWithoutReadData(part: String) throws {
        let scene = try EngineScene(accounts: 1, sizeMB: 2)
        let repository = try scene.initialize()
        let snapshot = try Self.backup(repository, scene, account: "user000")
        #expect(try repository.verify(readData: false).isHealthy)
        let rootID = try #require(BlobID(hex: snapshot.tree))
        let (pack, _) = try #require(repository.location(of: rootID))
        try Self.flipByte(scene.repoPath + "/" + Repository.packPath(pack), at: part == "header" ? -20 : -2)
        let report = try repository.verify(readData: false)
        #expect(!report.isHealthy)
        #expect(report.problems.contains { $0.contains("pack \(pack.prefix(16))") && $0.contains("header") }, "\(report.problems)")
        // Its blobs are intact and still found through the index.
        #expect(report.damagedFiles.isEmpty)
        let target = scene.scratch.appending("out")
        #expect(try repository.restore(snapshot, target: target).errors.isEmpty)
    }
}

/// The messages for a damaged key entry, a key file that is a directory, and a newer repository say what is wrong.
struct MisleadingMessageTests {
    func openError(_ scene: EngineScene, keySource: KeySource? = nil) -> String {
        do {
            _ = try Repository.open(storage: scene.storage, keySource: keySource ?? .keyFile(scene.keyFile))
            return "opened"
        } catch {
            return "\(error)"
        }
    }

    @Test func damagedKeyEntryIsNotCalledAWrongKey() throws {
        let scene = try EngineScene(accounts: 1, sizeMB: 1)
        _ = try scene.initialize()
        let entry = try #require(try FileManager.default.contentsOfDirectory(atPath: scene.repoPath + "/keys").first)
        // A flipped bit in the JSON's first byte: "{" becomes "z".
        try DamageContainmentTests.flipByte(scene.repoPath + "/keys/" + entry, at: 0)
        let message = openError(scene)
        #expect(message.contains("keys/\(entry)") && message.contains("damaged"), "\(message)")
        #expect(message.contains("off-site copy"), "\(message)")
        #expect(!message.contains("wrong key"), "\(message)")
    }

    @Test func keyFileThatIsADirectoryIsCalledADirectory() throws {
        let scene = try EngineScene(accounts: 1, sizeMB: 1)
        _ = try scene.initialize()
        let directory = scene.scratch.appending("key-directory")
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: false, attributes: [.posixPermissions: 0o755])
        let message = openError(scene, keySource: .keyFile(directory))
        #expect(message.contains("is a directory"), "\(message)")
        #expect(!message.contains("readable by other users"), "\(message)")
    }

    /// Foundation's `deletingLastPathComponent` traps on a one-character path ("K", "K/"), and `repo init --key-file K`
    /// crashed the agent with SIGILL. A key path whose last name is a directory must be refused with an error.
    @Test func aOneCharacterKeyFilePathIsAnErrorNotACrash() throws {
        let scratch = TemporaryDirectory(prefix: "fk-keypath")
        let storage = LocalStorage(root: scratch.appending("repo"))
        #expect(throws: RepositoryError.self) { try Repository.initialize(storage: storage, keySource: .keyFile("K/")) }
        #expect(FileManager.default.fileExists(atPath: scratch.appending("repo/config")) == false)
    }

    /// A FIFO where the repository keeps a file (a snapshot file, the index cache): opening it waited for a writer,
    /// and every command hung. It must be reported like a damaged file, or ignored where the file is only a cache.
    @Test func aFIFOInPlaceOfARepositoryFileIsReportedNotWaitedFor() throws {
        let scene = try EngineScene(accounts: 1, sizeMB: 1)
        let repository = try scene.initialize()
        let snapshot = try DamageContainmentTests.backup(repository, scene, account: "user000")
        let fifos = [scene.repoPath + "/snapshots/" + snapshot.id, scene.repoPath + "/cache/index"]
        for path in fifos {
            unlink(path)
            #expect(mkfifo(path, 0o600) == 0)
        }
        let outcome = Mutex<Result<VerifyReport, any Error>?>(nil)
        let done = DispatchSemaphore(value: 0)
        Thread {
            let result = Result { try scene.open().verify(readData: false) }
            outcome.withLock { $0 = result }
            done.signal()
        }.start()
        if done.wait(timeout: .now() + 30) == .timedOut {
            Issue.record("a command waited for a writer on a FIFO in the repository")
            // Let each waiting open return, so the test process can finish.
            while done.wait(timeout: .now() + 0.2) == .timedOut {
                for path in fifos {
                    let writer = open(path, O_WRONLY | O_NONBLOCK | O_CLOEXEC)
                    if writer >= 0 { close(writer) }
                }
            }
        }
        let report = try #require(try outcome.withLock { $0 }?.get())
        #expect(report.problems.contains { $0.contains(String(snapshot.id.prefix(16))) }, "\(report.problems)")
    }

    /// A newer agent may write its config with more fields, of any type, or the version as a number.
    @Test(arguments: [#"{"version":"3","id":"00","chunker":{"min":1}}"#, #"{"version":3,"id":"00"}"#, #"{"version":"3.1","id":"00"}"#])
    func newerConfigSaysUpgradeTheAgent(config: String) throws {
        let scene = try EngineScene(accounts: 1, sizeMB: 1)
        _ = try scene.initialize()
        try config.write(toFile: scene.repoPath + "/config", atomically: true, encoding: .utf8)
        let message = openError(scene)
        #expect(message.contains("upgrade the agent"), "\(message)")
        #expect(!message.contains("damaged"), "\(message)")
    }

    @Test func configThatIsNotJSONIsDamaged() throws {
        let scene = try EngineScene(accounts: 1, sizeMB: 1)
        _ = try scene.initialize()
        try "garbage".write(toFile: scene.repoPath + "/config", atomically: true, encoding: .utf8)
        let message = openError(scene)
        #expect(message.contains("damaged") && !message.contains("upgrade"), "\(message)")
    }
}
