import Foundation

/// The synthetic hosting server generator from shared/tools (override its path with FLEETKEEP_FIXTURE).
public enum HostingFixtureTool {
    /// The same lookup as `HostingFixture.toolPath` (which also finds it from a git worktree).
    public static var path: String { HostingFixture.toolPath }

    /// Runs the tool and fails with its output when it fails.
    @discardableResult
    public static func run(_ arguments: [String]) throws -> String {
        let output = try ProcessRunner.run("/usr/bin/env", ["python3", path] + arguments)
        guard output.status == 0 else { throw TestFailure("hosting-fixture \(arguments.joined(separator: " ")) failed: \(output.stderr)") }
        return output.stdout
    }

    public static func create(_ root: String, accounts: Int = 1, sizeMB: Int = 5, seed: Int = 1, panel: String = "cpanel", os: String = "debian12") throws {
        try run(["create", root, "--accounts", "\(accounts)", "--size-mb", "\(sizeMB)", "--seed", "\(seed)", "--panel", panel, "--os", os])
    }

    public static func churn(_ root: String, percent: Double = 1, seed: Int = 2) throws {
        try run(["churn", root, "--percent", "\(percent)", "--seed", "\(seed)"])
    }

    public static func manifest(_ root: String, under: String? = nil) throws -> String {
        try run(["manifest", root] + (under.map { ["--under", $0] } ?? []))
    }
}
