import Foundation

/// Dispatches `argv[1]` to a command and turns errors into exit statuses: 2 for usage errors, 1 for the rest.
public enum CommandRunner {
    public static func run(program: String, commands: [String: ([String]) throws -> Int32], usage: String,
                           arguments: [String] = Array(CommandLine.arguments.dropFirst())) -> Int32 {
        guard let name = arguments.first, !["-h", "--help", "help"].contains(name) else {
            print(usage)
            return arguments.isEmpty ? 2 : 0
        }
        guard let command = commands[name] else {
            Console.error("\(program): unknown command '\(name)'\n\n\(usage)")
            return 2
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
