import Foundation

/// A command-line mistake: names the argument and says what to do instead. Programs print it and exit with status 2.
public struct UsageError: Error, CustomStringConvertible, Sendable {
    public let message: String
    public init(_ message: String) { self.message = message }
    public var description: String { message }
}

/// Parsed command-line arguments: positionals in order, `--name value` options (repeatable) and `--flag` switches.
///
/// Options are declared up front so that an unknown `--option` or a missing value is a clear error, not a silent guess.
public struct Arguments: Sendable {
    public private(set) var positionals: [String] = []
    private var values: [String: [String]] = [:]
    private var flags: Set<String> = []

    /// Parses `arguments` given the names of options that take a value and of boolean flags (names without `--`).
    /// Accepts `--name value` and `--name=value`; `--` ends option parsing.
    public init(_ arguments: [String], options: Set<String> = [], flags knownFlags: Set<String> = []) throws {
        var index = 0
        var onlyPositionals = false
        while index < arguments.count {
            let argument = arguments[index]
            index += 1
            if onlyPositionals || !argument.hasPrefix("--") || argument == "-" {
                positionals.append(argument)
                continue
            }
            if argument == "--" { onlyPositionals = true; continue }
            var name = String(argument.dropFirst(2))
            var inlineValue: String?
            if let equals = name.firstIndex(of: "=") {
                inlineValue = String(name[name.index(after: equals)...])
                name = String(name[..<equals])
            }
            if knownFlags.contains(name) {
                guard inlineValue == nil else { throw UsageError("--\(name) takes no value") }
                flags.insert(name)
            } else if options.contains(name) {
                if let inlineValue {
                    values[name, default: []].append(inlineValue)
                } else {
                    guard index < arguments.count else { throw UsageError("--\(name) needs a value") }
                    values[name, default: []].append(arguments[index])
                    index += 1
                }
            } else {
                let known = (options.union(knownFlags)).sorted().map { "--\($0)" }.joined(separator: ", ")
                throw UsageError("unknown option --\(name)" + (known.isEmpty ? "" : " (known: \(known))"))
            }
        }
    }

    /// The last value given for `--name`, if any.
    public func value(_ name: String) -> String? { values[name]?.last }
    /// Every value given for a repeatable `--name`, also splitting comma-separated lists.
    public func list(_ name: String) -> [String] {
        (values[name] ?? []).flatMap { $0.split(separator: ",").map { String($0).trimmingCharacters(in: .whitespaces) } }
            .filter { !$0.isEmpty }
    }
    public func flag(_ name: String) -> Bool { flags.contains(name) }

    /// A positional argument that must be present.
    public func positional(_ index: Int, _ what: String) throws -> String {
        guard index < positionals.count else { throw UsageError("missing \(what)") }
        return positionals[index]
    }

    /// Fails when more positionals were given than the command accepts.
    public func expectPositionals(atMost count: Int) throws {
        if positionals.count > count { throw UsageError("unexpected argument '\(positionals[count])'") }
    }

    /// The longest duration any option accepts: ten years. Every duration is used in Int64 second arithmetic
    /// (expiry = now + duration), so a bound far below Int64.max keeps that arithmetic from trapping.
    public static let longestDuration: Int64 = 10 * 366 * 86_400

    /// Parses a duration such as `30s`, `15m`, `24h`, `7d` (plain numbers are seconds) into whole seconds from 1 up
    /// to `maximum`. Values that are not finite, not positive or too long are usage errors naming the option.
    public static func parseDuration(_ text: String, option: String, maximum: Int64 = longestDuration) throws -> Int64 {
        let units: [Character: Double] = ["s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604_800]
        var number = Substring(text)
        var scale = 1.0
        if let last = text.last, let unit = units[last] { scale = unit; number = number.dropLast() }
        guard let value = Double(number), value.isFinite, value > 0 else {
            throw UsageError("--\(option) '\(text)' is not a duration; use e.g. 30s, 15m, 24h or 7d")
        }
        let seconds = (value * scale).rounded(.up)
        // Compared as Doubles before converting, so no value reaches Int64(_:) outside its range.
        guard seconds.isFinite, seconds <= Double(maximum) else {
            throw UsageError("--\(option) '\(text)' is longer than the longest allowed, \(maximum)s (\(maximum / 86_400) days)")
        }
        return Int64(seconds)
    }
}

/// Writes diagnostics to standard error (Swift 6 forbids the C `stderr` global).
public enum Console {
    public static func error(_ message: String) {
        FileHandle.standardError.write(Data((message + "\n").utf8))
    }
    /// True when standard output is a terminal, so progress lines are worth drawing.
    public static var isTerminal: Bool { isatty(STDOUT_FILENO) == 1 }
}
