@testable import BackupEngine
import Foundation
import Synchronization
import Testing
import TestSupport

/// An account's files and mail, backed up the way `backup` does it (files without `mail`, and `mail` as email), with
/// every file owned by an unprivileged account; restored the way `restore latest --all --target T` does it, into a
/// target the same account controls, next to a directory outside the target that must not change.
final class HostileTargetScene {
    static let account: uid_t = 12345
    let scratch: TemporaryDirectory
    let server: String
    let home: String
    /// Where symlinks and hard links planted in the target point.
    let outside: String
    let repository: Repository
    let files: Snapshot
    let email: Snapshot

    /// `prepare` may add to the account's home before it is backed up.
    init(sizeMB: Int = 1, prepare: (String) throws -> Void = { _ in }) throws {
        scratch = TemporaryDirectory(prefix: "fk-hostile")
        server = scratch.appending("server")
        home = server + "/home/user000"
        outside = scratch.appending("outside")
        try HostingFixture.create(root: server, accounts: 1, sizeMB: sizeMB, seed: 7)
        try prepare(home)
        changeOwner(home, uid: Self.account, gid: Self.account)
        repository = try Repository.initialize(storage: LocalStorage(root: scratch.appending("repo")), keySource: .keyFile(scratch.appending("repo.key")))
        files = try repository.backup(directory: home, options: BackupOptions(tags: ["kind": "files"], excludes: ["mail"]))
        email = try repository.backup(directory: home + "/mail", options: BackupOptions(tags: ["kind": "email"]))
        let fileManager = FileManager.default
        for directory in ["home", "user", "mail", "public", "race"] {
            try fileManager.createDirectory(atPath: outside + "/" + directory, withIntermediateDirectories: true)
            try Data("outside \(directory)\n".utf8).write(to: URL(fileURLWithPath: outside + "/" + directory + "/keep.txt"))
        }
        try Data("outside file: must not change\n".utf8).write(to: URL(fileURLWithPath: outside + "/victim.txt"))
        try Data("outside file, hard-linked from the target\n".utf8).write(to: URL(fileURLWithPath: outside + "/hard.txt"))
        chmod(outside + "/hard.txt", 0o640)
    }

    /// A new target under the scratch directory with an empty `home/user000/public_html`, owned by the account.
    func makeTarget(_ name: String) throws -> String {
        let target = scratch.appending(name)
        try FileManager.default.createDirectory(atPath: target + "/home/user000/public_html", withIntermediateDirectories: true)
        changeOwner(target, uid: Self.account, gid: Self.account)
        return target
    }

    /// What `restore latest --all --target T` restores for the account: its files in its home, its mail in home/mail.
    func restoreAll(into target: String) throws -> [RestoreSummary] {
        try repository.restore([(files, target + "/home/user000"), (email, target + "/home/user000/mail")], beneath: target)
    }
}

struct RestoreTargetSafetyTests {
    /// Something an attacker planted in the target before the restore.
    enum Plant: String, CaseIterable, Sendable {
        case symlinkAtHome, symlinkAtAccountHome, symlinkAtMail, symlinkAtPublicHTML, symlinkAtAFile, hardLinkToAnOutsideFile
    }

    static func plant(_ plant: Plant, in target: String, outside: String) throws {
        let account = target + "/home/user000"
        func replace(_ path: String, withSymlinkTo destination: String) throws {
            try? FileManager.default.removeItem(atPath: path)
            try #require(symlink(destination, path) == 0, "symlink \(path)")
            _ = lchown(path, HostileTargetScene.account, HostileTargetScene.account)
        }
        switch plant {
        case .symlinkAtHome: try replace(target + "/home", withSymlinkTo: outside + "/home")
        case .symlinkAtAccountHome: try replace(account, withSymlinkTo: outside + "/user")
        case .symlinkAtMail: try replace(account + "/mail", withSymlinkTo: outside + "/mail")
        case .symlinkAtPublicHTML: try replace(account + "/public_html", withSymlinkTo: outside + "/public")
        case .symlinkAtAFile: try replace(account + "/public_html/index.php", withSymlinkTo: outside + "/victim.txt")
        case .hardLinkToAnOutsideFile: try #require(link(outside + "/hard.txt", account + "/public_html/wp-config.php") == 0)
        }
    }

    /// Each plant, in a target owned by the account: nothing outside the target changes (content, mode, owner,
    /// type), and the account's home comes back complete and exact, with the plant replaced.
    @Test(arguments: Plant.allCases)
    func somethingPlantedInTheTargetIsReplacedNotFollowed(_ plant: Plant) throws {
        let scene = try HostileTargetScene()
        let target = try scene.makeTarget("target")
        try Self.plant(plant, in: target, outside: scene.outside)
        let before = fileTreeManifest(scene.outside)

        let summaries = try scene.restoreAll(into: target)

        #expect(manifestDifference(before, fileTreeManifest(scene.outside)) == [], "\(plant): the restore changed files outside its target")
        for summary in summaries { #expect(summary.errors.isEmpty, "\(plant): \(summary.errors)") }
        let restored = target + "/home/user000"
        #expect(try HostingFixture.manifest(root: restored) == HostingFixture.manifest(root: scene.home), "\(plant)")
        // Owners, modes, symlink targets and hard links too (the fixture's manifest leaves owners out).
        #expect(manifestDifference(fileTreeManifest(scene.home, includingRoot: false), fileTreeManifest(restored, includingRoot: false)) == [], "\(plant)")
    }

    /// A thread keeps swapping a directory inside the target for a symlink to a directory outside it while the
    /// restore makes that directory's files: whatever it catches, nothing is written outside.
    @Test func aDirectorySwappedForASymlinkDuringTheRestoreLeadsNowhere() throws {
        let scene = try HostileTargetScene { home in
            let racy = home + "/public_html/racy"
            try FileManager.default.createDirectory(atPath: racy, withIntermediateDirectories: true)
            for index in 0..<2_000 { try Data("file \(index)\n".utf8).write(to: URL(fileURLWithPath: racy + "/file-\(index).php")) }
        }
        let before = fileTreeManifest(scene.outside)
        for round in 0..<3 {
            let target = try scene.makeTarget("race-\(round)")
            let racy = target + "/home/user000/public_html/racy"
            let away = racy + ".away"
            let outside = scene.outside + "/race"
            let racer = RacingThread {
                var info = stat()
                guard lstat(racy, &info) == 0, info.st_mode & S_IFMT == S_IFDIR else { return }
                rename(racy, away)
                symlink(outside, racy)
                usleep(50)
                unlink(racy)
                rename(away, racy)
                usleep(50)
            }
            // Errors are expected (a directory swapped away is refused); writing outside is not.
            let summaries = try? scene.restoreAll(into: target)
            racer.stop()
            #expect(summaries != nil, "round \(round): the restore gave up")
            #expect(manifestDifference(before, fileTreeManifest(scene.outside)) == [], "round \(round): the restore wrote outside its target")
        }
    }

    /// Run as root, the files an account owns are made inside its own directories with its file-system identity
    /// (setfsuid), and every thread is back to root's when the restore returns.
    @Test func theAccountsFilesAreMadeWithItsIdentity() throws {
        try #require(geteuid() == 0, "needs root, as the CI runs the tests")
        let scene = try HostileTargetScene { home in
            for index in 0..<3_000 {
                try Data("file \(index)\n".utf8).write(to: URL(fileURLWithPath: home + "/public_html/many-\(index).txt"))
            }
        }
        let target = try scene.makeTarget("target")
        let seen = Mutex<Set<uid_t>>([])
        let sampler = RacingThread { seen.withLock { $0.formUnion(threadFilesystemUIDs()) } }
        let summaries = try scene.restoreAll(into: target)
        sampler.stop()
        for summary in summaries { #expect(summary.errors.isEmpty, "\(summary.errors)") }
        #expect(seen.withLock { $0.contains(HostileTargetScene.account) }, "no thread ever had the account's fsuid")
        // The calling thread made the entries; the restore's other threads have ended with it. (Every thread of the
        // process is not checked: other suites' restores run at the same time in this test process.)
        #expect(currentThreadFilesystemUID() == 0)
        #expect(manifestDifference(fileTreeManifest(scene.home, includingRoot: false), fileTreeManifest(target + "/home/user000", includingRoot: false)) == [])
    }

    /// A tree nested deeper than the directories a restore holds open (`DirectoryCursor.limit`), with files listed
    /// before and after each subdirectory, so the restore has to find its way back up: it comes back exactly.
    @Test func aTreeDeeperThanTheOpenDirectoryLimitComesBackExactly() throws {
        let scratch = TemporaryDirectory(prefix: "fk-deep")
        var path = scratch.appending("source")
        for level in 0..<(DirectoryCursor.limit * 3) {
            try FileManager.default.createDirectory(atPath: path + "/m", withIntermediateDirectories: true)
            try Data("a \(level)\n".utf8).write(to: URL(fileURLWithPath: path + "/a.txt"))
            try Data("z \(level)\n".utf8).write(to: URL(fileURLWithPath: path + "/z.txt"))
            path += "/m"
        }
        let repository = try Repository.initialize(storage: LocalStorage(root: scratch.appending("repo")), keySource: .keyFile(scratch.appending("k")))
        let snapshot = try repository.backup(directory: scratch.appending("source"), options: BackupOptions(tags: ["kind": "files"]))
        let summary = try repository.restore(snapshot, target: scratch.appending("restored"))
        #expect(summary.errors.isEmpty, "\(summary.errors.prefix(3))")
        #expect(summary.files == DirectoryCursor.limit * 6)
        #expect(manifestDifference(fileTreeManifest(scratch.appending("source"), includingRoot: false),
                                   fileTreeManifest(scratch.appending("restored"), includingRoot: false)) == [])
    }

    /// A symlink that only root could have placed on the way to the account's home (root's, in a directory only root
    /// may change) is the operator's layout, such as `/home -> /data/home`: it is followed, and stays.
    @Test func anOperatorsOwnSymlinkAboveTheHomeIsFollowed() throws {
        let scene = try HostileTargetScene()
        let target = scene.scratch.appending("root-owned")
        let elsewhere = scene.scratch.appending("data/home")
        try FileManager.default.createDirectory(atPath: elsewhere, withIntermediateDirectories: true)
        try FileManager.default.createDirectory(atPath: target, withIntermediateDirectories: true)
        chmod(target, 0o755)
        #expect(symlink(elsewhere, target + "/home") == 0)
        let summaries = try scene.restoreAll(into: target)
        for summary in summaries { #expect(summary.errors.isEmpty, "\(summary.errors)") }
        #expect((try? FileManager.default.destinationOfSymbolicLink(atPath: target + "/home")) == elsewhere)
        #expect(try HostingFixture.manifest(root: elsewhere + "/user000") == HostingFixture.manifest(root: scene.home))
    }
}

/// Restore sets the owner of a FIFO or a symlink it just made through a descriptor of the entry. If the account
/// swapped the name for a hard link to another such file in between, that other file's owner must not change.
struct RestoreOwnerSwapTests {
    @Test func anEntryWithASecondNameIsNotGivenAnOwner() throws {
        let scratch = TemporaryDirectory(prefix: "fk-owner-swap")
        let directory = try DirectoryDescriptor(trustedPath: scratch.path)
        #expect(mkfifo(scratch.appending("theirs"), 0o600) == 0)
        #expect(link(scratch.appending("theirs"), scratch.appending("made")) == 0)
        #expect(throws: FileSystemError.self) { try directory.setOwner("made", kind: S_IFIFO, uid: 4321, gid: 4321) }
        var info = stat()
        #expect(lstat(scratch.appending("theirs"), &info) == 0 && info.st_uid == getuid())
        // A FIFO with one name gets its owner.
        #expect(mkfifo(scratch.appending("alone"), 0o600) == 0)
        if getuid() == 0 {
            try directory.setOwner("alone", kind: S_IFIFO, uid: 4321, gid: 4321)
            #expect(lstat(scratch.appending("alone"), &info) == 0 && info.st_uid == 4321)
        }
    }
}
