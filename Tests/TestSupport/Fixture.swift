import Foundation

/// Synthetic hosting servers from `shared/tools/hosting-fixture` (override with FLEETKEEP_FIXTURE):
/// deterministic accounts with PHP trees, media, Maildir mail, SQL dumps, links and odd names; `hosting-fixture -h`.
public enum HostingFixture {
    /// The tool: FLEETKEEP_FIXTURE, else `<package root>/../shared/tools/hosting-fixture`, else the same path from
    /// the package root's ancestors (a git worktree sits one level deeper than the main checkout).
    public static var toolPath: String {
        if let path = ProcessInfo.processInfo.environment["FLEETKEEP_FIXTURE"] { return path }
        var directory = URL(fileURLWithPath: ProcessRunner.packageRoot)
        while directory.path != "/" {
            let candidate = directory.deletingLastPathComponent().appendingPathComponent("shared/tools/hosting-fixture").path
            if FileManager.default.fileExists(atPath: candidate) { return candidate }
            directory = directory.deletingLastPathComponent()
        }
        return URL(fileURLWithPath: ProcessRunner.packageRoot + "/../shared/tools/hosting-fixture").standardized.path
    }

    /// Creates a server under `root` (`root/home/<user>`, `root/databases/*.sql`, panel files).
    public static func create(root: String, accounts: Int = 1, sizeMB: Int = 5, seed: Int = 1, panel: String = "cpanel") throws {
        try run(["create", root, "--accounts", "\(accounts)", "--size-mb", "\(sizeMB)", "--seed", "\(seed)", "--panel", panel])
    }

    /// One "day" of edits, additions and deletions touching about `percent` of the files.
    public static func churn(root: String, percent: Double = 1, seed: Int = 2) throws {
        try run(["churn", root, "--percent", "\(percent)", "--seed", "\(seed)"])
    }

    /// One line per entry (type, mode, size, mtime, sha256, path): equal manifests mean equal trees.
    public static func manifest(root: String, under: String? = nil) throws -> String {
        try run(["manifest", root] + (under.map { ["--under", $0] } ?? []))
    }

    @discardableResult
    static func run(_ arguments: [String]) throws -> String {
        let output = try ProcessRunner.run("/usr/bin/env", ["python3", toolPath] + arguments)
        guard output.status == 0 else { throw TestFailure("hosting-fixture \(arguments.joined(separator: " ")) failed: \(output.stderr)") }
        return output.stdout
    }
}
