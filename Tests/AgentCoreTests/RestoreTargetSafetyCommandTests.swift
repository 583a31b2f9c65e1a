@testable import AgentCore
import BackupEngine
import Foundation
import Testing
import TestSupport

/// The restore commands run into targets an unprivileged account controls, with symlinks and hard links planted in
/// them: nothing outside the target may change (see RestoreTargetSafetyTests in BackupEngineTests for every plant).
struct RestoreTargetSafetyCommandTests {
    static let account: uid_t = 12345

    /// A directory outside every target, with what planted links point at; compared before and after.
    static func makeOutside(_ path: String) throws {
        for directory in ["home", "user", "mail", "var"] {
            try FileManager.default.createDirectory(atPath: path + "/" + directory, withIntermediateDirectories: true)
            try Data("outside \(directory)\n".utf8).write(to: URL(fileURLWithPath: path + "/" + directory + "/keep.txt"))
        }
        try Data("outside file: must not change\n".utf8).write(to: URL(fileURLWithPath: path + "/victim.txt"))
        try Data("outside file, hard-linked from the target\n".utf8).write(to: URL(fileURLWithPath: path + "/hard.txt"))
    }

    static func plantSymlink(_ path: String, to destination: String) throws {
        try? FileManager.default.removeItem(atPath: path)
        try FileManager.default.createDirectory(atPath: (path as NSString).deletingLastPathComponent, withIntermediateDirectories: true)
        try #require(symlink(destination, path) == 0, "symlink \(path)")
        _ = lchown(path, account, account)
    }

    static func plantHardLink(_ path: String, to file: String) throws {
        try? FileManager.default.removeItem(atPath: path)
        try FileManager.default.createDirectory(atPath: (path as NSString).deletingLastPathComponent, withIntermediateDirectories: true)
        try #require(link(file, path) == 0, "link \(path)")
    }

    /// `fleetkeep-agent restore latest --all --target T`, T owned by the account, with a symlink for one account's
    /// home, one for another's mail directory and a hard link at a file's path.
    @Test func restoreAllReplacesWhatIsPlantedInsteadOfFollowingIt() throws {
        let scratch = TemporaryDirectory(prefix: "fk-hostile-command")
        let root = scratch.appending("server")
        try HostingFixture.create(root: root, accounts: 2, sizeMB: 1, seed: 5)
        changeOwner(root + "/home", uid: Self.account, gid: Self.account)
        try "[database]\nenabled = no\n".write(toFile: scratch.appending("agent.conf"), atomically: true, encoding: .utf8)
        let common = ["--root", root, "--repo", scratch.appending("repo"), "--key-file", scratch.appending("repo.key"),
                      "--config", scratch.appending("agent.conf")]
        #expect(try BackupCommands.repo(["init"] + common) == 0)
        #expect(try BackupCommands.backup(["--kind", "files,email"] + common) == 0)

        let outside = scratch.appending("outside")
        try Self.makeOutside(outside)
        let target = scratch.appending("target")
        try FileManager.default.createDirectory(atPath: target + "/home/user000/public_html", withIntermediateDirectories: true)
        changeOwner(target, uid: Self.account, gid: Self.account)
        try Self.plantSymlink(target + "/home/user001", to: outside + "/user")
        try Self.plantSymlink(target + "/home/user000/mail", to: outside + "/mail")
        try Self.plantHardLink(target + "/home/user000/public_html/index.php", to: outside + "/hard.txt")
        let before = fileTreeManifest(outside)

        #expect(try BackupCommands.restore(["latest", "--all", "--target", target] + common) == 0)

        #expect(manifestDifference(before, fileTreeManifest(outside)) == [], "the restore changed files outside its target")
        #expect(try HostingFixture.manifest(root: target + "/home") == HostingFixture.manifest(root: root + "/home"))
    }

    /// Database dumps written by `restore --all` and by `restore --kind databases --target DIR` replace a symlink or
    /// hard link at their path (or above it, below the target), and belong to root with mode 0600.
    @Test func databaseDumpsReplaceWhatIsPlantedAtTheirPath() throws {
        let scratch = TemporaryDirectory(prefix: "fk-hostile-dumps")
        let (common, dump) = try DumpRepository.make(in: scratch)
        let outside = scratch.appending("outside")
        try Self.makeOutside(outside)
        let before = fileTreeManifest(outside)

        func expectDump(at path: String, _ label: String) {
            #expect(FileManager.default.contents(atPath: path) == Data(dump), "\(label)")
            var info = stat()
            #expect(lstat(path, &info) == 0 && info.st_mode & S_IFMT == S_IFREG, "\(label): not a regular file")
            #expect(info.st_mode & 0o7777 == 0o600 && info.st_uid == geteuid() && info.st_nlink == 1, "\(label)")
        }
        let dumps = "/var/lib/fleetkeep/restored-databases"

        let symlinkedVar = scratch.appending("symlinked-var")
        try FileManager.default.createDirectory(atPath: symlinkedVar, withIntermediateDirectories: true)
        changeOwner(symlinkedVar, uid: Self.account, gid: Self.account)
        try Self.plantSymlink(symlinkedVar + "/var", to: outside + "/var")
        #expect(try BackupCommands.restore(["latest", "--all", "--kind", "databases", "--target", symlinkedVar] + common) == 0)
        expectDump(at: symlinkedVar + dumps + "/alice_wp.sql", "symlink at var")
        #expect(manifestDifference(before, fileTreeManifest(outside)) == [], "symlink at var: a dump was written outside its target")

        let hardLinked = scratch.appending("hard-linked-dump")
        try FileManager.default.createDirectory(atPath: hardLinked + dumps, withIntermediateDirectories: true)
        changeOwner(hardLinked, uid: Self.account, gid: Self.account)
        try Self.plantHardLink(hardLinked + dumps + "/alice_wp.sql", to: outside + "/hard.txt")
        #expect(try BackupCommands.restore(["latest", "--all", "--kind", "databases", "--target", hardLinked] + common) == 0)
        expectDump(at: hardLinked + dumps + "/alice_wp.sql", "hard link at the dump")
        #expect(manifestDifference(before, fileTreeManifest(outside)) == [], "hard link at the dump: written through")

        let single = scratch.appending("single")
        try FileManager.default.createDirectory(atPath: single, withIntermediateDirectories: true)
        changeOwner(single, uid: Self.account, gid: Self.account)
        try Self.plantSymlink(single + "/alice_wp.sql", to: outside + "/victim.txt")
        #expect(try BackupCommands.restore(["latest", "--account", "alice", "--kind", "databases", "--target", single] + common) == 0)
        expectDump(at: single + "/alice_wp.sql", "symlink at the dump")
        #expect(manifestDifference(before, fileTreeManifest(outside)) == [], "symlink at the dump: written through")
    }
}

/// `offsite restore --all --to DIR` into a directory an account controls, with a symlink for one account's home.
@Suite(.serialized) struct OffsiteRestoreTargetSafetyTests {
    @Test func offsiteRestoreAllReplacesASymlinkedHome() throws {
        let scene = try OffsiteScene(sizeMB: 1)
        _ = try scene.push()
        let outside = scene.scratch.appending("outside")
        try RestoreTargetSafetyCommandTests.makeOutside(outside)
        let rebuilt = scene.scratch.appending("new-server")
        try FileManager.default.createDirectory(atPath: rebuilt + "/home", withIntermediateDirectories: true)
        changeOwner(rebuilt, uid: RestoreTargetSafetyCommandTests.account, gid: RestoreTargetSafetyCommandTests.account)
        try RestoreTargetSafetyCommandTests.plantSymlink(rebuilt + "/home/user000", to: outside + "/user")
        try RestoreTargetSafetyCommandTests.plantSymlink(rebuilt + "/home/user001/public_html", to: outside + "/home")
        let before = fileTreeManifest(outside)

        let status = try OffsiteCommands.run(["restore", "--all", "--to", rebuilt, "--key-file", scene.config.keyFile,
                                              "--target", scene.config.offsite.target!, "--host-key", scene.config.offsite.hostKey!,
                                              "--identity", scene.config.offsite.identity!])
        #expect(status == 0)
        #expect(manifestDifference(before, fileTreeManifest(outside)) == [], "the off-site restore changed files outside its target")
        for user in ["user000", "user001"] {
            let under = "home/\(user)/public_html"
            #expect(try HostingFixtureTool.manifest(rebuilt, under: under) == HostingFixtureTool.manifest(scene.root, under: under))
        }
    }
}
