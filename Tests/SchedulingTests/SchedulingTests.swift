import Foundation
import Scheduling
import Testing

/// Dates in the tests are built from components in a named zone, never parsed from text.
func instant(_ zone: String, _ year: Int, _ month: Int, _ day: Int, _ hour: Int, _ minute: Int, _ second: Int = 0) -> Date {
    var calendar = Calendar(identifier: .gregorian)
    calendar.timeZone = TimeZone(identifier: zone)!
    return calendar.date(from: DateComponents(year: year, month: month, day: day, hour: hour, minute: minute, second: second))!
}

func calendar(_ zone: String) -> Calendar {
    var calendar = Calendar(identifier: .gregorian)
    calendar.timeZone = TimeZone(identifier: zone)!
    return calendar
}

struct WindowTests {
    /// 10,000 agents: every start inside 01:00-05:00, the same start every day for each agent, and the fleet spread
    /// evenly: each of 16 equal slices of the window holds 625 ± 15%, and no gap between starts exceeds 2 minutes.
    @Test func tenThousandAgentsSpreadEvenlyOverTheWindow() throws {
        let policy = SchedulePolicy.hosting
        let timing = policy.timing(.backup)
        let zone = calendar("Europe/Berlin")
        let day = instant("Europe/Berlin", 2024, 6, 10, 0, 0)
        let windowStart = instant("Europe/Berlin", 2024, 6, 10, 1, 0)
        var offsets: [Double] = []
        for index in 0..<10_000 {
            let agentID = "fk-" + String(format: "%032x", index &* 2_654_435_761)
            let fraction = Jitter.fraction(agentID: agentID)
            let start = try #require(timing.next(after: day, fraction: fraction, in: zone))
            let offset = start.timeIntervalSince(windowStart)
            #expect(offset >= 0 && offset < 4 * 3600, "agent \(index) starts outside the window: \(offset)s")
            offsets.append(offset)
            if index % 1000 == 0 {
                let tomorrow = try #require(timing.next(after: start, fraction: fraction, in: zone))
                #expect(tomorrow.timeIntervalSince(start) == 86_400, "same place in the window every day")
                #expect(Jitter.fraction(agentID: agentID) == fraction, "deterministic")
            }
        }
        var slices = [Int](repeating: 0, count: 16)
        for offset in offsets { slices[min(Int(offset / (4 * 3600) * 16), 15)] += 1 }
        for (slice, count) in slices.enumerated() {
            #expect(abs(count - 625) <= 94, "slice \(slice) holds \(count) agents, expected about 625")
        }
        let sorted = offsets.sorted()
        let largestGap = zip(sorted, sorted.dropFirst()).map { $1 - $0 }.max() ?? 0
        #expect(largestGap < 120, "largest gap between starts \(largestGap)s")
        #expect(sorted.first! < 120 && sorted.last! > 4 * 3600 - 120, "the whole window is used")
    }

    @Test func windowCrossingMidnightStartsOnTheNextDay() throws {
        let timing = try Timing(parsing: "daily 23:00-01:00")
        let after = instant("UTC", 2024, 6, 10, 12, 0)
        #expect(timing.next(after: after, fraction: 0.75, in: calendar("UTC")) == instant("UTC", 2024, 6, 11, 0, 30))
        #expect(timing.next(after: after, fraction: 0.25, in: calendar("UTC")) == instant("UTC", 2024, 6, 10, 23, 30))
    }

    @Test func timingTextRoundTripsAndBadTextIsRefusedWithAHint() throws {
        for text in ["daily 01:00-05:00", "weekly sun 05:00-07:00", "monthly 31 07:00-08:00", "cron */15 1-5 * * mon-fri", "off"] {
            #expect(try Timing(parsing: text).description == text)
        }
        #expect(try Timing(parsing: "02:00-04:00") == .daily(try TimeWindow(parsing: "02:00-04:00")))
        for bad in ["daily 25:00-05:00", "weekly funday 01:00-02:00", "monthly 32 01:00-02:00", "hourly", "daily 1:00-5:00",
                    String(repeating: "9", count: 400)] {
            #expect(throws: ScheduleError.self) { try Timing(parsing: bad) }
        }
    }
}

struct CronTests {
    @Test func fieldsRangesStepsListsAndNames() throws {
        let utc = calendar("UTC")
        let start = instant("UTC", 2024, 6, 10, 12, 7) // a Monday
        #expect(try CronExpression(parsing: "30 2 * * *").next(after: start, in: utc) == instant("UTC", 2024, 6, 11, 2, 30))
        #expect(try CronExpression(parsing: "*/15 * * * *").next(after: start, in: utc) == instant("UTC", 2024, 6, 10, 12, 15))
        #expect(try CronExpression(parsing: "0 9-17/4 * * *").next(after: start, in: utc) == instant("UTC", 2024, 6, 10, 13, 0))
        #expect(try CronExpression(parsing: "0 6 * * sat,sun").next(after: start, in: utc) == instant("UTC", 2024, 6, 15, 6, 0))
        #expect(try CronExpression(parsing: "0 6 * * 7").next(after: start, in: utc) == instant("UTC", 2024, 6, 16, 6, 0))
        #expect(try CronExpression(parsing: "0 0 1 jan *").next(after: start, in: utc) == instant("UTC", 2025, 1, 1, 0, 0))
        // Day of month and day of week both restricted: either matches (Vixie cron).
        #expect(try CronExpression(parsing: "0 0 20 * fri").next(after: start, in: utc) == instant("UTC", 2024, 6, 14, 0, 0))
        // Strictly after: a run at exactly `start` is not returned again.
        let exact = instant("UTC", 2024, 6, 10, 12, 15)
        #expect(try CronExpression(parsing: "*/15 * * * *").next(after: exact, in: utc) == instant("UTC", 2024, 6, 10, 12, 30))
    }

    @Test func malformedExpressionsNameTheField() throws {
        let cases: [(String, String)] = [("* * * *", "5"), ("60 * * * *", "minute"), ("* 24 * * *", "hour"), ("* * 0 * *", "day of month"),
                                          ("* * * 13 *", "month"), ("* * * * 8", "day of week"), ("*/0 * * * *", "step"),
                                          ("5-1 * * * *", "backwards"), ("0 0 30 feb *", "never"),
                                          ("99999999999999999999 * * * *", "minute")]
        for (text, named) in cases {
            do {
                _ = try CronExpression(parsing: text)
                Issue.record("'\(text)' was accepted")
            } catch let error as ScheduleError {
                #expect(error.message.contains(named), "'\(text)': \(error.message)")
            }
        }
    }

    /// 29 February: a cron day waits for the next leap year, a monthly day 31 uses 29 February in a leap year, and
    /// a daily window steps 28 February → 29 February → 1 March.
    @Test func leapDay() throws {
        let utc = calendar("UTC")
        let leap = try CronExpression(parsing: "0 3 29 2 *")
        #expect(leap.next(after: instant("UTC", 2025, 1, 1, 0, 0), in: utc) == instant("UTC", 2028, 2, 29, 3, 0))
        #expect(leap.next(after: instant("UTC", 2096, 3, 1, 0, 0), in: utc) == instant("UTC", 2104, 2, 29, 3, 0), "2100 is not a leap year")
        let monthly = try Timing(parsing: "monthly 31 07:00-08:00")
        #expect(monthly.next(after: instant("UTC", 2024, 2, 1, 0, 0), fraction: 0, in: utc) == instant("UTC", 2024, 2, 29, 7, 0))
        #expect(monthly.next(after: instant("UTC", 2023, 2, 1, 0, 0), fraction: 0, in: utc) == instant("UTC", 2023, 2, 28, 7, 0))
        #expect(monthly.next(after: instant("UTC", 2024, 4, 1, 0, 0), fraction: 0, in: utc) == instant("UTC", 2024, 4, 30, 7, 0))
        let daily = try Timing(parsing: "daily 01:00-05:00")
        var at = instant("UTC", 2024, 2, 28, 0, 0)
        var days: [Int] = []
        for _ in 0..<3 {
            at = try #require(daily.next(after: at, fraction: 0.5, in: utc))
            days.append(utc.component(.day, from: at))
        }
        #expect(days == [28, 29, 1])
    }
}

struct DaylightSavingTests {
    /// Europe/Berlin, 31 March 2024: 02:00 CET jumps to 03:00 CEST. A 02:30 run moves past the gap to 03:30 CEST
    /// (01:30 UTC) and runs once; the next day it is back at 02:30.
    @Test func springForwardRunsASkippedTimeOnceAfterTheGap() throws {
        let berlin = calendar("Europe/Berlin")
        let cron = try CronExpression(parsing: "30 2 * * *")
        let first = try #require(cron.next(after: instant("UTC", 2024, 3, 30, 12, 0), in: berlin))
        #expect(first == instant("UTC", 2024, 3, 31, 1, 30))
        let second = try #require(cron.next(after: first, in: berlin))
        #expect(second == instant("Europe/Berlin", 2024, 4, 1, 2, 30))
        // A windowed agent whose place is 02:30 (fraction 0.375 of 01:00-05:00) behaves the same.
        let window = try Timing(parsing: "daily 01:00-05:00")
        #expect(window.next(after: instant("UTC", 2024, 3, 30, 12, 0), fraction: 0.375, in: berlin) == instant("UTC", 2024, 3, 31, 1, 30))
        // Times after the gap are untouched, and an earlier listed time still comes first.
        let both = try CronExpression(parsing: "0,30 2,3 * * *")
        let runs = sequence(first: instant("UTC", 2024, 3, 30, 23, 0)) { try? #require(both.next(after: $0, in: berlin)) }.dropFirst().prefix(3)
        #expect(Array(runs) == [instant("UTC", 2024, 3, 31, 1, 0), instant("UTC", 2024, 3, 31, 1, 30), instant("Europe/Berlin", 2024, 4, 1, 2, 0)])
    }

    /// Europe/Berlin, 27 October 2024: 03:00 CEST falls back to 02:00 CET, so 02:30 happens twice. It runs once, at
    /// the first 02:30 (00:30 UTC); the next run is the next day.
    @Test func fallBackRunsARepeatedTimeOnce() throws {
        let berlin = calendar("Europe/Berlin")
        let cron = try CronExpression(parsing: "30 2 * * *")
        let first = try #require(cron.next(after: instant("UTC", 2024, 10, 26, 12, 0), in: berlin))
        #expect(first == instant("UTC", 2024, 10, 27, 0, 30))
        let second = try #require(cron.next(after: first, in: berlin))
        #expect(second == instant("UTC", 2024, 10, 28, 1, 30), "not again at the second 02:30 (01:30 UTC on the 27th)")
        // New York, 3 November 2024, same rule with a western zone and a window.
        let newYork = calendar("America/New_York")
        let window = try Timing(parsing: "daily 01:00-05:00")
        let run = try #require(window.next(after: instant("UTC", 2024, 11, 2, 12, 0), fraction: 0.125, in: newYork))
        #expect(run == instant("UTC", 2024, 11, 3, 5, 30), "01:30 EDT, the first of the two")
        #expect(window.next(after: run, fraction: 0.125, in: newYork) == instant("UTC", 2024, 11, 4, 6, 30))
    }
}

struct PolicyTests {
    @Test func hostingPolicyAndOverrides() throws {
        let policy = SchedulePolicy.hosting
        let after = instant("UTC", 2024, 6, 10, 12, 0) // Monday
        let runs = policy.upcoming(agentID: "fk-a", after: after, count: 40, agentTimeZone: "UTC")
        #expect(runs.count == 40)
        #expect(runs == runs.sorted { $0.at < $1.at })
        let pushes = runs.filter { $0.task == .offsitePush }
        #expect(!pushes.isEmpty && pushes.allSatisfy { calendar("UTC").component(.weekday, from: $0.at) == 1 }, "Sunday")
        #expect(runs.filter { $0.task == .backup }.allSatisfy { (1..<5).contains(calendar("UTC").component(.hour, from: $0.at)) })
        #expect(policy.retention == RetentionSettings(filesDays: 30, databasesDays: 30, emailDays: 1, offsiteWeeks: 4))

        let group = PolicyOverride(timings: ["offsite-push": try Timing(parsing: "weekly wed 05:00-07:00")], timeZone: "Asia/Tokyo")
        let agent = PolicyOverride(timings: ["backup": try Timing(parsing: "cron 15 3 * * *")], emailDays: 3)
        let effective = policy.applying(group).applying(agent)
        #expect(effective.timing(.backup) == .cron(try CronExpression(parsing: "15 3 * * *")))
        #expect(effective.timing(.verify) == policy.timing(.verify))
        #expect(effective.retention.emailDays == 3 && effective.retention.filesDays == 30)
        let tokyo = calendar("Asia/Tokyo")
        let backups = effective.upcoming(agentID: "fk-a", after: after, count: 30, agentTimeZone: "UTC").filter { $0.task == .backup }
        #expect(backups.allSatisfy { tokyo.component(.hour, from: $0.at) == 3 && tokyo.component(.minute, from: $0.at) == 15 })
        // Policies are stored as JSON; the round trip keeps them.
        let data = try JSONEncoder().encode(effective)
        #expect(try JSONDecoder().decode(SchedulePolicy.self, from: data) == effective)
    }
}
