import BackupEngine
import CommandLineSupport
import Crypto
import Dispatch
import Foundation
import Posix
import SFTP
import Synchronization

/// `fleetkeep-agent offsite …`: the weekly off-site copy over SFTP. The remote is a repository in the same format
/// and with the same keys, so it stays encrypted; restores read straight from it.
public enum OffsiteCommands {
    static let defaultKnownHosts = "/etc/fleetkeep/offsite_known_hosts"
    static let options: Set<String> = BackupCommands.common.union(["target", "host-key", "known-hosts", "identity", "password-file",
                                                                   "keep-weekly", "account", "kind", "to", "path", "into-database", "state",
                                                                   "connections"])

    public static func run(_ raw: [String]) throws -> Int32 {
        let arguments = try Arguments(raw, options: options, flags: ["json", "read-data", "dry-run", "all", "load-databases"])
        guard let action = arguments.positionals.first else {
            throw UsageError("expected `offsite push|snapshots|verify|restore|prune|repair|trust`")
        }
        var config = try BackupCommands.settings(arguments)
        if let target = arguments.value("target") { config.offsite.target = target }
        if let pin = arguments.value("host-key") { config.offsite.hostKey = pin }
        if let knownHosts = arguments.value("known-hosts") { config.offsite.knownHosts = knownHosts }
        if let identity = arguments.value("identity") { config.offsite.identity = identity }
        if let passwordFile = arguments.value("password-file") { config.offsite.passwordFile = passwordFile }
        if let keep = arguments.value("keep-weekly") {
            guard let number = Int(keep), number >= 0 else { throw UsageError("--keep-weekly must be a whole number") }
            config.offsite.keepWeekly = number
        }
        if let connections = arguments.value("connections") {
            do {
                config.offsite.connections = try AgentConfig.OffsiteSettings.parseConnections(connections, source: "--connections")
            } catch let error as AgentError {
                throw UsageError(error.message)
            }
        }
        guard let targetText = config.offsite.target else {
            throw UsageError("no off-site target: pass --target sftp://user@host:port/path or set target in [offsite]")
        }
        let target = try OffsiteTarget(url: targetText)
        switch action {
        case "trust": return try trust(target: target, config: config)
        case "push": return try push(target: target, config: config, arguments: arguments)
        case "snapshots", "verify", "restore", "prune", "repair":
            let caches = try remoteCaches(target: target, config: config)
            defer { caches.scratch?.remove() }
            // verify and repair report damaged index files themselves.
            let (remote, _) = try openRemote(target: target, config: config, create: false, cacheDirectory: caches.path,
                                             warnAboutDamage: action != "verify" && action != "repair")
            switch action {
            case "snapshots":
                let list = try remote.snapshots()
                if arguments.flag("json") { print(try BackupCommands.jsonText(list)) } else {
                    for snapshot in list {
                        print("\(snapshot.shortID)  \(ISO8601DateFormatter().string(from: snapshot.time))  \(snapshot.tags["account"] ?? "-")  \(snapshot.tags["kind"] ?? "-")  \(snapshot.tags["database"] ?? "")")
                    }
                    print("\(list.count) snapshots at \(target.description)")
                }
                return 0
            case "verify":
                let report = try remote.verify(readData: arguments.flag("read-data"))
                if arguments.flag("json") { print(try BackupCommands.jsonText(report)) } else {
                    print("checked \(report.snapshots) snapshots, \(report.packs) packs at \(target.description)")
                    for problem in report.problems { print("problem: \(problem)") }
                    for (snapshot, files) in report.damagedFiles { print("snapshot \(snapshot.prefix(8)): damaged \(files.prefix(20).joined(separator: ", "))") }
                    if report.isHealthy {
                        print("off-site copy is healthy")
                    } else {
                        print("off-site copy is DAMAGED:")
                        for step in RepairCommands.advice(for: report, readData: arguments.flag("read-data"), copy: .offsite(target.description)) {
                            print("- \(step)")
                        }
                    }
                }
                return report.isHealthy ? 0 : 1
            case "repair":
                let what = try arguments.positional(1, "what to repair (`index` or `snapshots`)")
                return try RepairCommands.run(what, on: remote, arguments: arguments, copy: .offsite(target.description))
            case "prune":
                escrowAfterPush(state: AgentCommands.state(arguments), keyFile: config.keyFile, json: arguments.flag("json"))
        let keep = config.offsite.keepWeekly
                let report = try remote.prune(policy: { _ in RetentionPolicy(keepWeekly: keep) }, dryRun: arguments.flag("dry-run"))
                print("off-site: kept \(report.keptSnapshots.count) snapshots, removed \(report.removedSnapshots.count), \(report.bytesFreed / 1_048_576) MiB freed")
                return 0
            default:
                return try restore(remote: remote, config: config, arguments: arguments)
            }
        default:
            throw UsageError("unknown offsite action '\(action)' (push, snapshots, verify, restore, prune, repair, trust)")
        }
    }

    /// Connects with the pinned key or the known_hosts file; an unknown host says how to trust it.
    static func connect(target: OffsiteTarget, config: AgentConfig) throws -> SFTPSession {
        let policy: SSHHostKeyPolicy
        if let pin = config.offsite.hostKey {
            policy = .pinnedSHA256(pin)
        } else {
            let knownHosts = config.offsite.knownHosts ?? defaultKnownHosts
            guard FileManager.default.fileExists(atPath: knownHosts) else {
                throw AgentError("the host key of \(target.host):\(target.port) is not trusted yet; check it and run `fleetkeep-agent offsite trust --target \(target.description)` (or set host-key in [offsite])")
            }
            policy = .knownHosts(path: knownHosts)
        }
        let credentials: SSHCredentials
        if let passwordFile = config.offsite.passwordFile {
            credentials = .password(try SecretFile.read(passwordFile, what: "off-site password file"))
        } else {
            credentials = .privateKeyFile(path: config.offsite.identity ?? "/etc/fleetkeep/offsite_ed25519", passphrase: nil)
        }
        do {
            return try SFTPSession.connect(SFTPConnectionOptions(host: target.host, port: target.port, username: target.user,
                                                                 hostKeyPolicy: policy, credentials: credentials))
        } catch let error as SFTPError {
            throw AgentError("cannot connect to \(target.description): \(error)")
        }
    }

    /// Opens the remote repository, keeping its index and snapshot caches in the local `cacheDirectory`
    /// (see `remoteCaches`).
    /// `storage` is a connection already open to `target` (a new one is opened without it).
    static func openRemote(target: OffsiteTarget, config: AgentConfig, create: Bool, local: Repository? = nil,
                           cacheDirectory: String, warnAboutDamage: Bool = true, storage: SFTPStorage? = nil) throws -> (Repository, SFTPStorage) {
        let storage = try storage ?? openStorage(target: target, config: config)
        if create, let local {
            try local.replicateConfiguration(to: storage)
        }
        let remote = try Repository.open(storage: storage, keySource: .keyFile(config.keyFile), cacheDirectory: cacheDirectory)
        if warnAboutDamage { RepairCommands.warnAboutDamagedIndex(remote, copy: .offsite(target.description)) }
        return (remote, storage)
    }

    /// Where an off-site command keeps the remote's caches: in the local repository (`remoteCacheDirectory`), or,
    /// on a new server without one, in a private scratch directory made for this command, which the caller removes
    /// when it ends. Either way the remote index is on disk, in bounded memory.
    static func remoteCaches(target: OffsiteTarget, config: AgentConfig) throws -> (path: String, scratch: ScratchCacheDirectory?) {
        if let kept = remoteCacheDirectory(target: target, config: config) { return (kept, nil) }
        let scratch = try ScratchCacheDirectory()
        return (scratch.path, scratch)
    }

    /// The remote repository's index and snapshot caches live inside the local repository, one directory per target
    /// (`cache/offsite-<SHA-256 of the target URL, 16 hex digits>`): pushes then hold a bounded index in memory and
    /// re-open the remote without reading every index file over SFTP. Nil without a local repository (a disaster
    /// recovery on a new server).
    static func remoteCacheDirectory(target: OffsiteTarget, config: AgentConfig) -> String? {
        guard FileManager.default.fileExists(atPath: config.repository + "/config") else { return nil }
        return config.repository + "/cache/offsite-" + String(SHA256.hex(Array(target.description.utf8)).prefix(16))
    }

    static func trust(target: OffsiteTarget, config: AgentConfig) throws -> Int32 {
        let key: SSHHostKey
        do { key = try SSHSession.fetchHostKey(host: target.host, port: target.port) } catch let error as SFTPError {
            throw AgentError("cannot reach \(target.host):\(target.port) to read its host key: \(error)")
        }
        let path = config.offsite.knownHosts ?? defaultKnownHosts
        // Made durably (the pinned key must outlive a power cut), but an existing directory keeps its mode: the file
        // may be put next to others, in ~/.ssh or /etc/ssh.
        do throws(Errno) {
            try Directory.create(Directory.parentDirectory(of: path), permissions: 0o700, withParents: true, durable: true)
        } catch {
            throw AgentError("cannot create the directory of \(path): \(error)")
        }
        let existing = (try? String(contentsOfFile: path, encoding: .utf8)) ?? ""
        let line = key.knownHostsLine(host: target.host, port: target.port)
        if !existing.contains(line) { try PrivateFile.write(path, Array((existing + line + "\n").utf8)) }
        print("trusted \(target.host):\(target.port) \(key.algorithm) SHA256:\(key.sha256Fingerprint) (written to \(path))")
        return 0
    }

    static func push(target: OffsiteTarget, config: AgentConfig, arguments: Arguments) throws -> Int32 {
        // The tier gates off-site pushes; restores, listings and verification from the remote never ask.
        let accounts = try HostingAccounts.discover(root: config.root, configured: config.accounts).count
        try AgentLicence(state: AgentCommands.state(arguments), root: config.root, accountCount: accounts).require("offsite", for: "an off-site push")
        // Packs go up over `connections` SSH sessions, one thread each: libssh2 encrypts on the calling thread, so
        // one session keeps one core busy at most, and a session waiting for the server to flush its packs sends
        // nothing. A handshake mostly waits for the server, so they all happen while the local repository opens.
        let connecting = PendingConnections(config.offsite.connections, target: target, config: config)
        let local = try BackupCommands.open(config)
        let kinds = Set(config.offsite.kinds.map(\.rawValue))
        // The newest snapshot of every account/kind/database group: that is this week's off-site copy.
        let latest = BackupCommands.latestSnapshots(try local.snapshots().filter { kinds.contains($0.tags["kind"] ?? "") })
        let caches = try remoteCaches(target: target, config: config)
        defer { caches.scratch?.remove() }
        let uploaders = try connecting.wait()
        guard let storage = uploaders.first else { throw AgentError("no off-site connection was opened") }
        let (remote, _) = try openRemote(target: target, config: config, create: true, local: local, cacheDirectory: caches.path,
                                         storage: storage)
        for directory in ["data", "index", "snapshots"] { storage.removeTemporaryUploads(in: directory) }
        var progress: (@Sendable (CopyReport) -> Void)?
        if Console.isTerminal && !arguments.flag("json") { progress = showProgress }
        // The shared lease keeps a remote prune from deleting packs that are uploaded but not yet indexed.
        let report = try afterInterruptedPushes(storage: storage, cacheDirectory: caches.path) {
            try remote.withLock(exclusive: false) {
                try local.copy(latest, to: remote, uploaders: uploaders, progress: progress)
            }
        }
        escrowAfterPush(state: AgentCommands.state(arguments), keyFile: config.keyFile, json: arguments.flag("json"))
        let keep = config.offsite.keepWeekly
        let pruned = keep > 0 ? try remote.prune(policy: { _ in RetentionPolicy(keepWeekly: keep) }, dryRun: false) : nil
        if arguments.flag("json") { print(try BackupCommands.jsonText(report)) } else {
            if Console.isTerminal { FileHandle.standardOutput.write(Data("\r".utf8)) }
            print(String(format: "pushed %d snapshots (%d already there) to %@: %d packs uploaded, %d already there, %.1f MiB sent in %.1fs over %d connection%@",
                         report.snapshotsCopied, report.snapshotsAlreadyThere, target.description, report.packsUploaded,
                         report.packsAlreadyThere, Double(report.bytesUploaded) / 1_048_576, report.seconds, uploaders.count,
                         uploaders.count == 1 ? "" : "s"))
            if let pruned { print("off-site retention (keep \(keep) weekly): removed \(pruned.removedSnapshots.count) snapshots") }
        }
        return 0
    }

    /// Runs a push, cleaning up after an earlier one that did not finish. A connection that drops mid-upload leaves
    /// its partial pack under a temporary name in a `data/XX` directory, and only that connection could have removed
    /// it; finding such files means listing all 256 directories, so it is done only when the marker file in the
    /// remote's cache directory says the last push did not finish. The marker stays when `body` fails.
    static func afterInterruptedPushes<T>(storage: SFTPStorage, cacheDirectory: String, _ body: () throws -> T) throws -> T {
        let marker = cacheDirectory + "/push-unfinished"
        if FileManager.default.fileExists(atPath: marker) { storage.removeTemporaryUploadsInPackDirectories() }
        try FileManager.default.createDirectory(atPath: cacheDirectory, withIntermediateDirectories: true)
        guard FileManager.default.createFile(atPath: marker, contents: nil) else {
            throw AgentError("cannot write \(marker); check the permissions of \(cacheDirectory)")
        }
        let result = try body()
        try? FileManager.default.removeItem(atPath: marker)
        return result
    }

    /// One SFTP connection to `target` as repository storage.
    static func openStorage(target: OffsiteTarget, config: AgentConfig) throws -> SFTPStorage {
        SFTPStorage(session: try connect(target: target, config: config), target: target)
    }

    /// Up to `count` SFTP connections to `target`, opened side by side (each is a TCP, SSH and SFTP handshake).
    /// Fails only when none opens: an SFTP host that limits connections per client (sshd's `MaxStartups` or
    /// `PerSourceMaxStartups`, storage services' own limits) refuses some; those are tried again one at a time,
    /// and the push then goes on over the ones it got, saying so.
    static func openConnections(_ count: Int, target: OffsiteTarget, config: AgentConfig) throws -> [SFTPStorage] {
        guard count > 0 else { return [] }
        let results = Mutex([Result<SFTPStorage, any Error>?](repeating: nil, count: count))
        // Each on a thread of its own: a handshake mostly waits for the server, and `concurrentPerform` would run
        // only one per core at a time.
        Repository.onThreads(count, named: "fk-connect") { slot in
            let result = Result { try openStorage(target: target, config: config) }
            results.withLock { $0[slot] = result }
        }
        var opened: [SFTPStorage] = []
        var failure: (any Error)?
        for result in results.withLock({ $0 }) {
            switch result {
            case .success(let storage): opened.append(storage)
            case .failure(let error): failure = failure ?? error
            case nil: failure = failure ?? AgentError("an off-site connection was not opened")
            }
        }
        if opened.isEmpty { throw failure ?? AgentError("no off-site connection was opened") }
        if failure != nil {
            // sshd's MaxStartups and PerSourceMaxStartups count handshakes in progress, not connections: one at a
            // time, the refused ones may get in.
            failure = nil
            for _ in opened.count..<count {
                do {
                    opened.append(try openStorage(target: target, config: config))
                } catch {
                    failure = error
                    break
                }
            }
        }
        if let failure {
            Console.error("warning: \(opened.count) of \(count) connections to \(target.description) opened (\(failure)); pushing over \(opened.count)")
        }
        return opened
    }

    /// Connections being opened on a thread of their own while the caller does other work; `wait` takes them.
    final class PendingConnections: Sendable {
        private let result = Mutex<Result<[SFTPStorage], any Error>?>(nil)
        private let finished = DispatchSemaphore(value: 0)

        init(_ count: Int, target: OffsiteTarget, config: AgentConfig) {
            startNamedThread("fk-connect") { [self] in
                let opened = Result { try OffsiteCommands.openConnections(count, target: target, config: config) }
                result.withLock { $0 = opened }
                finished.signal()
            }
        }

        func wait() throws -> [SFTPStorage] {
            finished.wait()
            finished.signal()
            guard let opened = result.withLock({ $0 }) else { throw AgentError("the off-site connections were not opened") }
            return try opened.get()
        }
    }

    @Sendable static func showProgress(_ report: CopyReport) {
        FileHandle.standardOutput.write(Data("\r  \(report.packsUploaded) packs, \(report.bytesUploaded / 1_048_576) MiB sent".utf8))
    }

    /// The off-site copy is useless after losing the server unless its key survives too, so every push also
    /// escrows the key file with the controller (sealed to the operator's recovery key; a rotated recovery key is
    /// picked up on the next push). The data is already pushed: a failure here is a loud warning, not an error.
    static func escrowAfterPush(state: AgentState, keyFile: String, json: Bool) {
        guard state.isEnrolled else {
            Console.error("note: this agent is not enrolled with a controller, so the repository key was not escrowed; keep a copy of \(keyFile) off this server")
            return
        }
        do {
            let recipient = try KeyEscrow.deposit(state: state, keyFile: keyFile)
            if !json { print("repository key escrowed with the controller, sealed to recovery key \(recipient.prefix(12))…") }
        } catch {
            Console.error("warning: the off-site copy was pushed, but the repository key could not be escrowed: \(error). Without it (or a copy of \(keyFile)) the off-site copy cannot be opened after losing this server; run `fleetkeep-agent escrow` once this is fixed")
        }
    }

    /// Restores from the remote. With `--all`, rebuilds every account under `--to` (a new server's root):
    /// the latest files snapshot of each account goes back to its home, and databases are written as .sql files
    /// (or loaded into the local MariaDB with `--load-databases`).
    static func restore(remote: Repository, config: AgentConfig, arguments: Arguments) throws -> Int32 {
        guard let destination = arguments.value("to") else { throw UsageError("--to DIR is required (where to restore)") }
        var chosen: [Snapshot]
        if arguments.flag("all") {
            chosen = BackupCommands.latestSnapshots(try remote.snapshots())
        } else {
            let reference = try arguments.positional(1, "snapshot (an id, `latest`, or --all)")
            var tags: [String: String] = [:]
            tags["account"] = arguments.value("account")
            tags["kind"] = arguments.value("kind")
            chosen = [try remote.findSnapshot(reference, tags: tags)]
        }
        // Whatever can be read is restored; every account, listing and file that cannot be is named.
        var outcome = BackupCommands.RestoreOutcome()
        for snapshot in chosen {
            let account = snapshot.tags["account"] ?? "unknown"
            do {
                if snapshot.tags["kind"] == BackupKind.databases.rawValue {
                    let name = snapshot.tags["database"] ?? "database"
                    if arguments.flag("load-databases") {
                        try DatabaseDumper(settings: config.database).load(into: name) { try remote.restoreStream(snapshot, to: $0) }
                        print("\(account): database \(name) loaded")
                    } else {
                        let path = try BackupCommands.writeDump(snapshot, from: remote, into: destination + "/var/lib/fleetkeep/restored-databases",
                                                                beneath: destination)
                        print("\(account): database \(name) written to \(path)")
                    }
                    outcome.restored += 1
                    continue
                }
                let where_ = arguments.flag("all") ? destination + (try BackupCommands.restoreLocation(of: snapshot)) : destination
                // Only --to is the operator's path: with --all, the homes below it may hold an account owner's symlinks.
                let summary = try remote.restore(snapshot, subpath: arguments.value("path"), target: where_, beneath: destination)
                outcome.restored += 1
                print("\(account) \(snapshot.tags["kind"] ?? ""): restored \(summary.files) files to \(where_)")
                if !summary.errors.isEmpty {
                    outcome.failed("\(account) \(snapshot.tags["kind"] ?? ""): \(summary.errors.count) paths could NOT be restored:")
                    for error in summary.errors.prefix(20) { Console.error("  could not restore \(error)") }
                }
            } catch {
                outcome.failed("\(account) \(snapshot.tags["kind"] ?? "")\(snapshot.tags["database"].map { " \($0)" } ?? ""): snapshot \(snapshot.shortID) NOT restored: \(error)")
            }
        }
        return outcome.status(advice: "where it is damaged data, run `fleetkeep-agent offsite verify`")
    }
}
