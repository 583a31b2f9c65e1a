import BackupEngine
import CommandLineSupport
import Foundation

/// `fleetkeep-agent repair index|snapshots` and `offsite repair index|snapshots`, and the advice every command gives
/// about a damaged repository: one place, so the local and the off-site copy say the same things.
public enum RepairCommands {
    public static func repair(_ raw: [String]) throws -> Int32 {
        let arguments = try Arguments(raw, options: BackupCommands.common, flags: ["read-data", "json"])
        let action = try arguments.positional(0, "what to repair (`index` or `snapshots`)")
        try arguments.expectPositionals(atMost: 1)
        let repository = try BackupCommands.open(try BackupCommands.settings(arguments), warnAboutDamage: false)
        return try run(action, on: repository, arguments: arguments, copy: .local)
    }

    /// Which repository a message is about, and which commands act on it.
    enum Copy {
        case local
        case offsite(String)

        /// The command prefix: `fleetkeep-agent ` or `fleetkeep-agent offsite `.
        var commands: String {
            switch self {
            case .local: return "fleetkeep-agent "
            case .offsite: return "fleetkeep-agent offsite "
            }
        }

        var name: String {
            switch self {
            case .local: return "the repository"
            case .offsite(let target): return "the off-site copy at \(target)"
            }
        }

        /// What puts back blobs that were lost: a backup from the source, or a push from the local repository.
        var refill: String {
            switch self {
            case .local: return "the next backup stores again whatever the source still has"
            case .offsite: return "the next `fleetkeep-agent offsite push` sends again whatever the local repository still has"
            }
        }
    }

    static func run(_ action: String, on repository: Repository, arguments: Arguments, copy: Copy) throws -> Int32 {
        switch action {
        case "index":
            let report = try repository.repairIndex()
            if arguments.flag("json") { print(try BackupCommands.jsonText(report)) } else { printIndexRepair(report, copy: copy) }
            return 0
        case "snapshots":
            let report = try repository.repairSnapshots(readData: arguments.flag("read-data"))
            if arguments.flag("json") { print(try BackupCommands.jsonText(report)) } else { printSnapshotRepair(report, copy: copy) }
            return 0
        default:
            throw UsageError("unknown repair '\(action)': expected `\(copy.commands)repair index` or `\(copy.commands)repair snapshots [--read-data]`")
        }
    }

    static func printIndexRepair(_ report: IndexRepairReport, copy: Copy) {
        print("index of \(copy.name) rebuilt from the headers of \(report.packsIndexed) packs (\(report.blobsIndexed) blobs); "
            + "\(report.indexFilesReplaced) index files replaced, \(report.damagedIndexFiles.count) of them damaged")
        for pack in report.missingPacks { print("pack \(pack.prefix(16)) is missing: its blobs are lost and left out of the index") }
        for pack in report.packsRewritten { print("pack \(pack.prefix(16)) had a damaged header: rewritten with a new one") }
        if report.blobsLost > 0 { print("\(report.blobsLost) blobs of those packs could not be read back and are lost") }
        for pack in report.unreadablePacks {
            print("pack \(pack.prefix(16)) has a damaged header and no index describes it: nothing in it can be found (the next prune deletes it)")
        }
        print("next: `\(copy.commands)verify`; if it names damaged files, `\(copy.commands)repair snapshots` drops them from the snapshots")
    }

    static func printSnapshotRepair(_ report: SnapshotRepairReport, copy: Copy) {
        let formatter = ISO8601DateFormatter()
        for repaired in report.repaired {
            let tags = [repaired.tags["account"], repaired.tags["kind"], repaired.tags["database"]].compactMap { $0 }.joined(separator: " ")
            let what = "snapshot \(repaired.snapshot.prefix(8)) (\(tags.isEmpty ? "-" : tags), \(formatter.string(from: repaired.time)))"
            if let replacement = repaired.replacement {
                print("\(what): \(repaired.droppedFiles.count) paths dropped, replaced by snapshot \(replacement.prefix(8))")
            } else {
                print("\(what): its root listing is lost, so nothing of it is left: removed")
            }
            for path in repaired.droppedFiles { print("  dropped: \(path)") }
        }
        for name in report.unreadableSnapshotFiles { print("snapshot file \(name.prefix(16)) does not authenticate (damaged): removed") }
        for pack in report.missingPacks { print("pack \(pack.prefix(16)) is missing: left out of the index") }
        if report.blobsRemoved > 0 {
            print("\(report.blobsRemoved) damaged blobs taken out of the index (\(report.packsRewritten) packs rewritten, "
                + "\(report.packsDeleted) deleted); \(copy.refill)")
        }
        print("checked \(report.snapshotsChecked) snapshots: \(report.repaired.count) repaired, \(report.unreadableSnapshotFiles.count) unreadable files removed")
    }

    /// A warning for commands that go on although index files are damaged (they were skipped while loading).
    static func warnAboutDamagedIndex(_ repository: Repository, copy: Copy) {
        let damaged = repository.damagedIndexFiles
        guard !damaged.isEmpty else { return }
        Console.error("warning: \(damaged.count) index file(s) of \(copy.name) are damaged and were skipped "
            + "(\(damaged.map { "index/" + $0.prefix(16) }.joined(separator: ", "))): what only they list looks missing until "
            + "`\(copy.commands)repair index` rebuilds the index from the packs")
    }

    /// What to do about what `verify` found, most urgent first; empty for a healthy repository.
    static func advice(for report: VerifyReport, readData: Bool, copy: Copy) -> [String] {
        guard !report.isHealthy else { return [] }
        var steps: [String] = []
        if !report.damagedIndexFiles.isEmpty || !report.damagedPackHeaders.isEmpty {
            steps.append("run `\(copy.commands)repair index`: it rebuilds the index from the packs' own headers and rewrites packs whose "
                + "header is damaged; then verify again")
        } else if report.indexableUnindexedPacks > 0 {
            // What looks lost may be in packs an index file named before it was lost: dropping it from the snapshots
            // first would lose it for good. (Packs whose header is damaged cannot be indexed: they do not count, or
            // this advice would repeat for ever.)
            steps.append("run `\(copy.commands)repair index` first: \(report.indexableUnindexedPacks) packs are named by no index file and may "
                + "hold what looks lost; it rebuilds the index from the packs' own headers. Then verify again")
        } else if !report.missingPacks.isEmpty {
            switch copy {
            case .local:
                // A backup stores the lost blobs again from the server, and older snapshots that use them are whole
                // again: run it before dropping anything from the snapshots.
                steps.append("run `fleetkeep-agent backup`: it stores again whatever the server still has of the lost packs, which makes "
                    + "the older snapshots that use it whole again too; then `fleetkeep-agent repair index`, which drops the lost "
                    + "packs from the index; then verify again, and `fleetkeep-agent repair snapshots` drops what is still lost")
            case .offsite:
                // A push sends only the packs the off-site index does not name: the lost ones must leave it first.
                steps.append("run `\(copy.commands)repair index`: it drops the lost packs from the index, so that \(copy.refill); "
                    + "then verify again")
            }
        } else {
            steps.append("to keep restores of the other files clean, run `\(copy.commands)repair snapshots\(readData ? " --read-data" : "")`: "
                + "it drops the lost files from the snapshots, naming each one, and takes damaged blobs out of the index; \(copy.refill)")
            if case .local = copy {
                steps.append("files that are no longer on the server can only come back from the off-site copy "
                    + "(`fleetkeep-agent offsite restore`): restore them from there first")
            }
        }
        return steps
    }
}
