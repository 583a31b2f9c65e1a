import BackupEngine
import CommandLineSupport
import Foundation
import Synchronization

/// The `fleetkeep-agent` backup commands: repo init, backup, snapshots, restore, verify, prune.
public enum BackupCommands {
    static let common: Set<String> = ["config", "key-file", "repo", "root"]

    /// Config file values, overridden by flags.
    static func settings(_ arguments: Arguments) throws -> AgentConfig {
        var config = try AgentConfig.load(path: arguments.value("config"))
        if let root = arguments.value("root") { config.root = root }
        if let repo = arguments.value("repo") { config.repository = repo }
        if let key = arguments.value("key-file") { config.keyFile = key }
        return config
    }

    /// Opens the local repository; damaged index files are skipped, with a warning saying how to repair them
    /// (unless the command reports or repairs them itself).
    static func open(_ config: AgentConfig, warnAboutDamage: Bool = true) throws -> Repository {
        let repository = try Repository.open(storage: LocalStorage(root: config.repository), keySource: .keyFile(config.keyFile))
        if warnAboutDamage { RepairCommands.warnAboutDamagedIndex(repository, copy: .local) }
        return repository
    }

    public static func repo(_ raw: [String]) throws -> Int32 {
        let arguments = try Arguments(raw, options: common)
        guard arguments.positionals == ["init"] else { throw UsageError("expected `repo init`") }
        let config = try settings(arguments)
        let existed = FileManager.default.fileExists(atPath: config.keyFile)
        try Repository.initialize(storage: LocalStorage(root: config.repository), keySource: .keyFile(config.keyFile))
        print("repository created at \(config.repository)")
        print(existed ? "sealed with the existing key file \(config.keyFile)" : "new key file \(config.keyFile) (mode 0600): keep a copy off this server, or escrow it")
        return 0
    }

    /// One snapshot made (or failed) by `backup`.
    struct BackupResult: Codable, Sendable {
        var account: String
        var kind: String
        var database: String?
        var snapshot: String?
        var summary: BackupSummary?
        var error: String?
    }

    public static func backup(_ raw: [String]) throws -> Int32 {
        let arguments = try Arguments(raw, options: common.union(["account", "kind"]), flags: ["json"])
        try arguments.expectPositionals(atMost: 0)
        let config = try settings(arguments)
        let kinds = try arguments.value("kind").map { try BackupKind.parseList($0, source: "--kind") } ?? BackupKind.allCases
        var accounts = try HostingAccounts.discover(root: config.root, configured: config.accounts)
        let wanted = arguments.list("account")
        // `--account ''` (an unset shell variable, say) must not mean every account.
        if arguments.value("account") != nil && wanted.isEmpty { throw UsageError("--account needs a user name") }
        for user in wanted where !accounts.contains(where: { $0.user == user }) {
            throw UsageError("--account \(user) is not a hosting account on this server (found: \(accounts.map(\.user).joined(separator: ", ")))")
        }
        if !wanted.isEmpty { accounts = accounts.filter { wanted.contains($0.user) } }
        let repository = try open(config)
        let json = arguments.flag("json")
        let run = BackupRun(config: config, json: json, showsProgress: Console.isTerminal && !json,
                            progressFile: ProcessInfo.processInfo.environment[JobChild.progressFileVariable])
        let session = try BackupSession(repository: repository)
        defer { session.close() }
        // Start-up touched library pages (relocations, option parsing, key derivation) that a long backup never
        // uses again; handing them back keeps them out of the backup's resident set (see IdleMemory).
        IdleMemory.releaseCleanFilePages()
        // One account per core at a time; an account's kinds run one after another.
        let items = accounts.flatMap { account in kinds.map { (account, $0) } }
        let runner = ConcurrentRunner(checkpointInterval: 120)
        runner.run(count: items.count, width: ProcessInfo.processInfo.activeProcessorCount, job: { index in
            run.backup(items[index].0, kind: items[index].1, session: session)
        }, checkpoint: { run.commit(session) })
        run.commit(session)
        let results = run.results
        if json { print(try jsonText(results)) }
        let failures = results.filter { $0.error != nil }.count
        if failures > 0 {
            Console.error("\(failures) of \(results.count) backups failed; see the messages above. The others were recorded.")
            return 1
        }
        return 0
    }

    /// The backups of one `backup` command: runs them in a session and collects their results, in the order of
    /// accounts and kinds, whatever order they finish in.
    final class BackupRun: @unchecked Sendable {
        // @unchecked: `state` is a Mutex; the rest is immutable.
        private let config: AgentConfig
        private let json: Bool
        private let progress: (@Sendable (BackupSummary) -> Void)?
        private struct State {
            var results: [BackupResult] = []
            /// Results waiting for `commit` to give them a snapshot id, by session ticket.
            var uncommitted: [Int: Int] = [:]
        }
        private let state = Mutex(State())

        init(config: AgentConfig, json: Bool, showsProgress: Bool, progressFile: String? = nil) {
            self.config = config
            self.json = json
            if let progressFile {
                progress = JobChild.progressWriter(path: progressFile)
            } else {
                progress = showsProgress ? BackupCommands.showProgress : nil
            }
        }

        var results: [BackupResult] { state.withLock { $0.results } }

        func backup(_ account: HostingAccount, kind: BackupKind, session: BackupSession) {
            let tags = ["account": account.user, "kind": kind.rawValue, "host": config.host]
            switch kind {
            case .files, .email:
                let directory = kind == .files ? account.home : account.mailDirectory
                var result = BackupResult(account: account.user, kind: kind.rawValue)
                do {
                    guard FileManager.default.fileExists(atPath: directory) else {
                        if kind == .email { return }
                        throw AgentError("home directory \(directory) does not exist")
                    }
                    // The home, relative to the server root, lets a disaster-recovery restore put it back in place.
                    let home = String(account.home.dropFirst(config.root.hasSuffix("/") ? config.root.count - 1 : config.root.count))
                    let options = BackupOptions(tags: tags.merging(["home": home]) { $1 }, excludes: kind == .files ? ["mail"] : [], progress: progress)
                    let ticket = try session.backup(directory: directory, options: options)
                    record(result, ticket: ticket)
                } catch {
                    result.error = "\(error)"
                    record(result, ticket: nil)
                }
            case .databases:
                guard config.database.enabled else { return }
                let dumper = DatabaseDumper(settings: config.database)
                let names: [String]
                do {
                    names = try dumper.databases(of: account.user)
                } catch {
                    record(BackupResult(account: account.user, kind: kind.rawValue, error: "\(error)"), ticket: nil)
                    return
                }
                for name in names {
                    var result = BackupResult(account: account.user, kind: kind.rawValue, database: name)
                    do {
                        let ticket = try dumper.dump(database: name) { descriptor, confirm in
                            try session.backup(stream: descriptor, name: name + ".sql",
                                               options: BackupOptions(tags: tags.merging(["database": name]) { $1 }, chunking: .streams,
                                                                      beforeCommit: confirm))
                        }
                        record(result, ticket: ticket)
                    } catch {
                        result.error = "\(error)"
                        record(result, ticket: nil)
                    }
                }
            }
        }

        private func record(_ result: BackupResult, ticket: Int?) {
            state.withLock { state in
                if let ticket { state.uncommitted[ticket] = state.results.count }
                state.results.append(result)
            }
            if ticket == nil { report(result, json: json) }
        }

        /// Records the finished snapshots; if that fails, every backup waiting for it is reported failed.
        func commit(_ session: BackupSession) {
            var done: [BackupResult] = []
            func recorded(_ snapshots: [Int: Snapshot]) {
                state.withLock { state in
                    var positions: [Int] = []
                    for (ticket, snapshot) in snapshots {
                        guard let position = state.uncommitted.removeValue(forKey: ticket) else { continue }
                        state.results[position].snapshot = snapshot.id
                        state.results[position].summary = snapshot.summary
                        positions.append(position)
                    }
                    done += positions.sorted().map { state.results[$0] }
                }
            }
            func notRecorded(_ error: any Error) {
                state.withLock { state in
                    for position in state.uncommitted.values.sorted() {
                        state.results[position].error = "not recorded: \(error)"
                        done.append(state.results[position])
                    }
                    state.uncommitted = [:]
                }
            }
            do {
                recorded(try session.commit())
            } catch let partial as PartialCommit {
                recorded(partial.recorded)
                notRecorded(partial.failure)
            } catch {
                notRecorded(error)
            }
            for result in done { report(result, json: json) }
        }
    }

    @Sendable static func showProgress(_ summary: BackupSummary) {
        let files = summary.filesNew + summary.filesChanged + summary.filesUnchanged
        let line = "\r  \(files) files, \(summary.bytesRead / 1_048_576) MiB read"
        FileHandle.standardOutput.write(Data(line.utf8))
    }

    static func report(_ result: BackupResult, json: Bool) {
        guard !json else { return }
        if Console.isTerminal { FileHandle.standardOutput.write(Data("\r".utf8)) }
        let what = "\(result.account) \(result.kind)\(result.database.map { " \($0)" } ?? "")"
        if let error = result.error {
            Console.error("\(what): FAILED: \(error)")
        } else if let summary = result.summary, let id = result.snapshot {
            let files = summary.filesNew + summary.filesChanged + summary.filesUnchanged
            let unchanged = summary.directoriesUnchanged.map { ", \($0) of \(summary.directories + 1) directories as last time" } ?? ""
            print(String(format: "%@: snapshot %@, %d files (%d read)%@, %.1f MiB added, %.1fs%@", what, String(id.prefix(8)), files,
                         summary.filesRead, unchanged, Double(summary.bytesAdded) / 1_048_576, summary.seconds,
                         summary.errors.isEmpty ? "" : ", \(summary.errors.count) files skipped: \(summary.errors.prefix(3).joined(separator: "; "))"))
        }
    }

    public static func snapshots(_ raw: [String]) throws -> Int32 {
        let arguments = try Arguments(raw, options: common.union(["account", "kind"]), flags: ["json"])
        try arguments.expectPositionals(atMost: 0)
        let repository = try open(try settings(arguments))
        var filter: [String: String] = [:]
        filter["account"] = arguments.value("account")
        if let kind = arguments.value("kind") {
            // A misspelt kind would list nothing, as if there were no snapshots.
            guard BackupKind(rawValue: kind) != nil else { throw UsageError("--kind '\(kind.prefix(32))' is not a kind (use files, databases, email)") }
            filter["kind"] = kind
        }
        let list = try repository.snapshots().filter { snapshot in filter.allSatisfy { snapshot.tags[$0.key] == $0.value } }
        if arguments.flag("json") {
            print(try jsonText(list))
            return 0
        }
        let formatter = ISO8601DateFormatter()
        print("ID        TIME                  ACCOUNT     KIND       DATABASE          SIZE")
        for snapshot in list {
            let tags = snapshot.tags
            print(String(format: "%@  %@  %@  %@  %@  %8.1f MiB", snapshot.shortID, formatter.string(from: snapshot.time),
                         (tags["account"] ?? "-").padding(toLength: 10, withPad: " ", startingAt: 0),
                         (tags["kind"] ?? "-").padding(toLength: 9, withPad: " ", startingAt: 0),
                         (tags["database"] ?? "-").padding(toLength: 16, withPad: " ", startingAt: 0),
                         Double(snapshot.summary.bytesTotal) / 1_048_576))
        }
        print("\(list.count) snapshots")
        return 0
    }

    public static func restore(_ raw: [String]) throws -> Int32 {
        let arguments = try Arguments(raw, options: common.union(["account", "kind", "path", "target", "database", "into-database"]), flags: ["json", "all"])
        let reference = try arguments.positional(0, "snapshot (an id, or `latest`)")
        try arguments.expectPositionals(atMost: 1)
        let config = try settings(arguments)
        let repository = try open(config)
        if arguments.flag("all") {
            IdleMemory.releaseCleanFilePages()
            return try restoreAll(repository, reference: reference, arguments: arguments)
        }
        var tags: [String: String] = [:]
        tags["account"] = arguments.value("account")
        tags["kind"] = arguments.value("kind")
        tags["database"] = arguments.value("database")
        if reference == "latest" && (tags["account"] == nil || tags["kind"] == nil) {
            throw UsageError("`restore latest` needs --account and --kind to say which latest snapshot")
        }
        var chosen = [try repository.findSnapshot(reference, tags: tags)]
        if reference == "latest", tags["kind"] == BackupKind.databases.rawValue, tags["database"] == nil {
            // The latest snapshot of every database of the account.
            let all = try repository.snapshots().filter { $0.tags["account"] == tags["account"] && $0.tags["kind"] == "databases" }
            chosen = Dictionary(grouping: all) { $0.tags["database"] ?? "" }.values.compactMap { $0.last }.sorted { $0.time < $1.time }
        }
        for snapshot in chosen {
            if snapshot.tags["kind"] == BackupKind.databases.rawValue {
                let name = snapshot.tags["database"] ?? "database"
                if let database = arguments.value("into-database") {
                    try DatabaseDumper(settings: config.database).load(into: database) { try repository.restoreStream(snapshot, to: $0) }
                    print("snapshot \(snapshot.shortID): database \(name) loaded into \(database)")
                } else {
                    guard let target = arguments.value("target") else { throw UsageError("--target DIR (or --into-database NAME) is required") }
                    let path = try writeDump(snapshot, from: repository, into: target)
                    print("snapshot \(snapshot.shortID): database \(name) written to \(path)")
                }
                continue
            }
            guard let target = arguments.value("target") else { throw UsageError("--target DIR is required") }
            let summary = try repository.restore(snapshot, subpath: arguments.value("path"), target: target)
            if arguments.flag("json") { print(try jsonText(summary)) } else {
                print("snapshot \(snapshot.shortID): restored \(summary.files) files, \(summary.directories) directories, \(summary.symlinks) symlinks, \(summary.hardlinks) hard links (\(String(format: "%.1f", Double(summary.bytes) / 1_048_576)) MiB) to \(FileName.printable(target))")
            }
            if !summary.errors.isEmpty {
                Console.error("\(summary.errors.count) files could NOT be restored (each line says why; where it is damaged data, run `fleetkeep-agent verify --read-data`):")
                for error in summary.errors.prefix(50) { Console.error("  \(error)") }
                return 1
            }
        }
        return 0
    }

    /// `restore latest --all --target ROOT`: the latest snapshot of every account (or of each `--account`) and kind
    /// (`--kind`, default files and email) back in its place under ROOT, as on the server: files in the home, email
    /// in home/mail, databases as .sql files in ROOT/var/lib/fleetkeep/restored-databases. One process writes all
    /// accounts with one pool of threads. Whatever can be read is restored; every account, listing and file that
    /// cannot be is named, and the exit status is then `partialRestore` (1 when nothing at all was restored).
    static func restoreAll(_ repository: Repository, reference: String, arguments: Arguments) throws -> Int32 {
        guard reference == "latest" else { throw UsageError("--all restores the latest snapshots; use `restore latest --all`") }
        guard let root = arguments.value("target") else { throw UsageError("--target DIR is required (the root to rebuild the accounts under)") }
        let kinds = try arguments.value("kind").map { try BackupKind.parseList($0, source: "--kind") } ?? [.files, .email]
        let accounts = arguments.list("account")
        let (all, unreadable) = try repository.snapshotsReportingDamage()
        let chosen = latestSnapshots(all).filter { snapshot in
            kinds.contains { $0.rawValue == snapshot.tags["kind"] } && (accounts.isEmpty || accounts.contains(snapshot.tags["account"] ?? ""))
        }
        guard !chosen.isEmpty else { throw AgentError("no snapshots match in \(repository.storage.location); see `fleetkeep-agent snapshots`") }
        var outcome = RestoreOutcome()
        if !unreadable.isEmpty {
            // Which account such a file was for cannot be known: an older snapshot of it may have been chosen instead.
            outcome.failed("\(unreadable.count) snapshot files cannot be read (damaged: \(unreadable.map { $0.prefix(16) }.joined(separator: ", "))); "
                + "the accounts they belong to may be restored from an older snapshot, or not at all")
        }
        var trees: [(snapshot: Snapshot, target: String)] = []
        for snapshot in chosen {
            let what = "\(snapshot.tags["account"] ?? "-") \(snapshot.tags["kind"] ?? "-")"
            do {
                if snapshot.tags["kind"] == BackupKind.databases.rawValue {
                    let path = try writeDump(snapshot, from: repository, into: root + "/var/lib/fleetkeep/restored-databases", beneath: root)
                    print("\(snapshot.tags["account"] ?? "-") database \(snapshot.tags["database"] ?? "-"): written to \(path)")
                    outcome.restored += 1
                } else {
                    trees.append((snapshot, root + (try restoreLocation(of: snapshot))))
                }
            } catch {
                outcome.failed("\(what)\(snapshot.tags["database"].map { " \($0)" } ?? ""): NOT restored: \(error)")
            }
        }
        // Only ROOT is the operator's path: the homes below it may hold an account owner's symlinks.
        let summaries = try repository.restore(trees, beneath: root)
        for ((snapshot, target), summary) in zip(trees, summaries) {
            let what = "\(snapshot.tags["account"] ?? "-") \(snapshot.tags["kind"] ?? "-")"
            if let failure = summary.failure {
                outcome.failed("\(what): snapshot \(snapshot.shortID) NOT restored: \(failure)")
                continue
            }
            outcome.restored += 1
            if !arguments.flag("json") {
                print("\(what): snapshot \(snapshot.shortID), \(summary.files) files (\(String(format: "%.1f", Double(summary.bytes) / 1_048_576)) MiB) to \(FileName.printable(target))")
            }
            if !summary.errors.isEmpty { outcome.failed("\(what): \(summary.errors.count) paths could NOT be restored:") }
            for error in summary.errors.prefix(20) { Console.error("  could not restore \(error)") }
            if summary.errors.count > 20 { Console.error("  … and \(summary.errors.count - 20) more") }
        }
        if arguments.flag("json") { print(try jsonText(summaries)) }
        return outcome.status(advice: "where it is damaged data, run `fleetkeep-agent verify`")
    }

    /// Exit status of a restore that went on past what it could not restore: some things restored and some not is a
    /// partial restore.
    static let partialRestore: Int32 = 3

    /// What a restore of many snapshots restored and what it names as not restored.
    struct RestoreOutcome {
        var restored = 0
        var failures = 0

        /// Names what could not be restored, on standard error.
        mutating func failed(_ message: String) {
            failures += 1
            Console.error(message)
        }

        /// 0 when everything was restored, `partialRestore` when only some was, 1 when nothing was.
        func status(advice: String) -> Int32 {
            guard failures > 0 else { return 0 }
            Console.error(restored > 0 ? "partial restore: everything else was restored (\(advice))" : "nothing could be restored (\(advice))")
            return restored > 0 ? BackupCommands.partialRestore : 1
        }
    }

    /// The newest snapshot of each group (same account, kind, host and database), oldest group first.
    static func latestSnapshots(_ snapshots: [Snapshot]) -> [Snapshot] {
        Dictionary(grouping: snapshots) { $0.tags }.values.compactMap { $0.last }.sorted { ($0.tags["account"] ?? "", $0.tags["kind"] ?? "", $0.time) < ($1.tags["account"] ?? "", $1.tags["kind"] ?? "", $1.time) }
    }

    /// Where a files or email snapshot belongs relative to the server root: the account's home (from the snapshot's
    /// `home` tag), and home/mail for email. Tags come from the repository, so they are checked before use.
    static func restoreLocation(of snapshot: Snapshot) throws -> String {
        let account = snapshot.tags["account"] ?? "unknown"
        let home = snapshot.tags["home"] ?? "/home/\(account)"
        guard home.hasPrefix("/"), !home.split(separator: "/").contains(where: { $0 == ".." || $0 == "." }), !home.contains("\0") else {
            throw AgentError("snapshot \(snapshot.shortID) has an unsafe home tag \(home.debugDescription); refusing to restore it")
        }
        return snapshot.tags["kind"] == BackupKind.email.rawValue ? home + "/mail" : home
    }

    /// Writes a database snapshot to `directory/<database>.sql` (mode 0600) and returns the path. The database
    /// name comes from the snapshot's tags, so it is checked before it becomes part of a path. With `root`,
    /// `directory` is inside `root` and only `root` is the operator's own path: what is below it is made and opened
    /// without following symlinks, as in a restore, and the file replaces whatever stands at its name.
    static func writeDump(_ snapshot: Snapshot, from repository: Repository, into directory: String, beneath root: String? = nil) throws -> String {
        let name = snapshot.tags["database"] ?? "database"
        try HostingAccounts.validateName(name, source: "snapshot \(snapshot.shortID)")
        return try repository.restoreStream(snapshot, toFileNamed: name + ".sql", in: directory, beneath: root)
    }

    public static func verify(_ raw: [String]) throws -> Int32 {
        let arguments = try Arguments(raw, options: common.union(["read-data-part"]), flags: ["read-data", "json"])
        try arguments.expectPositionals(atMost: 0)
        let repository = try open(try settings(arguments), warnAboutDamage: false)
        var readPacks: ((String) -> Bool)?
        if let text = arguments.value("read-data-part") {
            let pieces = text.split(separator: "/")
            guard pieces.count == 2, let part = Int(pieces[0]), let parts = Int(pieces[1]), (1...366).contains(parts), (0..<parts).contains(part) else {
                throw UsageError("--read-data-part '\(text.prefix(32))' must be P/N with 0 <= P < N <= 366, e.g. 3/7")
            }
            readPacks = { VerifyReport.packIsInPart($0, part: part, of: parts) }
        }
        let report = try repository.verify(readData: arguments.flag("read-data") || readPacks != nil, readPacks: readPacks)
        if arguments.flag("json") { print(try jsonText(report)) } else {
            print("checked \(report.snapshots) snapshots, \(report.packs) packs\(arguments.flag("read-data") ? ", \(report.blobsChecked) blobs (\(report.bytesRead / 1_048_576) MiB read)" : "")")
            for problem in report.problems { print("problem: \(problem)") }
            for (snapshot, files) in report.damagedFiles.sorted(by: { $0.key < $1.key }) {
                print("snapshot \(snapshot.prefix(8)): \(files.count) damaged files: \(files.prefix(20).joined(separator: ", "))")
            }
            if report.isHealthy {
                print("repository is healthy")
            } else {
                print("repository is DAMAGED:")
                for step in RepairCommands.advice(for: report, readData: arguments.flag("read-data"), copy: .local) { print("- \(step)") }
            }
        }
        return report.isHealthy ? 0 : 1
    }

    public static func prune(_ raw: [String]) throws -> Int32 {
        let arguments = try Arguments(raw, options: common.union(["keep-files", "keep-databases", "keep-email"]), flags: ["dry-run", "json"])
        try arguments.expectPositionals(atMost: 0)
        let config = try settings(arguments)
        let repository = try open(config)
        var retention = config.retention
        // Days kept per kind, from the controller's policy when a scheduled prune runs (`JobAgent`), over the config.
        for (option, kind) in [("keep-files", BackupKind.files), ("keep-databases", .databases), ("keep-email", .email)] {
            guard let text = arguments.value(option) else { continue }
            guard let days = Int(text), (1...3660).contains(days) else { throw UsageError("--\(option) '\(text.prefix(32))' must be a number of days from 1 to 3660") }
            retention[kind] = RetentionPolicy(keepDaily: days)
        }
        let report = try repository.prune(policy: { tags in
            tags["kind"].flatMap(BackupKind.init(rawValue:)).flatMap { retention[$0] } ?? RetentionPolicy()
        }, dryRun: arguments.flag("dry-run"))
        if arguments.flag("json") { print(try jsonText(report)) } else {
            for pack in report.missingPacks { print("pack \(pack.prefix(16)) is missing: left out of the index (its blobs are lost)") }
            if !report.snapshotsWithUnreadableListings.isEmpty {
                print("\(report.snapshotsWithUnreadableListings.count) kept snapshots have directory listings that cannot be read, so no pack "
                    + "was deleted or rewritten: run `fleetkeep-agent repair snapshots`, then prune again")
            }
            print("\(report.dryRun ? "would keep" : "kept") \(report.keptSnapshots.count) snapshots, \(report.dryRun ? "would remove" : "removed") \(report.removedSnapshots.count); packs deleted \(report.packsDeleted) (rewritten \(report.packsRewritten)); \(String(format: "%.1f", Double(report.bytesFreed) / 1_048_576)) MiB freed")
        }
        return 0
    }

    static func jsonText<T: Encodable>(_ value: T) throws -> String {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
        encoder.dateEncodingStrategy = .iso8601
        return String(decoding: try encoder.encode(value), as: UTF8.self)
    }
}
