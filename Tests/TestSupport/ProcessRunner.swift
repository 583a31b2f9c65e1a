import Foundation

/// Result of running a program to completion.
public struct ProcessOutput: Sendable {
    public let status: Int32
    public let stdout: String
    public let stderr: String
}

/// Runs external programs (the fixture tool, our own executables, servers) for tests.
public enum ProcessRunner {
    /// Runs `executable` with `arguments` and waits. Output is captured through temporary files so large output never deadlocks a pipe.
    @discardableResult
    public static func run(_ executable: String, _ arguments: [String], environment: [String: String]? = nil,
                           currentDirectory: String? = nil, stdin: String? = nil) throws -> ProcessOutput {
        let scratch = TemporaryDirectory(prefix: "fleetkeep-proc")
        let outPath = scratch.appending("out"), errPath = scratch.appending("err")
        _ = FileManager.default.createFile(atPath: outPath, contents: nil)
        _ = FileManager.default.createFile(atPath: errPath, contents: nil)
        let process = Process()
        process.executableURL = URL(fileURLWithPath: executable)
        process.arguments = arguments
        if let environment { process.environment = ProcessInfo.processInfo.environment.merging(environment) { $1 } }
        if let currentDirectory { process.currentDirectoryURL = URL(fileURLWithPath: currentDirectory) }
        process.standardOutput = try FileHandle(forWritingTo: URL(fileURLWithPath: outPath))
        process.standardError = try FileHandle(forWritingTo: URL(fileURLWithPath: errPath))
        let input = Pipe()
        process.standardInput = input
        try process.run()
        if let stdin { input.fileHandleForWriting.write(Data(stdin.utf8)) }
        try? input.fileHandleForWriting.close()
        process.waitUntilExit()
        let out = (try? String(contentsOfFile: outPath, encoding: .utf8)) ?? ""
        let err = (try? String(contentsOfFile: errPath, encoding: .utf8)) ?? ""
        return ProcessOutput(status: process.terminationStatus, stdout: out, stderr: err)
    }

    /// Absolute path of a program found on PATH (plus the sbin directories), or nil.
    public static func which(_ name: String) -> String? {
        let path = (ProcessInfo.processInfo.environment["PATH"] ?? "") + ":/usr/sbin:/sbin:/usr/bin:/bin"
        for dir in path.split(separator: ":") where FileManager.default.isExecutableFile(atPath: "\(dir)/\(name)") {
            return "\(dir)/\(name)"
        }
        return nil
    }

    /// The package root, found from this source file's location.
    public static var packageRoot: String {
        URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent().path
    }

    /// Directory holding built products of the current build (where the test bundle itself lives).
    public static var productsDirectory: String {
        if let dir = ProcessInfo.processInfo.environment["FLEETKEEP_BIN"] { return dir }
        // The test runner executable sits in the products directory (.build/<triple>/debug).
        let exe = URL(fileURLWithPath: CommandLine.arguments[0]).resolvingSymlinksInPath()
        var dir = exe.deletingLastPathComponent()
        while dir.path != "/" {
            if FileManager.default.fileExists(atPath: dir.appendingPathComponent("fleetkeep-agent").path) { return dir.path }
            dir = dir.deletingLastPathComponent()
        }
        return packageRoot + "/.build/debug"
    }
}
