import Foundation
import Testing
import TestSupport

extension JobFleet {
    /// Only backups, on `backup`; the other tasks off, so nothing else runs in the test.
    func scheduleOnlyBackups(_ backup: String) throws {
        let set = try controller.controller(["schedule", "set", "--agent", agentID, "--backup", backup, "--verify", "off", "--prune", "off",
                                             "--offsite-push", "off", "--restore-drill", "off"])
        guard set.status == 0 else { throw TestFailure("schedule set: \(set.stderr)") }
    }

    /// `report --json` (with the controller's clock, when it runs offset) and this agent's row.
    func reportRow(environment: [String: String]? = nil) throws -> [String: Any] {
        let output = try ProcessRunner.run(RunningController.bin + "/fleetkeep-controller", ["report", "--json", "--data", controller.data.path],
                                           environment: environment)
        guard output.status == 0, let rows = try JSONSerialization.jsonObject(with: Data(output.stdout.utf8)) as? [[String: Any]],
              let row = rows.first(where: { $0["agentID"] as? String == agentID }) else {
            throw TestFailure("report --json: \(output.stdout) \(output.stderr)")
        }
        return row
    }

    func spooled() -> [String] {
        ((try? FileManager.default.contentsOfDirectory(atPath: statePath + "/jobs")) ?? []).filter { $0.hasPrefix("result-") && $0.hasSuffix(".json") }.sorted()
    }
}

/// The controller schedules, the agent runs: a scheduled backup end to end, and a controller outage of a whole
/// simulated day (both programs' clocks moved with FLEETKEEP_CLOCK_OFFSET).
struct ScheduleEndToEndTests {
    /// A schedule whose run is now (`cron * * * * *`: every minute) is queued by the controller's scheduler, picked
    /// up by the agent's long poll, backed up, and its result (per account and kind) reaches `report`.
    @Test func scheduledBackupRunsAndItsResultReachesTheReport() throws {
        let fleet = try JobFleet()
        try fleet.scheduleOnlyBackups("cron * * * * *")
        try fleet.startAgent()
        // The scheduler picks schedule changes up within 30 s and the run comes at the next minute: at most 90 s.
        let deadline = Date().addingTimeInterval(150)
        var scheduled: [String: Any]?
        while Date() < deadline, scheduled == nil {
            scheduled = try fleet.list().first { $0["origin"] as? String == "schedule" && $0["state"] as? String == "succeeded" }
            if scheduled == nil { Thread.sleep(forTimeInterval: 1) }
        }
        let jobsNow = try fleet.list()
        let job = try #require(scheduled, "no scheduled backup succeeded in 150 s: \(jobsNow)\n\(fleet.daemon?.output ?? "")")
        #expect(job["kind"] as? String == "backup" && job["task"] as? String == "backup")
        let slot = try #require(job["slot"] as? Int64)
        #expect(slot % 60 == 0, "a cron run on the minute")
        #expect(((job["outcome"] as? [String: Any])?["snapshots"] as? [String])?.count == 2, "files and email of the one account")

        let row = try fleet.reportRow()
        let backup = try #require(row["backup"] as? [String: Any], "\(row)")
        let kinds = (backup["kinds"] as? [[String: Any]]) ?? []
        #expect(Set(kinds.compactMap { $0["kind"] as? String }) == ["email", "files"], "\(backup)")
        for kind in kinds {
            let age = (kind["lastSuccess"] as? [String: Any])?["ageSeconds"] as? Int64
            #expect(age.map { $0 < 300 } == true, "\(kind)")
        }
        #expect((backup["overdue"] as? [String])?.isEmpty == true)
        let text = try fleet.controller.controller(["report"])
        #expect(text.stdout.contains("last backup:      email ") && text.stdout.contains("files "), "\(text.stdout)")
    }

    /// The controller is down for a whole simulated day. The agent runs its last known schedule itself (three
    /// backups a day), spools the results (0600), and once the controller is back delivers every one exactly once:
    /// each is recorded once, and delivering the same files again (a lost acknowledgement) records nothing more.
    @Test func controllerDownForADayTheAgentBacksUpAndDeliversEachResultOnce() throws {
        let fleet = try JobFleet()
        try fleet.scheduleOnlyBackups("cron 0 */8 * * *")
        try fleet.startAgent(extra: ["--offline-grace", "1s"])
        // The agent keeps the policy from its polls; wait until it has the new one.
        let policyPath = fleet.statePath + "/jobs/policy.json"
        #expect(eventuallyTrue(30) { ((try? String(contentsOfFile: policyPath, encoding: .utf8)) ?? "").contains("cron 0 ") }, "the agent never saw the schedule")
        #expect(fleet.daemon?.stop() == 0)
        fleet.controller.server.stop()

        // A day later, as the agent sees it; the controller is still down.
        let day = ["FLEETKEEP_CLOCK_OFFSET": "86400"]
        try fleet.startAgent(extra: ["--offline-grace", "1s"], environment: day, waitForHeartbeat: false)
        let agentLog = { fleet.daemon?.output ?? "" }
        #expect(eventuallyTrue(150) { agentLog().components(separatedBy: "local backup succeeded; result spooled").count - 1 >= 3 }, "\(agentLog())")
        Thread.sleep(forTimeInterval: 3)
        let localRuns = agentLog().components(separatedBy: "local backup succeeded; result spooled").count - 1
        #expect((3...4).contains(localRuns), "three runs a day (a fourth only if the restart straddled a run time): \(localRuns)")
        let spool = fleet.spooled()
        #expect(spool.count == localRuns, "\(spool)")
        for name in spool {
            let mode = try FileManager.default.attributesOfItem(atPath: fleet.statePath + "/jobs/" + name)[.posixPermissions] as? Int
            #expect(mode == 0o600, "\(name)")
        }
        // Kept aside to deliver them a second time later, as after an acknowledgement the agent never got.
        let copies = TemporaryDirectory(prefix: "fk-e2e-spool")
        for name in spool { try FileManager.default.copyItem(atPath: fleet.statePath + "/jobs/" + name, toPath: copies.appending(name)) }

        // The controller comes back, a day later too.
        let restarted = try BackgroundProcess(RunningController.bin + "/fleetkeep-controller",
                                              ["serve", "--data", fleet.controller.data.path, "--listen", "127.0.0.1:\(fleet.controller.port)"],
                                              environment: day)
        try restarted.waitForOutput { $0.contains("listening on") }
        #expect(eventuallyTrue(90) { fleet.spooled().isEmpty }, "spool not delivered: \(fleet.spooled())\n\(agentLog())")
        func offlineJobs() throws -> [[String: Any]] { try fleet.list().filter { $0["origin"] as? String == "agent-offline" } }
        var recorded = try offlineJobs()
        #expect(recorded.count == localRuns, "each spooled result recorded once: \(recorded)")
        #expect(recorded.allSatisfy { $0["state"] as? String == "succeeded" && $0["kind"] as? String == "backup" })
        #expect(Set(recorded.compactMap { $0["localID"] as? String }).count == localRuns)
        #expect(Set(recorded.compactMap { $0["slot"] as? Int64 }).count == localRuns, "one per scheduled run")

        // The same results again: answered as duplicates, nothing new recorded, and the spool empties.
        for name in spool { try FileManager.default.copyItem(atPath: copies.appending(name), toPath: fleet.statePath + "/jobs/" + name) }
        #expect(eventuallyTrue(60) { fleet.spooled().isEmpty })
        recorded = try offlineJobs()
        #expect(recorded.count == localRuns)
        #expect(try fleet.list().filter { $0["kind"] as? String == "backup" && $0["state"] as? String == "succeeded" }.count == localRuns,
                "no backup run twice, none queued for a run the agent made")

        // The last offline backup reaches the report, as recent on the controller's (moved) clock.
        let row = try fleet.reportRow(environment: day)
        let backup = try #require(row["backup"] as? [String: Any])
        let files = try #require((backup["kinds"] as? [[String: Any]])?.first { $0["kind"] as? String == "files" })
        let age = try #require((files["lastSuccess"] as? [String: Any])?["ageSeconds"] as? Int64)
        #expect(age < 3600, "\(files)")
        #expect((backup["overdue"] as? [String])?.isEmpty == true)
        let snapshots = try agent(["snapshots", "--config", fleet.configPath, "--json"])
        let list = try JSONSerialization.jsonObject(with: Data(snapshots.stdout.utf8)) as? [[String: Any]]
        #expect(list?.count == localRuns * 2, "files and email per run")
    }
}

func eventuallyTrue(_ seconds: Double, _ condition: () -> Bool) -> Bool {
    let deadline = Date().addingTimeInterval(seconds)
    while Date() < deadline {
        if condition() { return true }
        Thread.sleep(forTimeInterval: 0.2)
    }
    return condition()
}
