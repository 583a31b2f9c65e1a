import Foundation

/// What the controller can ask an agent to do.
public enum JobKind: String, Codable, Sendable, CaseIterable {
    case backup
    case offsitePush = "offsite-push"
    case restore
    case verify
    case prune

    /// Kinds that work on the whole repository: at most one of them runs on an agent at a time. A restore reads
    /// snapshots only, so it may run beside them.
    public var isBackupType: Bool { self != .restore }

    public static func parse(_ text: String) throws -> JobKind {
        guard let kind = JobKind(rawValue: text) else {
            throw ScheduleError("unknown job kind '\(text.prefix(32))' (use \(allCases.map(\.rawValue).joined(separator: ", ")))")
        }
        return kind
    }
}

/// The recurring tasks of a schedule policy.
public enum ScheduledTask: String, Codable, Sendable, CaseIterable, Comparable {
    case backup
    case offsitePush = "offsite-push"
    case verify
    case prune
    /// The monthly test restore of one rotating account into a scratch directory.
    case restoreDrill = "restore-drill"

    public var jobKind: JobKind {
        switch self {
        case .backup: .backup
        case .offsitePush: .offsitePush
        case .verify: .verify
        case .prune: .prune
        case .restoreDrill: .restore
        }
    }

    public static func parse(_ text: String) throws -> ScheduledTask {
        guard let task = ScheduledTask(rawValue: text) else {
            throw ScheduleError("unknown scheduled task '\(text.prefix(32))' (use \(allCases.map(\.rawValue).joined(separator: ", ")))")
        }
        return task
    }

    public static func < (lhs: ScheduledTask, rhs: ScheduledTask) -> Bool {
        allCases.firstIndex(of: lhs)! < allCases.firstIndex(of: rhs)!
    }
}

/// A daily span of local wall-clock time, `HH:MM-HH:MM`; an end before the start crosses midnight.
public struct TimeWindow: Sendable, Equatable, Codable, CustomStringConvertible {
    /// Minutes after local midnight, 0..<1440.
    public let startMinute: Int
    /// 1...1440.
    public let lengthMinutes: Int

    public init(startMinute: Int, lengthMinutes: Int) throws {
        guard (0..<1440).contains(startMinute), (1...1440).contains(lengthMinutes) else {
            throw ScheduleError("a window starts between 00:00 and 23:59 and lasts from 1 minute to 24 hours")
        }
        self.startMinute = startMinute
        self.lengthMinutes = lengthMinutes
    }

    public init(parsing text: String) throws {
        let parts = text.split(separator: "-", omittingEmptySubsequences: false)
        guard parts.count == 2, let start = Self.minute(of: parts[0]), let end = Self.minute(of: parts[1]) else {
            throw ScheduleError("window '\(text.prefix(32))' must be HH:MM-HH:MM, e.g. 01:00-05:00")
        }
        let length = end > start ? end - start : end + 1440 - start
        try self.init(startMinute: start, lengthMinutes: length)
    }

    static func minute(of text: Substring) -> Int? {
        let pieces = text.split(separator: ":", omittingEmptySubsequences: false)
        guard pieces.count == 2, pieces.allSatisfy({ $0.count == 2 }), let hour = Int(pieces[0]), let minute = Int(pieces[1]),
              (0...24).contains(hour), (0...59).contains(minute), hour * 60 + minute <= 1440 else { return nil }
        return (hour * 60 + minute) % 1440
    }

    public var description: String {
        let end = (startMinute + lengthMinutes) % 1440
        return String(format: "%02d:%02d-%02d:%02d", startMinute / 60, startMinute % 60, end / 60, end % 60)
    }

    /// The agent's start: `fraction` (0..<1) of the way through the window, as a wall-clock time on the window's day
    /// (or the next day, when the window crosses midnight).
    func start(fraction: Double) -> WallTime {
        let span = lengthMinutes * 60
        let offset = min(max(Int((fraction * Double(span)).rounded(.down)), 0), span - 1)
        let total = startMinute * 60 + offset
        return WallTime(dayOffset: total / 86_400, hour: (total % 86_400) / 3600, minute: (total % 3600) / 60, second: total % 60)
    }

    public init(from decoder: any Decoder) throws { try self.init(parsing: try decoder.singleValueContainer().decode(String.self)) }
    public func encode(to encoder: any Encoder) throws {
        var container = encoder.singleValueContainer()
        try container.encode(description)
    }
}

/// When a task runs. Text forms: `daily 01:00-05:00`, `weekly sun 05:00-07:00`, `monthly 1 07:00-08:00`,
/// `cron M H DOM MON DOW`, `off`. Windowed timings start each agent at its own point in the window (`Jitter`);
/// cron timings run at exactly the times they name.
public enum Timing: Sendable, Equatable, Codable, CustomStringConvertible {
    case daily(TimeWindow)
    /// 0 = Sunday ... 6 = Saturday.
    case weekly(weekday: Int, TimeWindow)
    /// Day 1...31; in a shorter month, its last day.
    case monthly(day: Int, TimeWindow)
    case cron(CronExpression)
    case off

    static let weekdayNames = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"]

    public init(parsing raw: String) throws {
        let text = raw.trimmingCharacters(in: .whitespaces)
        guard text.utf8.count <= CronExpression.longestText else { throw ScheduleError("timing is longer than \(CronExpression.longestText) characters") }
        let words = text.split(separator: " ", omittingEmptySubsequences: true).map(String.init)
        switch words.first?.lowercased() {
        case "off", "disabled": self = .off
        case "cron": self = .cron(try CronExpression(parsing: words.dropFirst().joined(separator: " ")))
        case "daily" where words.count == 2: self = .daily(try TimeWindow(parsing: words[1]))
        case "weekly" where words.count == 3:
            guard let day = Self.weekday(words[1]) else {
                throw ScheduleError("weekly timing '\(text.prefix(48))': '\(words[1].prefix(16))' is not a weekday (sun, mon, ... sat)")
            }
            self = .weekly(weekday: day, try TimeWindow(parsing: words[2]))
        case "monthly" where words.count == 3:
            guard words[1].count <= 2, let day = Int(words[1]), (1...31).contains(day) else {
                throw ScheduleError("monthly timing '\(text.prefix(48))': day '\(words[1].prefix(16))' must be 1 to 31 (a shorter month uses its last day)")
            }
            self = .monthly(day: day, try TimeWindow(parsing: words[2]))
        default:
            if words.count == 1, let window = try? TimeWindow(parsing: words[0]) { self = .daily(window); return }
            throw ScheduleError("timing '\(text.prefix(48))' is not understood; use `daily 01:00-05:00`, `weekly sun 05:00-07:00`, `monthly 1 07:00-08:00`, `cron 30 2 * * *` or `off`")
        }
    }

    public static func weekday(_ text: String) -> Int? {
        let lower = text.lowercased()
        if let index = weekdayNames.firstIndex(where: { lower.hasPrefix($0) && lower.count <= 9 }) { return index }
        if lower.count == 1, let number = Int(lower), (0...7).contains(number) { return number % 7 }
        return nil
    }

    public var description: String {
        switch self {
        case .daily(let window): "daily \(window)"
        case .weekly(let day, let window): "weekly \(Self.weekdayNames[day]) \(window)"
        case .monthly(let day, let window): "monthly \(day) \(window)"
        case .cron(let expression): "cron \(expression)"
        case .off: "off"
        }
    }

    public init(from decoder: any Decoder) throws { try self.init(parsing: try decoder.singleValueContainer().decode(String.self)) }
    public func encode(to encoder: any Encoder) throws {
        var container = encoder.singleValueContainer()
        try container.encode(description)
    }

    /// The first run strictly after `date` for an agent whose jitter is `fraction`, in `calendar`'s time zone.
    public func next(after date: Date, fraction: Double, in calendar: Calendar) -> Date? {
        switch self {
        case .off: return nil
        case .cron(let expression): return expression.next(after: date, in: calendar)
        case .daily(let window):
            return ScheduleCalendar.firstInstant(after: date, in: calendar, dayMatches: { _ in true }) { _ in [window.start(fraction: fraction)] }
        case .weekly(let weekday, let window):
            return ScheduleCalendar.firstInstant(after: date, in: calendar, dayMatches: { $0.weekday == weekday + 1 }) { _ in
                [window.start(fraction: fraction)]
            }
        case .monthly(let day, let window):
            return ScheduleCalendar.firstInstant(after: date, in: calendar, dayMatches: { parts in
                guard let year = parts.year, let month = parts.month, let today = parts.day else { return false }
                return today == min(day, Self.daysIn(month: month, year: year))
            }) { _ in [window.start(fraction: fraction)] }
        }
    }

    static func daysIn(month: Int, year: Int) -> Int {
        let leap = year % 4 == 0 && (year % 100 != 0 || year % 400 == 0)
        return month == 2 ? (leap ? 29 : 28) : CronExpression.longestMonth[month - 1]
    }
}

/// How long backups are kept: the brief's default is 30 daily copies of files and databases, 1 of email, and 4
/// weekly off-site copies.
public struct RetentionSettings: Sendable, Equatable, Codable {
    public var filesDays: Int
    public var databasesDays: Int
    public var emailDays: Int
    public var offsiteWeeks: Int

    public static let hosting = RetentionSettings(filesDays: 30, databasesDays: 30, emailDays: 1, offsiteWeeks: 4)

    public init(filesDays: Int, databasesDays: Int, emailDays: Int, offsiteWeeks: Int) {
        self.filesDays = filesDays
        self.databasesDays = databasesDays
        self.emailDays = emailDays
        self.offsiteWeeks = offsiteWeeks
    }
}

/// An agent's schedule: when each task runs, in which time zone, and what the retention is.
public struct SchedulePolicy: Sendable, Equatable, Codable {
    public var timings: [String: Timing]
    public var timeZone: String?
    public var retention: RetentionSettings
    /// The number of days the daily verification takes to read every pack once.
    public var verifyRotation: Int

    /// The default hosting policy (see the brief): backups of files, databases and email daily in 01:00-05:00
    /// server-local time; the off-site push weekly on Sunday after the backup window; a daily verification of a
    /// rotating seventh of the packs and a daily prune after the backups; a test restore of one account each month.
    public static let hosting = SchedulePolicy(timings: [
        ScheduledTask.backup.rawValue: .daily(try! TimeWindow(parsing: "01:00-05:00")),
        ScheduledTask.offsitePush.rawValue: .weekly(weekday: 0, try! TimeWindow(parsing: "05:00-07:00")),
        ScheduledTask.verify.rawValue: .daily(try! TimeWindow(parsing: "05:00-07:00")),
        ScheduledTask.prune.rawValue: .daily(try! TimeWindow(parsing: "05:00-07:00")),
        ScheduledTask.restoreDrill.rawValue: .monthly(day: 1, try! TimeWindow(parsing: "07:00-08:00")),
    ], timeZone: nil, retention: .hosting, verifyRotation: 7)

    public init(timings: [String: Timing], timeZone: String?, retention: RetentionSettings, verifyRotation: Int) {
        self.timings = timings
        self.timeZone = timeZone
        self.retention = retention
        self.verifyRotation = verifyRotation
    }

    public func timing(_ task: ScheduledTask) -> Timing { timings[task.rawValue] ?? .off }

    /// This policy with `change` laid over it.
    public func applying(_ change: PolicyOverride?) -> SchedulePolicy {
        guard let change else { return self }
        var result = self
        for (task, timing) in change.timings ?? [:] { result.timings[task] = timing }
        if let zone = change.timeZone { result.timeZone = zone }
        if let value = change.filesDays { result.retention.filesDays = value }
        if let value = change.databasesDays { result.retention.databasesDays = value }
        if let value = change.emailDays { result.retention.emailDays = value }
        if let value = change.offsiteWeeks { result.retention.offsiteWeeks = value }
        return result
    }

    /// The calendar of `zone` (the policy's own zone wins), falling back to UTC for an unknown or missing zone.
    public func calendar(agentTimeZone zone: String?) -> Calendar {
        var calendar = Calendar(identifier: .gregorian)
        calendar.timeZone = ZoneName.zoneOrUTC(timeZone ?? zone)
        return calendar
    }

    /// The next `count` runs after `date` for the agent, earliest first.
    public func upcoming(agentID: String, after date: Date, count: Int, agentTimeZone: String?) -> [Occurrence] {
        let calendar = calendar(agentTimeZone: agentTimeZone)
        let fraction = Jitter.fraction(agentID: agentID)
        var heads: [(ScheduledTask, Date)] = ScheduledTask.allCases.compactMap { task in
            timing(task).next(after: date, fraction: fraction, in: calendar).map { (task, $0) }
        }
        var result: [Occurrence] = []
        while result.count < count, let earliest = heads.indices.min(by: { (heads[$0].1, heads[$0].0) < (heads[$1].1, heads[$1].0) }) {
            let (task, at) = heads[earliest]
            result.append(Occurrence(task: task, at: at))
            if let following = timing(task).next(after: at, fraction: fraction, in: calendar) {
                heads[earliest] = (task, following)
            } else {
                heads.remove(at: earliest)
            }
        }
        return result
    }
}

/// Part of a policy set for a group or an agent; nil fields leave the wider policy's value.
public struct PolicyOverride: Sendable, Equatable, Codable {
    public var timings: [String: Timing]?
    public var timeZone: String?
    public var filesDays: Int?
    public var databasesDays: Int?
    public var emailDays: Int?
    public var offsiteWeeks: Int?

    public init(timings: [String: Timing]? = nil, timeZone: String? = nil, filesDays: Int? = nil, databasesDays: Int? = nil,
                emailDays: Int? = nil, offsiteWeeks: Int? = nil) {
        self.timings = timings
        self.timeZone = timeZone
        self.filesDays = filesDays
        self.databasesDays = databasesDays
        self.emailDays = emailDays
        self.offsiteWeeks = offsiteWeeks
    }

    /// This override with `other`'s fields laid over it.
    public func merging(_ other: PolicyOverride) -> PolicyOverride {
        var result = self
        if let timings = other.timings { result.timings = (result.timings ?? [:]).merging(timings) { $1 } }
        result.timeZone = other.timeZone ?? timeZone
        result.filesDays = other.filesDays ?? filesDays
        result.databasesDays = other.databasesDays ?? databasesDays
        result.emailDays = other.emailDays ?? emailDays
        result.offsiteWeeks = other.offsiteWeeks ?? offsiteWeeks
        return result
    }
}

/// One run of a scheduled task.
public struct Occurrence: Sendable, Equatable, Codable {
    public let task: ScheduledTask
    public let at: Date
    public init(task: ScheduledTask, at: Date) {
        self.task = task
        self.at = at
    }
}

/// Each agent's deterministic place in a window: a fraction 0..<1 from its id, so a fleet spreads evenly over the
/// window instead of starting together, and an agent keeps its place from day to day and across restarts.
public enum Jitter {
    /// FNV-1a over the id's bytes, finished with the SplitMix64 mixer so that ids differing in one character land far
    /// apart. Not a security measure: anyone may know when an agent backs up.
    public static func fraction(agentID: String) -> Double {
        var hash: UInt64 = 0xcbf2_9ce4_8422_2325
        for byte in agentID.utf8 {
            hash ^= UInt64(byte)
            hash = hash &* 0x0000_0100_0000_01b3
        }
        hash = (hash ^ (hash >> 30)) &* 0xbf58_476d_1ce4_e5b9
        hash = (hash ^ (hash >> 27)) &* 0x94d0_49bb_1331_11eb
        hash ^= hash >> 31
        return Double(hash >> 11) / Double(UInt64(1) << 53)
    }
}
