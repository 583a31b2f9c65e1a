import ControllerCore
import Foundation
import Scheduling
import Synchronization
import Testing

/// The schedule store, counting the reads a pass over the whole fleet makes: the overrides (the fleet's, the groups'
/// and every agent's) and the agents' time zones.
final class CountingScheduleStore: ScheduleStore {
    let inner: any ScheduleStore
    private let counts = Mutex<[String: Int]>([:])

    init(_ inner: any ScheduleStore) { self.inner = inner }

    /// How often each of `policyOverride`, `groups`, `agentPolicyOverrides` and `timeZones` was called.
    var reads: [String: Int] { counts.withLock { $0 } }
    private func count(_ read: String) { counts.withLock { $0[read, default: 0] += 1 } }

    func policyOverride(_ scope: PolicyScope) throws -> PolicyOverride? {
        count("policyOverride")
        return try inner.policyOverride(scope)
    }
    func agentPolicyOverrides() throws -> [String: PolicyOverride] {
        count("agentPolicyOverrides")
        return try inner.agentPolicyOverrides()
    }
    func groups() throws -> [AgentGroup] {
        count("groups")
        return try inner.groups()
    }
    func timeZones() throws -> [String: String] {
        count("timeZones")
        return try inner.timeZones()
    }
    func setPolicyOverride(_ policy: PolicyOverride, for scope: PolicyScope, now: Int64) throws { try inner.setPolicyOverride(policy, for: scope, now: now) }
    func removePolicyOverride(_ scope: PolicyScope) throws -> Bool { try inner.removePolicyOverride(scope) }
    func createGroup(_ name: String, now: Int64) throws -> Bool { try inner.createGroup(name, now: now) }
    func deleteGroup(_ name: String) throws -> Bool { try inner.deleteGroup(name) }
    func addMember(_ agentID: String, to group: String) throws -> Bool { try inner.addMember(agentID, to: group) }
    func removeMember(_ agentID: String, from group: String) throws -> Bool { try inner.removeMember(agentID, from: group) }
    func group(of agentID: String) throws -> String? { try inner.group(of: agentID) }
    func timeZone(of agentID: String) throws -> String? { try inner.timeZone(of: agentID) }
    func setTimeZone(_ zone: String, of agentID: String, now: Int64) throws { try inner.setTimeZone(zone, of: agentID, now: now) }
}

/// The scheduler keeps each agent's next runs between refreshes and recomputes them only when what they came from
/// changed: the agent's policy (its own, its group's or the fleet's override), its time zone, or a new agent.
struct SchedulerRefreshTests {
    let harness: DashboardHarness
    let schedules: ScheduleService
    let store: CountingScheduleStore
    let scheduler: JobService
    let start: Int64

    init() throws {
        harness = try DashboardHarness()
        let clock = harness.clock
        store = CountingScheduleStore(try SQLiteScheduleStore(database: harness.store.database))
        schedules = ScheduleService(store: store)
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

    /// The overrides and time zones a refresh read are the ones the same tick queues its due runs with; a tick
    /// without a refresh reads them once for its due runs, and a tick with nothing due reads nothing.
    @Test func aTickReadsTheOverridesAndTimeZonesOnce() throws {
        try harness.addAgent("fk-a", hostname: "a.example", lastSeen: start, enrolledAt: start - 60)
        try schedule("fk-a", backup: "cron */5 * * * *")
        let everyRead = ["policyOverride", "groups", "agentPolicyOverrides", "timeZones"]
        let setup = store.reads   // `schedule` read the agent's override to update it
        func expectReads(_ expected: Int, _ comment: Comment) {
            let ticks = everyRead.map { (store.reads[$0] ?? 0) - (setup[$0] ?? 0) }
            #expect(ticks == Array(repeating: expected, count: everyRead.count), "\(zip(everyRead, ticks).map { "\($0) \($1)" }): \(comment)")
        }
        expectReads(0, "before the first tick")
        tick(at: start + 10)
        #expect(try scheduledSlots("fk-a") == [start], "the run due at the first tick")
        expectReads(1, "a refresh and a due run in one tick")
        tick(at: start + 20)
        expectReads(1, "no refresh and nothing due")
        tick(at: start + 290)
        expectReads(2, "a refresh with nothing due")
        tick(at: start + 305)
        #expect(try scheduledSlots("fk-a") == [start, start + 300])
        expectReads(3, "a due run without a refresh")
    }
}

/// The time zone an agent reports in its poll, and an operator's `--time-zone`, go through one check.
struct ScheduleTimeZoneTests {
    @Test func aZoneBeyondUTCPlus14IsRefusedAsAnAgentsOrAnOperatorsZone() {
        #expect(ScheduleService.validTimeZone("Europe/Berlin"))
        #expect(!ScheduleService.validTimeZone("GMT-18"))
        #expect(!ScheduleService.validTimeZone("GMT+18:00"))
    }
}
