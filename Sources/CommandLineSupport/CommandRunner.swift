import Foundation

/// Dispatches `argv[1]` to a command and turns errors into exit statuses: 2 for usage errors, 1 for the rest.
/// `--version` (or `version`) prints the program's name and version, as packaging and support scripts expect.
public enum CommandRunner {
    /// `--help` or `-h` anywhere after the command (before `--`) prints that command's help from `help` and exits 0,
    /// before the command runs.
    public static func run(program: String, version: String, commands: [String: ([String]) throws -> Int32], usage: String,
                           help: @autoclosure () -> ProgramHelp? = nil, arguments: [String] = Array(CommandLine.arguments.dropFirst())) -> Int32 {
        guard let name = arguments.first, !["-h", "--help", "help"].contains(name) else {
            print(usage)
            return arguments.isEmpty ? 2 : 0
        }
        if ["--version", "version"].contains(name) {
            guard arguments.count == 1 else {
                Console.error("\(program) \(name): takes no arguments\nRun `\(program) --help` for usage.")
                return 2
            }
            print("\(program) \(version)")
            return 0
        }
        guard let command = commands[name] else {
            Console.error("\(program): unknown command '\(name)'\n\n\(usage)")
            return 2
        }
        if ProgramHelp.asksForHelp(Array(arguments.dropFirst())) {
            print(help()?.text(for: arguments) ?? usage)
            return 0
        }
        do {
            return try command(Array(arguments.dropFirst()))
        } catch let error as UsageError {
            Console.error("\(program) \(name): \(error.message)\nRun `\(program) --help` for usage.")
            return 2
        } catch {
            Console.error("\(program) \(name): \(error)")
            return 1
        }
    }
}
