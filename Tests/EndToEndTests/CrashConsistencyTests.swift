import Foundation
import Testing
import TestSupport

/// What a power cut may leave of a repository, read off the system calls the agent makes (`strace -f -y`).
///
/// A file survives a power cut only if its bytes were synced before it got its name, and its name was synced into its
/// directory after it got it; a new directory the same, up to a directory that already existed. Syncing a file says
/// nothing about the entry that names it. The repository's key matters most: without it nothing in the repository can
/// be read.
struct CrashConsistencyTests {
    /// Runs `program arguments` under strace in `scratch` and checks every new name for which `durable` is true.
    private func expectDurable(_ name: String, program: String = "fleetkeep-agent", _ arguments: [String], in scratch: TemporaryDirectory,
                               durable: (String) -> Bool, atLeast: Int, sourceLocation: SourceLocation = #_sourceLocation) throws {
        let strace = try #require(ProcessRunner.which("strace"), "strace is needed (ops/bootstrap installs it)")
        let tracePath = scratch.appending("trace")
        let result = try ProcessRunner.run(strace, ["-f", "-y", "-qq", "-o", tracePath, "-e", "trace=" + SyscallTrace.traced,
                                                    ProcessRunner.productsDirectory + "/" + program] + arguments)
        #expect(result.status == 0, "\(name): \(result.stderr)", sourceLocation: sourceLocation)
        let trace = SyscallTrace(try String(contentsOfFile: tracePath, encoding: .utf8))
        let names = trace.newNames(where: durable)
        #expect(names.count >= atLeast, "\(name): too few new names seen (\(names.keys.sorted())); did strace trace it?",
                sourceLocation: sourceLocation)
        #expect(trace.namesNotSyncedIntoTheirDirectory(names) == [], "\(name)", sourceLocation: sourceLocation)
        #expect(trace.filesNamedBeforeTheirBytesWereSynced(where: durable) == [], "\(name)", sourceLocation: sourceLocation)
    }

    @Test func repoInitAFirstBackupAndControllerInitMakeEveryNewNameDurable() throws {
        let scratch = TemporaryDirectory(prefix: "fleetkeep-crash")
        let root = scratch.appending("server"), repository = scratch.appending("repo")
        let keys = scratch.appending("keys"), keyFile = keys + "/nested/repo.key"
        try HostingFixtureTool.create(root, accounts: 2, sizeMB: 3, seed: 5)
        let inRepository = { (path: String) in
            (path.hasPrefix(repository + "/") || path == repository || path.hasPrefix(keys + "/") || path == keys)
                // The caches can be rebuilt from the repository, and a lock belongs to a running process.
                && !path.hasPrefix(repository + "/cache") && !path.hasPrefix(repository + "/locks")
        }
        try expectDurable("repo init", ["repo", "init", "--repo", repository, "--key-file", keyFile], in: scratch,
                          durable: inRepository, atLeast: 6)
        try expectDurable("backup", ["backup", "--root", root, "--repo", repository, "--key-file", keyFile, "--kind", "files"],
                          in: scratch, durable: inRepository, atLeast: 4)
        try expectDurable("controller init", program: "fleetkeep-controller", ["init", "--data", scratch.appending("controller/data")],
                          in: scratch, durable: { $0.hasPrefix(scratch.appending("controller")) }, atLeast: 5)
    }

    /// The agent's state (its key, its enrollment, its licence) is what lets it talk to its controller again after a
    /// restart.
    @Test func enrollmentMakesTheAgentsStateDurable() throws {
        let controller = try RunningController()
        let scratch = TemporaryDirectory(prefix: "fleetkeep-crash")
        let root = scratch.appending("server")
        try HostingFixtureTool.create(root, accounts: 1, sizeMB: 1)
        try expectDurable("enroll", ["enroll", try controller.token(), "--state", scratch.appending("state/agent"), "--root", root],
                          in: scratch, durable: { $0.hasPrefix(scratch.appending("state")) }, atLeast: 4)
    }

    /// The pinned host key: without it every off-site command refuses the server until someone trusts it again.
    @Test func trustingAnOffsiteServerMakesItsPinnedKeyDurable() throws {
        let server = try SSHDServer()
        let scratch = TemporaryDirectory(prefix: "fleetkeep-crash")
        let knownHosts = scratch.appending("pins/nested/known_hosts")
        try expectDurable("offsite trust", ["offsite", "trust", "--known-hosts", knownHosts,
                                            "--target", "sftp://\(server.user)@\(server.host):\(server.port)\(server.root)/remote"],
                          in: scratch, durable: { $0.hasPrefix(scratch.appending("pins")) }, atLeast: 3)
        #expect(try String(contentsOfFile: knownHosts, encoding: .utf8).contains(server.knownHostsLine))
    }
}

/// The calls of one `strace -f -y` run that create, name, remove and sync files, in the order they returned.
struct SyscallTrace {
    static let traced = "mkdir,mkdirat,open,openat,creat,rename,renameat,renameat2,link,linkat,unlink,unlinkat,fsync,fdatasync"

    struct Call {
        let name: String
        let arguments: String
        let result: Int
        /// Lines of the trace where the call started and where it returned (they differ when threads interleave).
        let started: Int
        let returned: Int

        /// The quoted strings among the arguments: the paths.
        var paths: [String] {
            var found: [String] = [], current = "", inside = false, escaped = false
            for character in arguments {
                if inside {
                    if escaped { current.append(character); escaped = false }
                    else if character == "\\" { escaped = true }
                    else if character == "\"" { found.append(current); current = ""; inside = false }
                    else { current.append(character) }
                } else if character == "\"" { inside = true }
            }
            return found
        }

        /// For a sync: the path strace printed for the descriptor (`3</var/repo/data>`).
        var descriptorPath: String? {
            guard let open = arguments.firstIndex(of: "<"), let close = arguments.lastIndex(of: ">"), open < close else { return nil }
            return String(arguments[arguments.index(after: open)..<close])
        }
    }

    let calls: [Call]

    init(_ text: String) {
        var calls: [Call] = [], unfinished: [Substring: (head: Substring, line: Int)] = [:]
        for (number, line) in text.split(separator: "\n").enumerated() {
            guard let space = line.firstIndex(of: " ") else { continue }
            let thread = line[..<space]
            var rest = line[space...].drop { $0 == " " }, started = number
            if rest.hasSuffix("<unfinished ...>") {
                unfinished[thread] = (rest.dropLast("<unfinished ...>".count), number)
                continue
            }
            if rest.hasPrefix("<... "), let resumed = rest.range(of: " resumed>"), let head = unfinished.removeValue(forKey: thread) {
                rest = Substring(String(head.head) + rest[resumed.upperBound...])
                started = head.line
            }
            guard let open = rest.firstIndex(of: "("), let equals = rest.range(of: ") = ", options: .backwards) else { continue }
            let resultText = rest[equals.upperBound...].prefix { $0 == "-" || $0.isNumber }
            guard let result = Int(resultText) else { continue }
            calls.append(Call(name: String(rest[..<open]), arguments: String(rest[rest.index(after: open)..<equals.lowerBound]),
                              result: result, started: started, returned: number))
        }
        self.calls = calls
    }

    private static let creating: Set = ["mkdir", "mkdirat", "open", "openat", "creat"]
    private static let naming: Set = ["rename", "renameat", "renameat2", "link", "linkat"]
    private static let removing: Set = ["unlink", "unlinkat"]

    /// Every name that exists at the end and was made by this run (a directory, a file created in place, or the
    /// target of a rename or link), with the line where it came to exist.
    func newNames(where wanted: (String) -> Bool) -> [String: Int] {
        var names: [String: Int] = [:]
        for call in calls where call.result >= 0 {
            let paths = call.paths
            if Self.creating.contains(call.name), let path = paths.first,
               call.name.hasPrefix("mkdir") || call.name == "creat" || call.arguments.contains("O_CREAT") {
                if wanted(path) { names[path] = call.returned }
            } else if Self.naming.contains(call.name), paths.count >= 2 {
                if call.name.hasPrefix("rename") { names[paths[0]] = nil }
                if wanted(paths[1]) { names[paths[1]] = call.returned }
            } else if Self.removing.contains(call.name), let path = paths.first {
                names[path] = nil
            }
        }
        return names
    }

    private var syncs: [(started: Int, path: String)] {
        calls.compactMap { call in
            guard call.name == "fsync" || call.name == "fdatasync", call.result == 0, let path = call.descriptorPath else { return nil }
            return (call.started, path)
        }
    }

    /// The names whose directory was not synced after they came to exist.
    func namesNotSyncedIntoTheirDirectory(_ names: [String: Int]) -> [String] {
        let syncs = self.syncs
        return names.filter { name, madeAt in
            let directory = URL(fileURLWithPath: name).deletingLastPathComponent().path
            return !syncs.contains { $0.path == directory && $0.started > madeAt }
        }.keys.sorted()
    }

    /// The files that got their final name (renamed or linked there) without a sync of their bytes first, and the
    /// files created in place that were never synced.
    func filesNamedBeforeTheirBytesWereSynced(where wanted: (String) -> Bool) -> [String] {
        let syncs = self.syncs
        var unsynced: [String] = []
        for call in calls where call.result >= 0 && Self.naming.contains(call.name) {
            let paths = call.paths
            guard paths.count >= 2, wanted(paths[1]) else { continue }
            if !syncs.contains(where: { $0.path == paths[0] && $0.started < call.started }) { unsynced.append(paths[1]) }
        }
        let names = newNames(where: wanted)
        for call in calls where call.result >= 0 && call.arguments.contains("O_CREAT") && Self.creating.contains(call.name) {
            guard let path = call.paths.first, names[path] == call.returned else { continue }
            if !syncs.contains(where: { $0.path == path && $0.started > call.returned }) { unsynced.append(path) }
        }
        return unsynced.sorted()
    }
}
