import ControllerCore
import Foundation
import Scheduling
import Testing

/// The scheduler keeps each agent's next runs between refreshes and recomputes them only when what they came from
/// changed: the agent's policy (its own, its group's or the fleet's override), its time zone, or a new agent.
struct SchedulerRefreshTests {
    let harness: DashboardHarness
    let schedules: ScheduleService
    let scheduler: JobService
    let start: Int64

    init() throws {
        harness = try DashboardHarness()
        let clock = harness.clock
        schedules = ScheduleService(store: try SQLiteScheduleStore(database: harness.store.database))
        scheduler = JobService(jobs: harness.jobs, schedules: schedules, agents: harness.service, clock: { clock.now })
        start = harness.clock.now   // 2027-01-15 08:00:00 UTC
    }

    /// Backups only, on `backup`, for one agent.
    func schedule(_ agent: String, backup: String) throws {
        var timings: [String: Timing] = [:]
        for task in ScheduledTask.allCases { timings[task.rawValue] = .off }
        timings[ScheduledTask.backup.rawValue] = try Timing(parsing: backup)
        _ = try schedules.update(.agent(agent), with: PolicyOverride(timings: timings), now: harness.clock.now)
    }

    func tick(at time: Int64) {
        harness.clock.now = time
        scheduler.tick()
    }

    func scheduledSlots(_ agent: String) throws -> [Int64] {
        try harness.jobs.jobs(agentID: agent, states: nil, limit: 100).filter { $0.origin == "schedule" }.compactMap(\.slot).sorted()
    }

    @Test func aChangedPolicyIsPickedUpAtTheNextRefreshAndAnUnchangedOneKeepsItsAdvancedRuns() throws {
        try harness.addAgent("fk-a", hostname: "a.example", lastSeen: start, enrolledAt: start + 1)
        try schedule("fk-a", backup: "cron 0 * * * *")
        tick(at: start + 10)
        #expect(try scheduledSlots("fk-a").isEmpty, "the first hourly run since the agent enrolled is an hour away")

        try schedule("fk-a", backup: "cron */5 * * * *")
        tick(at: start + 45)   // past the 30 s refresh
        tick(at: start + 305)
        #expect(try scheduledSlots("fk-a") == [start + 300], "the new policy's first run")

        tick(at: start + 340)  // refreshed again with nothing changed: the queued run is not queued again
        tick(at: start + 605)
        #expect(try scheduledSlots("fk-a") == [start + 300, start + 600])
    }

    @Test func aNewTimeZoneMovesTheRunsAndANewAgentIsScheduled() throws {
        try harness.addAgent("fk-a", hostname: "a.example", lastSeen: start, enrolledAt: start - 60)
        try schedule("fk-a", backup: "cron 0 12 * * *")
        tick(at: start + 10)   // noon UTC: four hours from now

        try schedules.store.setTimeZone("Asia/Tokyo", of: "fk-a", now: start + 20)
        try harness.addAgent("fk-b", hostname: "b.example", lastSeen: start, enrolledAt: start + 30)
        try schedule("fk-b", backup: "cron 0 9 * * *")
        tick(at: start + 45)
        tick(at: start + 4 * 3600 + 5)
        #expect(try scheduledSlots("fk-a").isEmpty, "noon in Tokyo is 03:00 UTC, not noon UTC")
        tick(at: start + 19 * 3600 + 5)
        #expect(try scheduledSlots("fk-a") == [start + 19 * 3600])
        #expect(try scheduledSlots("fk-b") == [start + 3600], "the agent enrolled after the first refresh: 09:00 UTC")
    }
}
