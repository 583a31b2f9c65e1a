import Foundation

/// A real MariaDB server with its own data directory and socket, no TCP. Stopped when released.
public final class MariaDBServer: @unchecked Sendable {
    // @unchecked: the server process is started in init and only stopped afterwards.
    public let directory = TemporaryDirectory(prefix: "fk-mariadb")
    public var socket: String { directory.appending("mysqld.sock") }
    private let server: BackgroundProcess

    public init() throws {
        let data = directory.appending("data")
        let installed = try ProcessRunner.run("/usr/bin/mariadb-install-db",
                                              ["--no-defaults", "--datadir=\(data)", "--user=root", "--auth-root-authentication-method=normal",
                                               "--skip-test-db"])
        guard installed.status == 0 else { throw TestFailure("mariadb-install-db failed: \(installed.stderr)") }
        server = try BackgroundProcess("/usr/sbin/mariadbd", ["--no-defaults", "--datadir=\(data)", "--socket=\(directory.appending("mysqld.sock"))",
                                                              "--skip-networking", "--user=root", "--pid-file=\(directory.appending("mysqld.pid"))",
                                                              "--log-error=\(directory.appending("error.log"))", "--innodb-buffer-pool-size=16M"])
        let deadline = Date().addingTimeInterval(30)
        while !FileManager.default.fileExists(atPath: socket) {
            guard Date() < deadline, server.isRunning else {
                throw TestFailure("MariaDB did not start: \((try? String(contentsOfFile: directory.appending("error.log"), encoding: .utf8)) ?? "")")
            }
            Thread.sleep(forTimeInterval: 0.1)
        }
    }

    /// Runs SQL through the `mariadb` client as root over the socket and returns its tab-separated output.
    @discardableResult
    public func sql(_ statement: String, database: String? = nil) throws -> String {
        let output = try ProcessRunner.run("/usr/bin/mariadb", ["--no-defaults", "--socket=\(socket)", "-uroot", "-N", "-B"] + (database.map { [$0] } ?? []) + ["-e", statement])
        guard output.status == 0 else { throw TestFailure("SQL failed: \(output.stderr)") }
        return output.stdout
    }

    /// Loads a SQL file into a new database.
    public func load(_ file: String, into database: String) throws {
        try sql("CREATE DATABASE `\(database)`")
        let text = try String(contentsOfFile: file, encoding: .utf8)
        let output = try ProcessRunner.run("/usr/bin/mariadb", ["--no-defaults", "--socket=\(socket)", "-uroot", database], stdin: text)
        guard output.status == 0 else { throw TestFailure("loading \(file) failed: \(output.stderr)") }
    }

    deinit { server.stop() }
}
