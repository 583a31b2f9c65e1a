@testable import AgentCore
@testable import BackupEngine
import CommandLineSupport
import Foundation
import SFTP
import Synchronization
import Testing
import TestSupport

/// A fixture server with a local repository holding one backup of every account, and a real sshd as the off-site host.
struct OffsiteScene {
    let scratch = TemporaryDirectory(prefix: "fk-offsite")
    let server: SSHDServer
    let local: Repository
    var config = AgentConfig()
    var root: String { scratch.appending("server") }

    init(sizeMB: Int = 6, sftpArguments: [String] = [], sshdConfig: [String] = []) throws {
        server = try SSHDServer(sftpArguments: sftpArguments, extraConfig: sshdConfig)
        try HostingFixtureTool.create(scratch.appending("server"), accounts: 2, sizeMB: sizeMB, seed: 5)
        config.root = scratch.appending("server")
        config.repository = scratch.appending("repo")
        config.keyFile = scratch.appending("repo.key")
        config.database.enabled = false
        config.offsite.target = "sftp://\(server.user)@127.0.0.1:\(server.port)\(server.root)/offsite"
        config.offsite.hostKey = server.hostKeyFingerprintSHA256
        config.offsite.identity = server.clientKeyPath
        local = try Repository.initialize(storage: LocalStorage(root: config.repository), keySource: .keyFile(config.keyFile))
        try backupAll()
    }

    func backupAll() throws {
        for account in try HostingAccounts.discover(root: config.root, configured: [:]) {
            for kind in [BackupKind.files, .email] {
                let home = String(account.home.dropFirst(config.root.count))
                _ = try local.backup(directory: kind == .files ? account.home : account.mailDirectory,
                                     options: BackupOptions(tags: ["account": account.user, "kind": kind.rawValue, "host": "h", "home": home],
                                                            excludes: kind == .files ? ["mail"] : []))
            }
        }
    }

    var target: OffsiteTarget { try! OffsiteTarget(url: config.offsite.target!) }

    func remote() throws -> Repository {
        let cacheDirectory = try #require(OffsiteCommands.remoteCacheDirectory(target: target, config: config))
        return try OffsiteCommands.openRemote(target: target, config: config, create: true, local: local, cacheDirectory: cacheDirectory).0
    }

    func push() throws -> CopyReport {
        let remote = try remote()
        let latest = Dictionary(grouping: try local.snapshots().filter { $0.tags["kind"] != "email" }) { $0.tags }.values.compactMap(\.last)
        return try local.copy(latest, to: remote)
    }
}

/// One upload connection of a push, counting the packs it staged. `beforeStage` runs first with this connection's
/// count so far (a test's way to break the connection mid-push); `delay` keeps one fast lane from taking every pack.
final class CountingUploader: RepositoryStorage, @unchecked Sendable {
    let inner: SFTPStorage
    let beforeStage: @Sendable (Int) -> Void
    let delay: Duration
    private let count = Mutex(0)
    var staged: Int { count.withLock { $0 } }
    var location: String { inner.location }

    init(_ inner: SFTPStorage, delay: Duration = .milliseconds(50), beforeStage: @escaping @Sendable (Int) -> Void = { _ in }) {
        self.inner = inner
        self.delay = delay
        self.beforeStage = beforeStage
    }

    func stage(_ path: String, _ data: [UInt8]) throws -> any StagedWrite {
        beforeStage(staged)
        Thread.sleep(forTimeInterval: Double(delay.components.attoseconds) / 1e18 + Double(delay.components.seconds))
        let write = try inner.stage(path, data)
        count.withLock { $0 += 1 }
        return write
    }

    func read(_ path: String) throws -> [UInt8] { try inner.read(path) }
    func read(_ path: String, offset: Int, length: Int) throws -> [UInt8] { try inner.read(path, offset: offset, length: length) }
    func write(_ path: String, _ data: [UInt8]) throws { try inner.write(path, data) }
    func list(_ directory: String) throws -> [String] { try inner.list(directory) }
    func remove(_ path: String) throws { try inner.remove(path) }
    func size(_ path: String) throws -> Int? { try inner.size(path) }
}

@Suite(.serialized) struct OffsiteTests {
    @Test func pushSendsOnlyNewPacksAndDisasterRecoveryRebuildsFromTheRemote() throws {
        let scene = try OffsiteScene()
        let first = try scene.push()
        #expect(first.packsUploaded > 0)
        #expect(first.snapshotsCopied == 2)   // files of two accounts; email stays home
        let again = try scene.push()
        #expect(again.packsUploaded == 0 && again.bytesUploaded < 10_000)
        try HostingFixtureTool.churn(scene.root, percent: 1)
        try scene.backupAll()
        let weekly = try scene.push()
        #expect(weekly.bytesUploaded < first.bytesUploaded / 4)

        let remote = try scene.remote()
        #expect(try remote.verify(readData: true).isHealthy)
        #expect(try remote.snapshots().allSatisfy { $0.tags["kind"] == "files" })
        // The remote's index and snapshot caches live in the local repository, one directory per target.
        let cacheDirectory = try #require(OffsiteCommands.remoteCacheDirectory(target: scene.target, config: scene.config))
        #expect(cacheDirectory.hasPrefix(scene.config.repository + "/cache/offsite-"))
        #expect(FileManager.default.fileExists(atPath: cacheDirectory + "/index"))
        #expect(FileManager.default.fileExists(atPath: cacheDirectory + "/snapshots"))

        // A brand-new server: only the remote and the key file. The remote's caches go to a scratch directory
        // (on disk, not in memory) that is gone when the command ends.
        var newServer = scene.config
        newServer.repository = scene.scratch.appending("no-repository-here")
        #expect(OffsiteCommands.remoteCacheDirectory(target: scene.target, config: newServer) == nil)
        let scratchCache = try ScratchCacheDirectory(parent: scene.scratch.path)
        #expect(try FileManager.default.attributesOfItem(atPath: scratchCache.path)[.posixPermissions] as? Int == 0o700)
        let (opened, _) = try OffsiteCommands.openRemote(target: scene.target, config: newServer, create: false, cacheDirectory: scratchCache.path)
        #expect(try opened.snapshots().count == remote.snapshots().count)
        #expect(FileManager.default.fileExists(atPath: scratchCache.path + "/index"))
        scratchCache.remove()
        #expect(!FileManager.default.fileExists(atPath: scratchCache.path))
        // The command as a new server runs it, with a TMPDIR of its own: other tests make scratch caches in the shared
        // one at the same time (comparing that one before and after failed now and then). The directory's time, set
        // far back first, shows that the command did make its scratch cache there before removing it.
        let temporary = scene.scratch.appending("tmp")
        try FileManager.default.createDirectory(atPath: temporary, withIntermediateDirectories: false)
        let longAgo = Date(timeIntervalSince1970: 946_684_800)
        try FileManager.default.setAttributes([.modificationDate: longAgo], ofItemAtPath: temporary)
        let rebuilt = scene.scratch.appending("new-server")
        let result = try ProcessRunner.run(ProcessRunner.productsDirectory + "/fleetkeep-agent",
                                           ["offsite", "restore", "--all", "--to", rebuilt, "--key-file", scene.config.keyFile,
                                            "--target", scene.config.offsite.target!, "--host-key", scene.config.offsite.hostKey!,
                                            "--identity", scene.config.offsite.identity!],
                                           environment: ["TMPDIR": temporary])
        #expect(result.status == 0, "\(result.stderr)")
        for user in ["user000", "user001"] {
            let under = "home/\(user)/public_html"
            #expect(try HostingFixtureTool.manifest(rebuilt, under: under) == HostingFixtureTool.manifest(scene.root, under: under))
        }
        #expect(!FileManager.default.fileExists(atPath: rebuilt + "/home/user000/mail"))
        #expect(try FileManager.default.contentsOfDirectory(atPath: temporary) == [], "the scratch cache was left behind")
        let touched = try FileManager.default.attributesOfItem(atPath: temporary)[.modificationDate] as? Date
        #expect(touched.map { $0 > longAgo } == true, "the command made no scratch cache in TMPDIR")
    }

    @Test func connectionKilledMidPushResumesWithoutResendingFinishedPacks() throws {
        let scene = try OffsiteScene(sizeMB: 40)
        let remote = try scene.remote()
        let server = scene.server
        let latest = Dictionary(grouping: try scene.local.snapshots().filter { $0.tags["kind"] == "files" }) { $0.tags }.values.compactMap(\.last)
        #expect(throws: (any Error).self) {
            try scene.local.copy(latest, to: remote) { report in
                if report.packsUploaded == 2 { server.killSessions() }
            }
        }
        // Nothing half-written is visible under a real name, and the next push resumes.
        let resumed = try scene.push()
        #expect(resumed.packsAlreadyThere >= 2)
        let fresh = try scene.remote()
        #expect(try fresh.verify(readData: true).isHealthy)
        #expect(try fresh.snapshots().count == 2)
    }

    /// The newest files snapshot of every account.
    static func latestFiles(_ scene: OffsiteScene) throws -> [Snapshot] {
        Dictionary(grouping: try scene.local.snapshots().filter { $0.tags["kind"] == "files" }) { $0.tags }.values.compactMap(\.last)
    }

    /// The remote repository and `count` upload connections to it, opened one after another (so the last one opened
    /// is the newest sshd connection), the first being the one the repository itself uses.
    static func remoteAndUploaders(_ scene: OffsiteScene, count: Int) throws -> (Repository, [SFTPStorage]) {
        let cacheDirectory = try #require(OffsiteCommands.remoteCacheDirectory(target: scene.target, config: scene.config))
        let (remote, storage) = try OffsiteCommands.openRemote(target: scene.target, config: scene.config, create: true, local: scene.local,
                                                               cacheDirectory: cacheDirectory)
        var uploaders = [storage]
        for _ in 1..<count { uploaders += try OffsiteCommands.openConnections(1, target: scene.target, config: scene.config) }
        return (remote, uploaders)
    }

    /// Packs that an index on the remote names but the remote does not hold (under their names, whole).
    static func indexedPacksMissing(at scene: OffsiteScene) throws -> [String] {
        let remote = try scene.remote()
        let files = try Repository.files(in: remote.storage).files
        let index = remote.indexSnapshot
        return (0..<index.packs.count).map { index.packs[$0] }.filter { files[Repository.packPath($0)] == nil }
    }

    @Test func pushOverSeveralConnectionsIsCompleteAndVerifies() throws {
        let scene = try OffsiteScene(sizeMB: 40)
        let (remote, connections) = try Self.remoteAndUploaders(scene, count: 4)
        let uploaders = connections.map { CountingUploader($0) }
        let report = try scene.local.copy(try Self.latestFiles(scene), to: remote, uploaders: uploaders)
        #expect(report.packsUploaded >= 2 && report.snapshotsCopied == 2)
        // Every connection took packs from the shared queue, and every pack and snapshot file sent was counted once.
        #expect(uploaders.filter { $0.staged > 0 }.count == min(4, report.packsUploaded), "\(uploaders.map(\.staged))")
        #expect(uploaders.map(\.staged).reduce(0, +) == report.packsUploaded + report.snapshotsCopied)
        // Each pack is under its own name, whole; no temporary upload is left behind.
        let remoteFiles = try FileManager.default.subpathsOfDirectory(atPath: scene.server.root + "/offsite")
        #expect(!remoteFiles.contains { ($0 as NSString).lastPathComponent.hasPrefix(".") }, "\(remoteFiles.filter { $0.contains("/.") })")
        #expect(try Self.indexedPacksMissing(at: scene).isEmpty)
        let fresh = try scene.remote()
        #expect(try fresh.verify(readData: true).isHealthy)
        #expect(try fresh.snapshots().count == 2)
        let rebuilt = scene.scratch.appending("restored")
        for snapshot in try fresh.snapshots() where snapshot.tags["account"] == "user000" {
            _ = try fresh.restore(snapshot, target: rebuilt + "/home/user000")
        }
        #expect(try HostingFixtureTool.manifest(rebuilt, under: "home/user000/public_html")
                == HostingFixtureTool.manifest(scene.root, under: "home/user000/public_html"))
        // Nothing new: a second push over several connections sends nothing.
        let (again, more) = try Self.remoteAndUploaders(scene, count: 3)
        let second = try scene.local.copy(try Self.latestFiles(scene), to: again, uploaders: more)
        #expect(second.packsUploaded == 0 && second.snapshotsAlreadyThere == 2)
    }

    /// One of four connections drops while packs are going up: the push fails, no index on the remote names a pack
    /// that is not there (the packs the other connections sent are flushed and renamed but named by no index
    /// yet), no snapshot is there, and the next push sends only what is missing and leaves a healthy copy.
    @Test func oneConnectionDroppedMidPushLeavesNoIndexNamingAMissingPack() throws {
        let scene = try OffsiteScene(sizeMB: 40)
        let (remote, connections) = try Self.remoteAndUploaders(scene, count: 4)
        let server = scene.server
        let uploaders = connections.enumerated().map { number, connection in
            CountingUploader(connection, delay: .milliseconds(number == 3 ? 300 : 20)) { staged in
                // The newest sshd connection is the fourth uploader's: it drops before its first pack goes up.
                if number == 3 && staged == 0 { server.killConnection(newest: true) }
            }
        }
        #expect(throws: (any Error).self) { try scene.local.copy(try Self.latestFiles(scene), to: remote, uploaders: uploaders) }
        let sent = uploaders.prefix(3).map(\.staged).reduce(0, +)
        #expect(sent > 0, "the other connections sent nothing before the failure")
        #expect(try Self.indexedPacksMissing(at: scene).isEmpty)
        let after = try scene.remote()
        #expect(try after.snapshots().isEmpty)
        #expect(try after.verify(readData: false).isHealthy)

        let resumed = try scene.push()
        #expect(resumed.packsAlreadyThere >= sent, "packs flushed before the failure were sent again")
        let fresh = try scene.remote()
        #expect(try fresh.verify(readData: true).isHealthy)
        #expect(try fresh.snapshots().count == 2)
    }

    /// A push that did not finish leaves a marker; the next one then removes partial packs that a dropped connection
    /// left under temporary names in the pack directories, and a push that finishes removes the marker.
    @Test func pushAfterAnUnfinishedOneRemovesPartialPacks() throws {
        let scene = try OffsiteScene(sizeMB: 1)
        let cacheDirectory = try #require(OffsiteCommands.remoteCacheDirectory(target: scene.target, config: scene.config))
        let (_, storage) = try OffsiteCommands.openRemote(target: scene.target, config: scene.config, create: true, local: scene.local,
                                                          cacheDirectory: cacheDirectory)
        let packDirectory = scene.server.root + "/offsite/data/ab"
        try FileManager.default.createDirectory(atPath: packDirectory, withIntermediateDirectories: true)
        let partial = packDirectory + "/.ab12.tmp-0011223344556677"
        #expect(FileManager.default.createFile(atPath: partial, contents: Data("half a pack".utf8)))
        let marker = cacheDirectory + "/push-unfinished"
        // No marker: the directories are not searched.
        _ = try OffsiteCommands.afterInterruptedPushes(storage: storage, cacheDirectory: cacheDirectory) { 0 }
        #expect(FileManager.default.fileExists(atPath: partial))
        #expect(!FileManager.default.fileExists(atPath: marker))
        #expect(throws: AgentError.self) {
            try OffsiteCommands.afterInterruptedPushes(storage: storage, cacheDirectory: cacheDirectory) { throw AgentError("dropped") }
        }
        #expect(FileManager.default.fileExists(atPath: marker))
        _ = try OffsiteCommands.afterInterruptedPushes(storage: storage, cacheDirectory: cacheDirectory) { 0 }
        #expect(!FileManager.default.fileExists(atPath: partial))
        #expect(!FileManager.default.fileExists(atPath: marker))
    }

    /// A host that takes one handshake at a time (sshd `PerSourceMaxStartups 1`) refuses most of eight connections
    /// opened side by side: those are opened again one at a time, and the push goes over all of them.
    @Test func connectionsTheHostRefusesAreOpenedAgainOneAtATime() throws {
        let scene = try OffsiteScene(sizeMB: 2, sshdConfig: ["PerSourceMaxStartups 1"])
        let opened = try OffsiteCommands.openConnections(8, target: scene.target, config: scene.config)
        #expect(opened.count == 8)
        let cacheDirectory = try #require(OffsiteCommands.remoteCacheDirectory(target: scene.target, config: scene.config))
        let (remote, _) = try OffsiteCommands.openRemote(target: scene.target, config: scene.config, create: true, local: scene.local,
                                                         cacheDirectory: cacheDirectory, storage: opened[0])
        let report = try scene.local.copy(try Self.latestFiles(scene), to: remote, uploaders: opened)
        #expect(report.snapshotsCopied == 2)
        #expect(try scene.remote().verify(readData: true).isHealthy)

        // When not one opens, the error is the connection's own.
        var unknown = scene.config
        unknown.offsite.hostKey = "AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl"
        #expect(throws: AgentError.self) { try OffsiteCommands.openConnections(3, target: scene.target, config: unknown) }
    }

    @Test func connectionCountIsValidated() throws {
        #expect(AgentConfig().offsite.connections == 4)
        #expect(try AgentConfig.parse("[offsite]\nconnections = 8\n", file: "agent.conf").offsite.connections == 8)
        #expect(try AgentConfig.parse("[offsite]\nconnections = 1\n", file: "agent.conf").offsite.connections == 1)
        for bad in ["0", "9", "-1", "four", "2.5", ""] {
            do {
                _ = try AgentConfig.parse("[offsite]\nconnections = \(bad)\n", file: "agent.conf")
                Issue.record("connections = \(bad) accepted")
            } catch {
                #expect("\(error)".contains("agent.conf:2: connections must be a whole number from 1 to 8, got '\(bad)'"), "\(error)")
            }
            do {
                _ = try OffsiteCommands.run(["push", "--connections", bad, "--target", "sftp://u@127.0.0.1:1/x"])
                Issue.record("--connections \(bad) accepted")
            } catch let error as UsageError {
                #expect(error.message == "--connections must be a whole number from 1 to 8, got '\(bad)'", "\(error)")
            }
        }
    }

    @Test func wrongHostKeyUnknownHostAndBadCredentialsAreRefused() throws {
        var scene = try OffsiteScene(sizeMB: 1)
        scene.config.offsite.hostKey = "AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl"
        #expect(throws: AgentError.self) { _ = try scene.remote() }
        do { _ = try scene.remote() } catch { #expect("\(error)".contains("host key") || "\(error)".contains("fingerprint"), "\(error)") }

        scene.config.offsite.hostKey = nil
        scene.config.offsite.knownHosts = scene.scratch.appending("known_hosts")
        do {
            _ = try scene.remote()
            Issue.record("unknown host accepted")
        } catch {
            #expect("\(error)".contains("offsite trust"), "\(error)")
        }
        #expect(try OffsiteCommands.trust(target: scene.target, config: scene.config) == 0)
        _ = try scene.remote()

        scene.config.offsite.identity = scene.server.unauthorizedClientKeyPath
        do {
            _ = try scene.remote()
            Issue.record("unauthorized key accepted")
        } catch {
            #expect("\(error)".contains("cannot connect"), "\(error)")
        }
    }

    @Test func readOnlyRemoteGivesAClearErrorAndLeavesLocalDataIntact() throws {
        let scene = try OffsiteScene(sizeMB: 1, sftpArguments: ["-R"])
        do {
            _ = try scene.push()
            Issue.record("push to a read-only server succeeded")
        } catch {
            #expect("\(error)".lowercased().contains("permission") || "\(error)".contains("denied") || "\(error)".contains("read-only") || "\(error)".contains("FAILURE"), "\(error)")
        }
        #expect(try scene.local.verify(readData: true).isHealthy)
    }

    @Test func hostileRemoteNamesAreRefused() throws {
        let scene = try OffsiteScene(sizeMB: 1)
        _ = try scene.push()
        let snapshots = scene.server.root + "/offsite/snapshots"
        _ = FileManager.default.createFile(atPath: snapshots + "/evil\nname", contents: Data("x".utf8))
        do {
            _ = try scene.remote().snapshots()
            Issue.record("hostile name accepted")
        } catch {
            #expect("\(error)".contains("not safe"), "\(error)")
        }
    }

    /// The off-site copy gets a flipped byte in an index file and loses a pack: `offsite verify` says so (instead of
    /// refusing to open the copy), `offsite repair index` rebuilds its index from the packs' headers, the next push
    /// sends the lost pack again, and `offsite repair snapshots` drops what a pack lost later held.
    @Test func offsiteRepairBringsADamagedCopyBackToHealthy() throws {
        let scene = try OffsiteScene(sizeMB: 2)
        _ = try scene.push()
        let remoteRoot = scene.server.root + "/offsite"
        let arguments = ["--repo", scene.config.repository, "--key-file", scene.config.keyFile, "--target", scene.config.offsite.target!,
                         "--host-key", scene.config.offsite.hostKey!, "--identity", scene.config.offsite.identity!]
        let pushed = try scene.remote().snapshots()
        let rootID = try #require(BlobID(hex: pushed[0].tree))
        let (lostPack, _) = try #require(try scene.remote().location(of: rootID))
        try FileManager.default.removeItem(atPath: remoteRoot + "/" + Repository.packPath(lostPack))
        let index = try #require(try FileManager.default.contentsOfDirectory(atPath: remoteRoot + "/index").first)
        var bytes = [UInt8](try Data(contentsOf: URL(fileURLWithPath: remoteRoot + "/index/" + index)))
        bytes[bytes.count / 2] ^= 0x01
        try Data(bytes).write(to: URL(fileURLWithPath: remoteRoot + "/index/" + index))

        #expect(try OffsiteCommands.run(["verify"] + arguments) == 1)
        #expect(try OffsiteCommands.run(["repair", "index"] + arguments) == 0)
        // The push itself (the command adds the licence check, which this library-level scene has no controller for).
        _ = try scene.push()
        #expect(try OffsiteCommands.run(["verify", "--read-data"] + arguments) == 0)

        // A pack lost after that, with nothing to send it again: its files are dropped from the off-site snapshots.
        let (laterLoss, _) = try #require(try scene.remote().location(of: rootID))
        try FileManager.default.removeItem(atPath: remoteRoot + "/" + Repository.packPath(laterLoss))
        #expect(try OffsiteCommands.run(["verify"] + arguments) == 1)
        #expect(try OffsiteCommands.run(["repair", "snapshots"] + arguments) == 0)
        #expect(try OffsiteCommands.run(["verify", "--read-data"] + arguments) == 0)
        #expect(throws: UsageError.self) { try OffsiteCommands.run(["repair", "everything"] + arguments) }
    }

    @Test func targetURLsAreValidated() {
        #expect((try? OffsiteTarget(url: "sftp://backup@host.example:2222/srv/fk"))?.port == 2222)
        for bad in ["ftp://x@h/p", "sftp://host/path", "sftp://u@h:99999/p", "sftp://u@h/../etc", "sftp://u@h"] {
            #expect(throws: AgentError.self) { try OffsiteTarget(url: bad) }
        }
    }
}
