import Foundation
import Testing
import TestSupport

/// A controller and an enrolled agent daemon with a repository and a small hosting server, over loopback HTTPS.
final class JobFleet: @unchecked Sendable {
    let controller: RunningController
    let scratch = TemporaryDirectory(prefix: "fk-e2e-jobs")
    var agentID = ""
    var daemon: BackgroundProcess?
    var configPath: String { scratch.appending("agent.conf") }
    var statePath: String { scratch.appending("state") }

    init(sizeMB: Int = 1) throws {
        controller = try RunningController()
        let root = scratch.appending("root")
        try HostingFixtureTool.create(root, accounts: 1, sizeMB: sizeMB, panel: "cpanel", os: "debian12")
        try Data("""
            root = \(root)
            repository = \(scratch.appending("repo"))
            key-file = \(scratch.appending("repo.key"))
            [database]
            enabled = no
            """.utf8).write(to: URL(fileURLWithPath: configPath))
        let initialized = try agent(["repo", "init", "--config", configPath])
        guard initialized.status == 0 else { throw TestFailure("repo init: \(initialized.stderr)") }
        let enrolled = try agent(["enroll", try controller.token(), "--state", statePath, "--root", root])
        guard enrolled.status == 0, let id = enrolled.stdout.firstMatch(of: /enrolled as (fk-[0-9a-f]+)/)?.1 else {
            throw TestFailure("enroll: \(enrolled.stderr)")
        }
        agentID = String(id)
        // Nothing scheduled unless a test asks for it: the default policy backs up daily at a time between 01:00 and
        // 05:00 UTC, and a run of the tests in those hours then found a scheduled job among the ones it counted.
        try scheduleOnlyBackups("off")
    }

    func startAgent(extra: [String] = [], environment: [String: String]? = nil, waitForHeartbeat: Bool = true) throws {
        let process = try BackgroundProcess(RunningController.bin + "/fleetkeep-agent",
                                            ["run", "--state", statePath, "--config", configPath, "--interval", "1s"] + extra, environment: environment)
        if waitForHeartbeat { try process.waitForOutput { $0.contains("heartbeat ok") } }
        daemon = process
    }

    func job(_ arguments: [String]) throws -> ProcessOutput { try controller.controller(["job"] + arguments) }

    func queue(_ arguments: [String]) throws -> Int64 {
        let output = try job(["run", "--agent", agentID, "--json"] + arguments)
        guard output.status == 0, let match = output.stdout.firstMatch(of: /"jobID" : (\d+)/), let id = Int64(match.1) else {
            throw TestFailure("job run: \(output.stdout) \(output.stderr)")
        }
        return id
    }

    func show(_ id: Int64) throws -> [String: Any] {
        let output = try job(["show", String(id), "--json"])
        guard output.status == 0, let object = try JSONSerialization.jsonObject(with: Data(output.stdout.utf8)) as? [String: Any] else {
            throw TestFailure("job show: \(output.stderr)")
        }
        return object
    }

    func list() throws -> [[String: Any]] {
        let output = try job(["list", "--agent", agentID, "--json", "--limit", "1000"])
        return (try JSONSerialization.jsonObject(with: Data(output.stdout.utf8)) as? [[String: Any]]) ?? []
    }

    /// Polls `job show` until the job reaches one of `states`.
    @discardableResult
    func wait(for id: Int64, states: Set<String>, timeout: Double = 60) throws -> [String: Any] {
        let deadline = Date().addingTimeInterval(timeout)
        while Date() < deadline {
            let job = try show(id)
            if let state = job["state"] as? String, states.contains(state) { return job }
            Thread.sleep(forTimeInterval: 0.1)
        }
        throw TestFailure("job \(id) did not reach \(states) in \(timeout)s: \(try show(id))\n\(daemon?.output ?? "")")
    }
}

func eventTime(_ job: [String: Any], _ state: String) -> Int64? {
    ((job["events"] as? [[String: Any]]) ?? []).first { $0["state"] as? String == state }?["at"] as? Int64
}

struct JobEndToEndTests {
    /// An on-demand backup is picked up within 5 s of being queued, runs, and its result (snapshot ids, bytes added)
    /// reaches the controller; `job show` lists every state change with its time.
    @Test func onDemandBackupStartsWithinFiveSecondsAndReportsItsResult() throws {
        let fleet = try JobFleet()
        try fleet.startAgent()
        let queuedAt = Date()
        let id = try fleet.queue(["--kind", "backup"])
        try fleet.wait(for: id, states: ["dispatched", "running", "succeeded"], timeout: 5)
        #expect(Date().timeIntervalSince(queuedAt) < 5, "picked up within 5 s")
        let done = try fleet.wait(for: id, states: ["succeeded", "failed"])
        #expect(done["state"] as? String == "succeeded", "\(done)\n\(fleet.daemon?.output ?? "")")
        let outcome = try #require(done["outcome"] as? [String: Any])
        #expect(((outcome["snapshots"] as? [String]) ?? []).count >= 1)
        #expect((outcome["bytesAdded"] as? Int64 ?? 0) > 0)
        // The repository's size, for the dashboard's chart: what is on disk now (the daemon counted it after the run).
        let files = FileManager.default.enumerator(atPath: fleet.scratch.appending("repo"))?.allObjects as? [String] ?? []
        let onDisk = try files.reduce(Int64(0)) { total, name in
            let attributes = try FileManager.default.attributesOfItem(atPath: fleet.scratch.appending("repo/" + name))
            return total + (attributes[.type] as? FileAttributeType == .typeRegular ? (attributes[.size] as? Int64 ?? 0) : 0)
        }
        #expect((outcome["repositoryBytes"] as? Int64).map { $0 > 0 && $0 <= onDisk } == true, "\(outcome), \(onDisk) bytes on disk")
        let states = ((done["events"] as? [[String: Any]]) ?? []).compactMap { $0["state"] as? String }
        #expect(states == ["queued", "dispatched", "running", "succeeded"], "\(states)")
        let snapshots = try agent(["snapshots", "--config", fleet.configPath, "--json"])
        #expect(snapshots.stdout.contains((outcome["snapshots"] as? [String])?.first ?? "none"))
    }

    /// A queued job is cancelled at once; a running one is stopped by its agent and ends cancelled, not retried.
    @Test func cancelWorksForQueuedAndRunningJobs() throws {
        let fleet = try JobFleet(sizeMB: 400)
        // Without a running agent the job stays queued.
        let queued = try fleet.queue(["--kind", "verify"])
        #expect(try fleet.job(["cancel", String(queued)]).stdout.contains("cancelled"))
        #expect(try fleet.show(queued)["state"] as? String == "cancelled")
        // A running job to cancel: the backup of a larger tree, cancelled as soon as it runs.
        try fleet.startAgent()
        let running = try fleet.queue(["--kind", "backup", "--max-attempts", "3", "--retry-base", "1s"])
        try fleet.wait(for: running, states: ["running"], timeout: 10)
        let cancel = try fleet.job(["cancel", String(running)])
        #expect(cancel.stdout.contains("asked to stop"), "\(cancel.stdout) \(cancel.stderr)")
        let done = try fleet.wait(for: running, states: ["cancelled", "succeeded", "failed"], timeout: 30)
        #expect(done["state"] as? String == "cancelled", "\(done)")
        Thread.sleep(forTimeInterval: 2)
        #expect(try fleet.list().filter { $0["retryOf"] as? Int64 == running }.isEmpty, "a cancelled job is not retried")
    }

    /// kill -9 of the agent in the middle of a job: the restarted agent reports it failed ("interrupted"), and the
    /// controller retries it; the retry succeeds.
    @Test func agentKilledMidJobFailsTheJobAndItIsRetried() throws {
        let fleet = try JobFleet(sizeMB: 300)
        try fleet.startAgent()
        let id = try fleet.queue(["--kind", "backup", "--max-attempts", "2", "--retry-base", "1s"])
        try fleet.wait(for: id, states: ["running"], timeout: 10)
        let pid = try #require(fleet.daemon?.pid)
        kill(pid, SIGKILL)
        Thread.sleep(forTimeInterval: 0.5)
        try fleet.startAgent()
        let failed = try fleet.wait(for: id, states: ["failed"], timeout: 20)
        #expect(((failed["outcome"] as? [String: Any])?["error"] as? String)?.contains("interrupted") == true, "\(failed)")
        let retry = try #require(try fleet.list().first { $0["retryOf"] as? Int64 == id })
        let retryID = try #require(retry["id"] as? Int64)
        let done = try fleet.wait(for: retryID, states: ["succeeded", "failed"], timeout: 120)
        #expect(done["state"] as? String == "succeeded", "\(done)")
        #expect(done["attempt"] as? Int == 2)
    }

    /// kill -9 of the controller while jobs run, then a restart on the same data: every job ends exactly once
    /// (one result each, none lost, none run twice).
    @Test func controllerKilledDuringJobsLosesNothingAndRunsNothingTwice() throws {
        let fleet = try JobFleet()
        try fleet.startAgent()
        let ids = try (0..<3).map { _ in try fleet.queue(["--kind", "backup"]) }
        try fleet.wait(for: ids[0], states: ["running", "succeeded"], timeout: 10)
        kill(fleet.controller.server.pid, SIGKILL)
        Thread.sleep(forTimeInterval: 3)
        let restarted = try BackgroundProcess(RunningController.bin + "/fleetkeep-controller",
                                              ["serve", "--data", fleet.controller.data.path, "--listen", "127.0.0.1:\(fleet.controller.port)"])
        try restarted.waitForOutput { $0.contains("listening on") }
        for id in ids { try fleet.wait(for: id, states: ["succeeded"], timeout: 120) }
        let jobs = try fleet.list()
        #expect(jobs.count == 3, "no retries, no extra jobs: \(jobs)")
        // Each job ran once on the agent: one "started" line per job id.
        let output = fleet.daemon?.output ?? ""
        for id in ids { #expect(output.components(separatedBy: "job \(id) started").count == 2, "job \(id) ran more than once:\n\(output)") }
        let snapshots = try agent(["snapshots", "--config", fleet.configPath, "--json"])
        let list = try JSONSerialization.jsonObject(with: Data(snapshots.stdout.utf8)) as? [[String: Any]]
        #expect(list?.count == 3 * 2, "three backups of files and email")
    }
}
