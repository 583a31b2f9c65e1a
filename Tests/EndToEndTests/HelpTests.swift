import Foundation
import Testing
import TestSupport

/// Every command and subcommand of both programs answers `--help` and `-h` with exit 0 and a help that has a
/// purpose, the usage, its options and an example; and every option a command accepts is described in its help.
struct HelpTests {
    static let programs = ["fleetkeep-agent", "fleetkeep-controller"]

    func run(_ program: String, _ arguments: [String]) throws -> ProcessOutput {
        try ProcessRunner.run(ProcessRunner.productsDirectory + "/" + program, arguments)
    }

    /// The commands the program's own usage lists (the first word of each indented line).
    func commands(of program: String) throws -> [String] {
        let usage = try run(program, ["--help"]).stdout
        var words: [String] = []
        for line in usage.split(separator: "\n") where line.hasPrefix("  ") && !line.hasPrefix("   ") {
            guard let word = line.split(separator: " ").first.map(String.init), word.first?.isLetter == true, !words.contains(word) else { continue }
            words.append(word)
        }
        return words
    }

    /// The subcommands a group's help lists, or [] when the command has no subcommands.
    func subcommands(_ program: String, _ command: String, helpText: String) -> [String] {
        guard helpText.contains("one of these subcommands") else { return [] }
        return helpText.split(separator: "\n").compactMap { line in
            let words = line.split(separator: " ")
            return words.count >= 3 && words[0] == program && words[1] == command ? String(words[2]) : nil
        }
    }

    @Test(arguments: programs)
    func everyCommandAndSubcommandExplainsItself(program: String) throws {
        let commands = try commands(of: program)
        #expect(commands.count >= 8, "\(program) usage lists too few commands: \(commands)")
        for command in commands {
            let group = try run(program, [command, "--help"])
            #expect(group.status == 0, "\(program) \(command) --help: exit \(group.status) \(group.stderr)")
            let subcommands = subcommands(program, command, helpText: group.stdout)
            var helpTexts = subcommands.isEmpty ? [group.stdout] : []
            for path in subcommands.isEmpty ? [[command]] : subcommands.map({ [command, $0] }) {
                for spelling in ["--help", "-h"] {
                    let help = try run(program, path + [spelling])
                    let name = "\(program) \(path.joined(separator: " ")) \(spelling)"
                    #expect(help.status == 0, "\(name): exit \(help.status) \(help.stderr)")
                    #expect(help.stdout.hasPrefix("\(program) \(path.joined(separator: " ")): "), "\(name) has no one-line purpose: \(help.stdout.prefix(200))")
                    for part in ["Usage:", "Example:"] { #expect(help.stdout.contains(part), "\(name) lacks \(part)") }
                    #expect(!help.stdout.contains("(not described)"), "\(name) names an option with no description")
                    if spelling == "--help" { helpTexts.append(help.stdout) }
                }
            }
            // The parser lists every option it accepts when it meets an unknown one; each must be described.
            let probe = try run(program, [command] + (subcommands.first.map { [$0] } ?? []) + ["--zz-not-an-option"])
            let known = try #require(probe.stderr.firstMatch(of: /known: ([^)]*)\)/), "\(program) \(command): the parser listed no options: \(probe.stderr)")
            do {
                for option in known.1.split(separator: ",").map({ $0.trimmingCharacters(in: .whitespaces) }) {
                    #expect(helpTexts.contains { $0.contains("  \(option) ") || $0.contains("  \(option)\n") },
                            "\(program) \(command): option \(option) is accepted but described in no help")
                }
            }
        }
    }

    @Test func helpRunsNothing() throws {
        // `backup --help` must not start a backup (no config, no repository: the command itself would fail).
        let help = try run("fleetkeep-agent", ["backup", "--repo", "/nonexistent/repo", "--help"])
        #expect(help.status == 0)
        #expect(help.stdout.contains("Usage:"))
    }
}
