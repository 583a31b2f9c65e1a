import Foundation

/// Dumps and loads MySQL/MariaDB databases with the server's own client tools. Credentials go to the tools in a
/// private `--defaults-extra-file`, never on the command line where `ps` would show them.
public struct DatabaseDumper: Sendable {
    public let settings: AgentConfig.DatabaseSettings

    public init(settings: AgentConfig.DatabaseSettings) { self.settings = settings }

    /// Database names on the server that start with `USER_` (the cPanel convention for an account's databases).
    public func databases(of user: String) throws -> [String] {
        let output = try runClient(["-N", "-B", "-e", "SHOW DATABASES"])
        return output.split(separator: "\n").map(String.init).filter { $0.hasPrefix(user + "_") }.sorted()
    }

    /// Runs the dump tool and hands its standard output (a pipe) to `consume`. No temporary file is written.
    /// `consume` must call `confirm` after reading everything and before committing the result: it waits for the
    /// dump tool and throws (quoting what the tool printed) when the dump failed, so a broken dump is never recorded.
    public func dump<T>(database: String, _ consume: (_ descriptor: Int32, _ confirm: @escaping @Sendable () throws -> Void) throws -> T) throws -> T {
        let credentials = try CredentialsFile(settings)
        let process = Process()
        process.executableURL = URL(fileURLWithPath: try Self.locate(settings.dumpCommand, fallback: "mysqldump"))
        process.arguments = ["--defaults-extra-file=\(credentials.path)", "--single-transaction", "--quick", "--routines", "--triggers",
                             "--events", "--hex-blob", "--databases", database]
        let output = Pipe(), errors = Pipe()
        process.standardOutput = output
        process.standardError = errors
        process.standardInput = FileHandle.nullDevice
        try process.run()
        let errorText = ErrorCollector(errors)
        let command = settings.dumpCommand
        let confirm: @Sendable () throws -> Void = {
            process.waitUntilExit()
            guard process.terminationStatus == 0 else {
                throw AgentError("dumping database \(database) failed (\(command) exited \(process.terminationStatus)): \(errorText.text.trimmingCharacters(in: .whitespacesAndNewlines)); no snapshot was recorded")
            }
        }
        do {
            let result = try consume(output.fileHandleForReading.fileDescriptor, confirm)
            try confirm()
            return result
        } catch {
            if process.isRunning { process.terminate() }
            process.waitUntilExit()
            throw error
        }
    }

    /// Creates `database` if needed and loads SQL into it from what `produce` writes to the given descriptor.
    public func load(into database: String, _ produce: (_ descriptor: Int32) throws -> Void) throws {
        try HostingAccounts.validateName(database, source: "--into-database")
        _ = try runClient(["-e", "CREATE DATABASE IF NOT EXISTS `\(database)`"])
        let credentials = try CredentialsFile(settings)
        let process = Process()
        process.executableURL = URL(fileURLWithPath: try Self.locate(settings.clientCommand, fallback: "mysql"))
        process.arguments = ["--defaults-extra-file=\(credentials.path)", database]
        let input = Pipe(), errors = Pipe()
        process.standardInput = input
        process.standardError = errors
        process.standardOutput = FileHandle.nullDevice
        try process.run()
        let errorText = ErrorCollector(errors)
        // The dump names its database (`USE ...`); rewriting it would mean parsing SQL, so loading into another
        // name works by filtering those lines out as they stream through.
        let filter = StatementFilter(target: input.fileHandleForWriting.fileDescriptor)
        do {
            try produce(filter.writeDescriptor)
            try filter.finish()
        } catch {
            try? input.fileHandleForWriting.close()
            process.waitUntilExit()
            throw error
        }
        try input.fileHandleForWriting.close()
        process.waitUntilExit()
        guard process.terminationStatus == 0 else {
            throw AgentError("loading into database \(database) failed: \(errorText.text.trimmingCharacters(in: .whitespacesAndNewlines))")
        }
    }

    func runClient(_ arguments: [String]) throws -> String {
        let credentials = try CredentialsFile(settings)
        let process = Process()
        process.executableURL = URL(fileURLWithPath: try Self.locate(settings.clientCommand, fallback: "mysql"))
        process.arguments = ["--defaults-extra-file=\(credentials.path)"] + arguments
        let output = Pipe(), errors = Pipe()
        process.standardOutput = output
        process.standardError = errors
        try process.run()
        let errorText = ErrorCollector(errors)
        let data = output.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        guard process.terminationStatus == 0 else {
            throw AgentError("database client failed: \(errorText.text.trimmingCharacters(in: .whitespacesAndNewlines)); check [database] in the agent config")
        }
        return String(decoding: data, as: UTF8.self)
    }

    static func locate(_ command: String, fallback: String) throws -> String {
        if command.hasPrefix("/") { return command }
        let path = (ProcessInfo.processInfo.environment["PATH"] ?? "") + ":/usr/bin:/usr/local/bin:/usr/sbin"
        for name in [command, fallback] {
            for directory in path.split(separator: ":") where FileManager.default.isExecutableFile(atPath: "\(directory)/\(name)") {
                return "\(directory)/\(name)"
            }
        }
        throw AgentError("\(command) not found on PATH; install the MariaDB/MySQL client or set dump-command in [database]")
    }
}

/// A private client option file for one command, removed afterwards.
final class CredentialsFile {
    let path: String

    init(_ settings: AgentConfig.DatabaseSettings) throws {
        var lines = ["[client]", "user=\(settings.user)"]
        if let socket = settings.socket { lines.append("socket=\(socket)") }
        if let host = settings.host { lines.append("host=\(host)") }
        if let port = settings.port { lines.append("port=\(port)") }
        if let passwordFile = settings.passwordFile {
            lines.append("password=\(try SecretFile.read(passwordFile, what: "database password file"))")
        }
        path = NSTemporaryDirectory() + "/fleetkeep-db-\(UUID().uuidString).cnf"
        try PrivateFile.write(path, Array((lines.joined(separator: "\n") + "\n").utf8))
    }

    deinit { unlink(path) }
}

/// Reads a pipe to its end on a background thread, so a chatty tool can never block on a full stderr pipe.
final class ErrorCollector: @unchecked Sendable {
    // @unchecked: `collected` is written once by the reader thread before `done` is signalled, read after.
    private var collected = Data()
    private let done = DispatchSemaphore(value: 0)

    init(_ pipe: Pipe) {
        let handle = pipe.fileHandleForReading
        Thread.detachNewThread { [self] in
            collected = handle.readDataToEndOfFile()
            done.signal()
        }
    }

    var text: String {
        done.wait()
        done.signal()
        return String(decoding: collected.prefix(4000), as: UTF8.self)
    }
}

/// Passes SQL through to `target`, dropping the `CREATE DATABASE` and `USE` lines a `--databases` dump starts with,
/// so the dump loads into whichever database the client was given.
final class StatementFilter: @unchecked Sendable {
    // @unchecked: the pump thread owns the read side; `failure` is read only after `finished` is signalled.
    private let pipe = Pipe()
    private let target: Int32
    private let finished = DispatchSemaphore(value: 0)
    private var failure: (any Error)?

    var writeDescriptor: Int32 { pipe.fileHandleForWriting.fileDescriptor }

    init(target: Int32) {
        self.target = target
        let reader = pipe.fileHandleForReading
        Thread.detachNewThread { [self] in
            var pending = Data()
            do {
                while true {
                    let data = reader.availableData
                    if data.isEmpty { break }
                    pending.append(data)
                    guard let lastNewline = pending.lastIndex(of: 10) else { continue }
                    try forward(pending[pending.startIndex...lastNewline])
                    pending = Data(pending[pending.index(after: lastNewline)...])
                }
                try forward(pending)
            } catch {
                failure = error
            }
            finished.signal()
        }
    }

    private func forward(_ data: Data) throws {
        var out = [UInt8]()
        out.reserveCapacity(data.count)
        let lines = data.split(separator: 10, omittingEmptySubsequences: false)
        for (index, line) in lines.enumerated() {
            let isLast = index == lines.count - 1
            if isLast && line.isEmpty { break }
            let start = String(decoding: line.prefix(40), as: UTF8.self)
            if start.hasPrefix("CREATE DATABASE") || start.hasPrefix("USE `") { continue }
            out.append(contentsOf: line)
            if !isLast { out.append(10) }
        }
        var done = 0
        while done < out.count {
            let wrote = out.withUnsafeBytes { write(target, $0.baseAddress! + done, out.count - done) }
            guard wrote > 0 else { throw AgentError("database client stopped reading: \(String(cString: strerror(errno)))") }
            done += wrote
        }
    }

    func finish() throws {
        try pipe.fileHandleForWriting.close()
        finished.wait()
        if let failure { throw failure }
    }
}
