/// The help of one command or subcommand, printed for `--help` and `-h`: a one-line purpose, the usage, every option
/// with its default, and one example.
public struct CommandHelp: Sendable {
    /// The words after the program name, e.g. "backup" or "licence activate".
    public let command: String
    public let purpose: String
    public let usage: [String]
    /// Option names as the program's option table spells them (`--root`); their text comes from that table.
    public let options: [String]
    public let example: String
    /// Text for options that mean something else in this command than in the program's table (`--verify`).
    public let overrides: [String: (argument: String, text: String)]

    public init(_ command: String, _ purpose: String, usage: [String], options: [String] = [], example: String,
                overrides: [String: (argument: String, text: String)] = [:]) {
        self.command = command
        self.purpose = purpose
        self.usage = usage
        self.options = options
        self.example = example
        self.overrides = overrides
    }

    /// The help text. `optionText` maps an option name to its argument and description (with its default).
    public func render(program: String, optionText: [String: (argument: String, text: String)]) -> String {
        var lines = ["\(program) \(command): \(purpose)", "", "Usage:"]
        lines += usage.map { "  \(program) \(command)\($0.isEmpty ? "" : " " + $0)" }
        if !options.isEmpty {
            lines += ["", "Options:"]
            let spelled = options.map { name -> (String, String) in
                let entry = overrides[name] ?? optionText[name] ?? (argument: "", text: "(not described)")
                return (entry.argument.isEmpty ? name : name + " " + entry.argument, entry.text)
            }
            let width = min(spelled.map(\.0.count).max() ?? 0, 30)
            for (option, text) in spelled {
                lines.append("  " + option + String(repeating: " ", count: max(width - option.count, 0) + 2) + text)
            }
        }
        lines += ["", "Example:", "  \(program) \(command)\(example.isEmpty ? "" : " " + example)"]
        return lines.joined(separator: "\n")
    }
}

/// All the help of one program: its commands' entries and the text of every option they name.
public struct ProgramHelp: Sendable {
    public let program: String
    public let entries: [CommandHelp]
    public let optionText: [String: (argument: String, text: String)]

    public init(program: String, entries: [CommandHelp], optionText: [String: (argument: String, text: String)]) {
        self.program = program
        self.entries = entries
        self.optionText = optionText
    }

    /// True when `arguments` (after the command name's position) ask for help: `--help` or `-h` before any `--`.
    public static func asksForHelp(_ arguments: [String]) -> Bool {
        for argument in arguments {
            if argument == "--" { return false }
            if argument == "--help" || argument == "-h" { return true }
        }
        return false
    }

    /// The help for the longest command path that `arguments` start with (`licence activate KEY --help` finds
    /// "licence activate"); for a command with subcommands and no subcommand named, a list of them.
    public func text(for arguments: [String]) -> String? {
        let words = Array(arguments.prefix { !$0.hasPrefix("-") })
        for count in stride(from: words.count, through: 1, by: -1) {
            let path = words.prefix(count).joined(separator: " ")
            if let entry = entries.first(where: { $0.command == path }) { return entry.render(program: program, optionText: optionText) }
            let children = entries.filter { $0.command.hasPrefix(path + " ") }
            if !children.isEmpty {
                let width = children.map(\.command.count).max() ?? 0
                return (["\(program) \(path): one of these subcommands (each takes --help)", ""]
                    + children.map { "  \(program) \($0.command)" + String(repeating: " ", count: width - $0.command.count + 2) + $0.purpose })
                    .joined(separator: "\n")
            }
        }
        return nil
    }
}
