import Foundation

/// A long-running program started by a test (a server, a daemon). Output goes to a log file the test can poll;
/// the process is terminated when the value is released.
public final class BackgroundProcess: @unchecked Sendable {
    // @unchecked: the process object is thread-safe (it locks), the rest is immutable.
    public let logPath: String
    private let process: SpawnedProcess
    private let scratch = TemporaryDirectory(prefix: "fleetkeep-bg")

    public init(_ executable: String, _ arguments: [String], environment: [String: String]? = nil) throws {
        logPath = scratch.appending("output.log")
        _ = FileManager.default.createFile(atPath: logPath, contents: nil)
        process = try SpawnedProcess(executable, arguments, logPath: logPath, environment: environment)
    }

    public var output: String { (try? String(contentsOfFile: logPath, encoding: .utf8)) ?? "" }
    public var isRunning: Bool { process.isRunning }
    public var pid: Int32 { process.pid }

    /// Polls the output until `predicate` matches it, or fails after `timeout` seconds.
    @discardableResult
    public func waitForOutput(timeout: Double = 20, _ predicate: (String) -> Bool) throws -> String {
        let deadline = Date().addingTimeInterval(timeout)
        while Date() < deadline {
            let text = output
            if predicate(text) { return text }
            if !process.isRunning { throw TestFailure("process exited (status \(process.terminationStatus)) before the expected output:\n\(text)") }
            Thread.sleep(forTimeInterval: 0.05)
        }
        throw TestFailure("timed out after \(timeout)s waiting for output:\n\(output)")
    }

    /// The port of the first line that says "listening on PORT" or "listening on 127.0.0.1:PORT", once the number is
    /// whole. The output is read while it is being written, so the line can be seen in part ("listening on" alone,
    /// or only the port's first digits, or "127" of the address); waiting for the space or line end after the number
    /// rules that out.
    public func waitForListeningPort(timeout: Double = 20) throws -> Int {
        let text = try waitForOutput(timeout: timeout) { $0.firstMatch(of: /listening on (?:127\.0\.0\.1:)?\d+[ \n]/) != nil }
        guard let match = text.firstMatch(of: /listening on (?:127\.0\.0\.1:)?(\d+)[ \n]/), let port = Int(match.1) else {
            throw TestFailure("no port in: \(text)")
        }
        return port
    }

    /// Sends SIGTERM and waits for the exit status.
    @discardableResult
    public func stop() -> Int32 { process.stop() }

    deinit { stop() }
}

/// A failure in test scaffolding, with what went wrong.
public struct TestFailure: Error, CustomStringConvertible {
    public let description: String
    public init(_ description: String) { self.description = description }
}
