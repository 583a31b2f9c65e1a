@testable import AgentCore
@testable import BackupEngine
import CommandLineSupport
import Foundation
import Testing
import TestSupport

/// A whole server backed up by the `backup` command, whose repository then gets damaged.
struct DamagedServerScene {
    let scratch = TemporaryDirectory(prefix: "fk-damaged")
    var root: String { scratch.appending("server") }
    var repo: String { scratch.appending("repo") }
    var common: [String] {
        ["--root", root, "--repo", repo, "--key-file", scratch.appending("repo.key"), "--config", scratch.appending("agent.conf")]
    }

    init(accounts: Int) throws {
        try HostingFixture.create(root: scratch.appending("server"), accounts: accounts, sizeMB: 3, seed: 7)
        try "[database]\nenabled = no\n".write(toFile: scratch.appending("agent.conf"), atomically: true, encoding: .utf8)
        #expect(try BackupCommands.repo(["init"] + common) == 0)
        #expect(try BackupCommands.backup(["--kind", "files,email"] + common) == 0)
    }

    func open() throws -> Repository {
        try Repository.open(storage: LocalStorage(root: repo), keySource: .keyFile(scratch.appending("repo.key")))
    }

    /// Flips one bit inside the stored bytes of blob `id`.
    func damage(_ id: BlobID, in repository: Repository) throws {
        let (pack, location) = try #require(repository.location(of: id))
        let path = repo + "/" + Repository.packPath(pack)
        var bytes = [UInt8](try Data(contentsOf: URL(fileURLWithPath: path)))
        bytes[Int(location.offset) + 20] ^= 0x01
        try Data(bytes).write(to: URL(fileURLWithPath: path))
    }

    func filesSnapshot(of account: String, in repository: Repository) throws -> Snapshot {
        try #require(try repository.snapshots().last { $0.tags["account"] == account && $0.tags["kind"] == "files" })
    }
}

struct DamagedRestoreTests {
    /// One account's root listing and another account's subdirectory listing are damaged: `restore --all` restores
    /// every other account whole, the second account without that directory, names what it could not restore,
    /// and exits 3 (partial).
    @Test func restoreAllRestoresEveryReadableAccountAndListingAndExitsPartial() throws {
        let scene = try DamagedServerScene(accounts: 3)
        let repository = try scene.open()
        let lostRoot = try scene.filesSnapshot(of: "user001", in: repository)
        let lostRootID = try #require(BlobID(hex: lostRoot.tree))
        try scene.damage(lostRootID, in: repository)
        let partly = try repository.loadTree(try scene.filesSnapshot(of: "user002", in: repository).tree)
        let lostDirectory = try #require(partly.nodes.first { $0.name == "public_html" && $0.subtree != nil })
        let lostDirectoryID = try #require(lostDirectory.subtree)
        try scene.damage(lostDirectoryID, in: repository)

        let target = scene.scratch.appending("rebuilt")
        #expect(try BackupCommands.restore(["latest", "--all", "--target", target] + scene.common) == BackupCommands.partialRestore)
        #expect(try HostingFixture.manifest(root: target + "/home/user000") == HostingFixture.manifest(root: scene.root + "/home/user000"))
        // user001: its files are not restored, its email is.
        #expect(!FileManager.default.fileExists(atPath: target + "/home/user001/public_html"))
        #expect(try HostingFixture.manifest(root: target + "/home/user001/mail") == HostingFixture.manifest(root: scene.root + "/home/user001/mail"))
        // user002: everything but public_html, which is there, empty.
        for node in partly.nodes where node.name != "public_html" && node.name != "mail" {
            #expect(FileManager.default.fileExists(atPath: target + "/home/user002/" + node.name), "\(node.name)")
        }
        #expect(try FileManager.default.contentsOfDirectory(atPath: target + "/home/user002/public_html").isEmpty)

        // What the library says, account by account.
        let summaries = try repository.restore([(lostRoot, scene.scratch.appending("one")),
                                                (try scene.filesSnapshot(of: "user002", in: repository), scene.scratch.appending("two")),
                                                (try scene.filesSnapshot(of: "user000", in: repository), scene.scratch.appending("three"))])
        #expect(summaries[0].failure?.contains("damaged") == true, "\(summaries[0])")
        #expect(summaries[1].failure == nil && summaries[1].errors.count == 1 && summaries[1].errors[0].hasPrefix("public_html/"), "\(summaries[1])")
        #expect(summaries[2].failure == nil && summaries[2].errors.isEmpty && summaries[2].files > 10)
    }
}

/// `fleetkeep-agent repair index|snapshots` on a repository with a damaged index file and a lost pack.
struct RepairCommandTests {
    @Test func repairCommandsBringADamagedRepositoryBackToHealthy() throws {
        let scene = try DamagedServerScene(accounts: 2)
        let repository = try scene.open()
        let snapshot = try scene.filesSnapshot(of: "user000", in: repository)
        let rootID = try #require(BlobID(hex: snapshot.tree))
        let (lostPack, _) = try #require(repository.location(of: rootID))
        try FileManager.default.removeItem(atPath: scene.repo + "/" + Repository.packPath(lostPack))
        let index = try #require(try FileManager.default.contentsOfDirectory(atPath: scene.repo + "/index").first)
        var bytes = [UInt8](try Data(contentsOf: URL(fileURLWithPath: scene.repo + "/index/" + index)))
        bytes[bytes.count / 2] ^= 0x01
        try Data(bytes).write(to: URL(fileURLWithPath: scene.repo + "/index/" + index))
        try FileManager.default.removeItem(atPath: scene.repo + "/cache")

        // Every command still runs; verify names the damage and says what to do.
        #expect(try BackupCommands.snapshots(scene.common.filter { $0 != "--root" && !$0.hasSuffix("/server") }) == 0)
        #expect(try BackupCommands.verify(scene.common.filter { $0 != "--root" && !$0.hasSuffix("/server") }) == 1)
        #expect(throws: (any Error).self) { try BackupCommands.prune(scene.common) }
        #expect(try RepairCommands.repair(["index"] + scene.common) == 0)
        #expect(try BackupCommands.backup(["--kind", "files,email"] + scene.common) == 0)
        #expect(try BackupCommands.prune(scene.common) == 0)
        #expect(try RepairCommands.repair(["snapshots", "--read-data"] + scene.common) == 0)
        #expect(try BackupCommands.verify(["--read-data"] + scene.common) == 0)
        #expect(throws: UsageError.self) { try RepairCommands.repair(["everything"] + scene.common) }
    }
}

/// What `verify` tells the operator to do next. Its advice is followed by hand, so a wrong first step loses data.
struct RepairAdviceTests {
    /// Packs no index names, next to snapshots that need what the index lacks, mean an index file may be lost:
    /// `repair snapshots` first would drop, for good, files those packs still hold. `repair index` gets them back.
    @Test func unindexedPacksAreIndexedBeforeAnythingIsDropped() {
        var report = VerifyReport()
        report.unindexedPacks = 2
        report.indexableUnindexedPacks = 2
        report.damagedFiles = ["snapshot": ["/"]]
        let steps = RepairCommands.advice(for: report, readData: true, copy: .local)
        #expect(steps.first?.contains("repair index") == true, "\(steps)")
        #expect(!steps.contains { $0.contains("repair snapshots") }, "\(steps)")
    }

    /// Unindexed packs whose headers are damaged cannot be indexed: advising `repair index` for them would repeat
    /// for ever (found by review), so the advice goes on to what can help.
    @Test func unindexablePacksDoNotHoldTheAdviceUp() {
        var report = VerifyReport()
        report.unindexedPacks = 1
        report.damagedFiles = ["snapshot": ["lost.txt"]]
        let steps = RepairCommands.advice(for: report, readData: true, copy: .local)
        #expect(steps.first?.contains("repair snapshots") == true, "\(steps)")
    }

    /// A lost pack stays named in the index until `repair index` drops it: advising only a backup made verify repeat
    /// the same advice for ever.
    @Test func aLostPackIsDroppedFromTheIndexAfterTheBackup() {
        var report = VerifyReport()
        report.missingPacks = ["pack"]
        report.problems = ["pack is missing"]
        let steps = RepairCommands.advice(for: report, readData: false, copy: .local)
        #expect(steps.count == 1)
        let step = steps.first ?? ""
        let backup = step.range(of: "fleetkeep-agent backup"), repair = step.range(of: "repair index")
        #expect(backup != nil && repair != nil && backup!.lowerBound < repair!.lowerBound, "\(steps)")
    }
}
