import Foundation

/// A standard 5-field cron expression: minute, hour, day of month, month, day of week.
///
/// Fields accept `*`, numbers, ranges `a-b`, steps `*/n` and `a-b/n`, lists `a,b,c`, and names for months (`jan`)
/// and weekdays (`sun`, 0 and 7 are both Sunday). As in Vixie cron, when both day of month and day of week are
/// restricted a day matches if either does. Times are wall-clock times in a time zone: a time that a daylight-saving
/// change skips runs at the first instant after the gap (02:30 on a spring-forward night runs at 03:30), and a time
/// that a change repeats runs once, at its first occurrence.
public struct CronExpression: Sendable, Equatable, Codable, CustomStringConvertible {
    public let text: String
    let minutes: Set<Int>
    let hours: Set<Int>
    let daysOfMonth: Set<Int>
    let months: Set<Int>
    /// 0 = Sunday ... 6 = Saturday.
    let weekdays: Set<Int>
    let dayOfMonthRestricted: Bool
    let weekdayRestricted: Bool

    /// The longest expression accepted; a real one is a few dozen characters.
    static let longestText = 256

    public init(parsing text: String) throws {
        let trimmed = text.trimmingCharacters(in: .whitespaces)
        guard trimmed.utf8.count <= Self.longestText else {
            throw ScheduleError("cron expression is longer than \(Self.longestText) characters")
        }
        let fields = trimmed.split(whereSeparator: { $0 == " " || $0 == "\t" }).map(String.init)
        guard fields.count == 5 else {
            throw ScheduleError("cron expression '\(trimmed.prefix(64))' has \(fields.count) fields; it needs 5: minute hour day-of-month month day-of-week, e.g. '30 2 * * *'")
        }
        self.text = fields.joined(separator: " ")
        minutes = try Self.field(fields[0], name: "minute", range: 0...59)
        hours = try Self.field(fields[1], name: "hour", range: 0...23)
        daysOfMonth = try Self.field(fields[2], name: "day of month", range: 1...31)
        months = try Self.field(fields[3], name: "month", range: 1...12, names: Self.monthNames)
        let weekdaysRaw = try Self.field(fields[4], name: "day of week", range: 0...7, names: Self.weekdayNames)
        weekdays = Set(weekdaysRaw.map { $0 % 7 })
        dayOfMonthRestricted = !fields[2].hasPrefix("*")
        weekdayRestricted = !fields[4].hasPrefix("*")
        // A day of month that no chosen month has (30 February) would never run: refuse it instead of waiting forever.
        guard months.contains(where: { month in daysOfMonth.contains(where: { $0 <= Self.longestMonth[month - 1] }) }) || weekdayRestricted else {
            throw ScheduleError("cron expression '\(self.text)' names a day that none of its months has, so it would never run")
        }
    }

    public var description: String { text }

    public init(from decoder: any Decoder) throws {
        try self.init(parsing: try decoder.singleValueContainer().decode(String.self))
    }

    public func encode(to encoder: any Encoder) throws {
        var container = encoder.singleValueContainer()
        try container.encode(text)
    }

    public static func == (lhs: CronExpression, rhs: CronExpression) -> Bool { lhs.text == rhs.text }

    static let monthNames = ["jan": 1, "feb": 2, "mar": 3, "apr": 4, "may": 5, "jun": 6, "jul": 7, "aug": 8, "sep": 9, "oct": 10, "nov": 11, "dec": 12]
    static let weekdayNames = ["sun": 0, "mon": 1, "tue": 2, "wed": 3, "thu": 4, "fri": 5, "sat": 6]
    static let longestMonth = [31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31]

    private static func field(_ text: String, name: String, range: ClosedRange<Int>, names: [String: Int] = [:]) throws -> Set<Int> {
        var values = Set<Int>()
        for part in text.split(separator: ",", omittingEmptySubsequences: false) {
            let pieces = part.split(separator: "/", maxSplits: 1, omittingEmptySubsequences: false)
            var step = 1
            if pieces.count == 2 {
                guard let parsed = Int(pieces[1]), parsed >= 1, parsed <= range.upperBound + 1 else {
                    throw ScheduleError("cron \(name) field '\(text.prefix(32))': step '\(pieces[1].prefix(16))' must be a number from 1 to \(range.upperBound + 1)")
                }
                step = parsed
            }
            let base = String(pieces[0])
            let bounds: ClosedRange<Int>
            if base == "*" {
                bounds = range
            } else if let dash = base.firstIndex(of: "-") {
                let low = try value(String(base[..<dash]), name: name, range: range, names: names, whole: text)
                let high = try value(String(base[base.index(after: dash)...]), name: name, range: range, names: names, whole: text)
                guard low <= high else { throw ScheduleError("cron \(name) field '\(text.prefix(32))': range \(low)-\(high) runs backwards") }
                bounds = low...high
            } else {
                let single = try value(base, name: name, range: range, names: names, whole: text)
                bounds = single...(pieces.count == 2 ? range.upperBound : single)
            }
            values.formUnion(stride(from: bounds.lowerBound, through: bounds.upperBound, by: step))
        }
        return values
    }

    private static func value(_ text: String, name: String, range: ClosedRange<Int>, names: [String: Int], whole: String) throws -> Int {
        if let named = names[text.lowercased()] { return named }
        guard text.count <= 4, let number = Int(text), range.contains(number) else {
            throw ScheduleError("cron \(name) field '\(whole.prefix(32))': '\(text.prefix(16))' is not a value from \(range.lowerBound) to \(range.upperBound)")
        }
        return number
    }

    func matches(day: DateComponents) -> Bool {
        guard let month = day.month, months.contains(month), let dayOfMonth = day.day, let weekday = day.weekday else { return false }
        let domMatch = daysOfMonth.contains(dayOfMonth)
        let dowMatch = weekdays.contains(weekday - 1)
        switch (dayOfMonthRestricted, weekdayRestricted) {
        case (true, true): return domMatch || dowMatch
        case (true, false): return domMatch
        case (false, true): return dowMatch
        case (false, false): return true
        }
    }

    /// The first run strictly after `date`, or nil when none falls within `ScheduleCalendar.horizonDays`.
    public func next(after date: Date, in calendar: Calendar) -> Date? {
        let sortedHours = hours.sorted(), sortedMinutes = minutes.sorted()
        return ScheduleCalendar.firstInstant(after: date, in: calendar, dayMatches: matches(day:)) { _ in
            sortedHours.flatMap { hour in sortedMinutes.map { WallTime(dayOffset: 0, hour: hour, minute: $0, second: 0) } }
        }
    }
}

/// Walking wall-clock days in a time zone, which is where daylight-saving changes and leap days live.
enum ScheduleCalendar {
    /// Far enough for a 29 February schedule to come round (at most 8 years apart, across 2100).
    static let horizonDays = 8 * 366 + 2

    /// The first instant after `date` whose local day satisfies `dayMatches` and whose local (hour, minute, second) is
    /// one of `times(day)`, in order. Skipped local times move to the end of the gap; repeated ones run once.
    static func firstInstant(after date: Date, in calendar: Calendar, dayMatches: (DateComponents) -> Bool,
                             times: (DateComponents) -> [WallTime]) -> Date? {
        // Start the day before, so a time late on the previous local day that lands after `date` is not missed.
        guard var day = calendar.date(byAdding: .day, value: -1, to: calendar.startOfDay(for: date)) else { return nil }
        for _ in 0..<horizonDays {
            let parts = calendar.dateComponents([.year, .month, .day, .weekday], from: day)
            if dayMatches(parts) {
                // The earliest, not the first listed: a skipped 02:30 lands at 03:30, after a listed 03:00.
                let instants = times(parts).compactMap { time -> Date? in
                    guard let local = time.dayOffset == 0 ? day : calendar.date(byAdding: .day, value: time.dayOffset, to: day) else { return nil }
                    let date = calendar.dateComponents([.year, .month, .day], from: local)
                    var wanted = DateComponents()
                    wanted.year = date.year; wanted.month = date.month; wanted.day = date.day
                    wanted.hour = time.hour; wanted.minute = time.minute; wanted.second = time.second
                    return instant(for: wanted, in: calendar)
                }
                if let first = instants.filter({ $0 > date }).min() { return first }
            }
            guard let following = calendar.date(byAdding: .day, value: 1, to: day) else { return nil }
            day = following
        }
        return nil
    }

    /// The instant of a local wall-clock time. Foundation resolves a skipped time forward by the gap and a repeated
    /// time to its first occurrence; both are checked here rather than trusted, so the rule holds on every platform.
    static func instant(for wanted: DateComponents, in calendar: Calendar) -> Date? {
        guard let candidate = calendar.date(from: wanted) else { return nil }
        let back = calendar.dateComponents([.year, .month, .day, .hour, .minute, .second], from: candidate)
        if back.hour == wanted.hour && back.minute == wanted.minute && back.day == wanted.day {
            // Repeated hour: an hour earlier shows the same wall time when this is the second occurrence.
            let earlier = candidate.addingTimeInterval(-3600)
            let earlierParts = calendar.dateComponents([.day, .hour, .minute, .second], from: earlier)
            if earlierParts.day == wanted.day && earlierParts.hour == wanted.hour && earlierParts.minute == wanted.minute
                && earlierParts.second == wanted.second { return earlier }
            return candidate
        }
        // Skipped: the wall time does not exist. Take it at the pre-change offset, which lands after the gap.
        let offsetBefore = calendar.timeZone.secondsFromGMT(for: candidate.addingTimeInterval(-86_400 / 2))
        var utc = Calendar(identifier: .gregorian)
        utc.timeZone = TimeZone(identifier: "UTC")!
        guard let asUTC = utc.date(from: wanted) else { return candidate }
        let shifted = asUTC.addingTimeInterval(TimeInterval(-offsetBefore))
        return shifted
    }
}

/// A local wall-clock time on a schedule's day, or `dayOffset` days after it (a window that crosses midnight).
struct WallTime {
    var dayOffset: Int
    var hour: Int
    var minute: Int
    var second: Int
}

/// A schedule that cannot be used, with the reason and what to write instead.
public struct ScheduleError: Error, CustomStringConvertible, Sendable, Equatable {
    public let message: String
    public init(_ message: String) { self.message = message }
    public var description: String { message }
}
