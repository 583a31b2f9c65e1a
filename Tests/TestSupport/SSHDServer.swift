import Foundation
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// A real OpenSSH server (/usr/sbin/sshd) on 127.0.0.1 for tests, with its own config, host key and client keys
/// in a temporary directory. The port is picked from 2200-2299 and confirmed by sshd's own "Server listening"
/// log line, so parallel tests (and other test processes) never connect to each other's servers.
///
/// Processes are started with posix_spawn and reaped with waitpid, not Foundation's `Process`: with many
/// tests starting servers in parallel, `Process.waitUntilExit` sometimes never returned (children left as zombies).
///
/// `@unchecked Sendable`: the only mutable state (whether the listener still runs) is guarded by a Mutex.
public final class SSHDServer: @unchecked Sendable {
    public let host = "127.0.0.1"
    public let port: Int
    /// Base64 SHA-256 of the host key, as `ssh-keygen -lf` prints after "SHA256:" (no padding).
    public let hostKeyFingerprintSHA256: String
    /// "ssh-ed25519 AAAA..." (algorithm and base64 key) of the host key.
    public let hostPublicKey: String
    /// Client ed25519 private key authorized for `user`.
    public let clientKeyPath: String
    /// Client RSA (2048-bit) private key authorized for `user`.
    public let rsaClientKeyPath: String
    /// A valid ed25519 key that is *not* in authorized_keys.
    public let unauthorizedClientKeyPath: String
    /// The login user (the current user; root on the test machines).
    public let user: String
    /// An empty directory for remote test data (absolute path, also readable locally).
    public let root: String
    /// sshd's stderr log, useful in failure messages.
    public let logPath: String
    /// The sshd listener's process id.
    public let pid: pid_t
    private let directory: TemporaryDirectory
    private let running: Mutex<Bool>

    /// Starts sshd. `sftpArguments` are passed to `internal-sftp` (e.g. ["-R"] for a read-only server,
    /// ["-P", "fsync"] to deny a request); `extraConfig` lines are appended to sshd_config.
    public init(sftpArguments: [String] = [], extraConfig: [String] = []) throws {
        let directory = TemporaryDirectory(prefix: "fleetkeep-sshd")
        self.directory = directory
        user = NSUserName()
        root = directory.appending("data")
        logPath = directory.appending("sshd.log")
        try FileManager.default.createDirectory(atPath: root, withIntermediateDirectories: true)
        if !FileManager.default.fileExists(atPath: "/run/sshd") {
            try? FileManager.default.createDirectory(atPath: "/run/sshd", withIntermediateDirectories: true, attributes: [.posixPermissions: 0o755])
        }
        let hostKey = directory.appending("host_ed25519")
        clientKeyPath = directory.appending("client_ed25519")
        rsaClientKeyPath = directory.appending("client_rsa")
        unauthorizedClientKeyPath = directory.appending("stranger_ed25519")
        try Self.keygen(["-t", "ed25519", "-f", hostKey])
        try Self.keygen(["-t", "ed25519", "-f", clientKeyPath])
        try Self.keygen(["-t", "rsa", "-b", "2048", "-f", rsaClientKeyPath])
        try Self.keygen(["-t", "ed25519", "-f", unauthorizedClientKeyPath])
        let authorized = try String(contentsOfFile: clientKeyPath + ".pub", encoding: .utf8)
            + String(contentsOfFile: rsaClientKeyPath + ".pub", encoding: .utf8)
        try authorized.write(toFile: directory.appending("authorized_keys"), atomically: true, encoding: .utf8)
        let publicLine = try String(contentsOfFile: hostKey + ".pub", encoding: .utf8).split(separator: " ")
        hostPublicKey = publicLine.prefix(2).joined(separator: " ")
        let fingerprintPath = directory.appending("fingerprint")
        try Self.run("/usr/bin/ssh-keygen", ["-lf", hostKey + ".pub"], output: fingerprintPath)
        let fingerprintLine = (try? String(contentsOfFile: fingerprintPath, encoding: .utf8)) ?? ""
        guard let field = fingerprintLine.split(separator: " ").first(where: { $0.hasPrefix("SHA256:") }) else {
            throw SSHDServerError("ssh-keygen -lf printed no SHA256 fingerprint: \(fingerprintLine)")
        }
        hostKeyFingerprintSHA256 = String(field.dropFirst("SHA256:".count))

        var lastFailure = "no port tried"
        let start = Int.random(in: 0..<100)
        for attempt in 0..<100 {
            let port = 2200 + (start + attempt) % 100
            guard Self.portIsFree(port) else { continue }
            let config = ([
                "Port \(port)",
                "ListenAddress 127.0.0.1",
                "HostKey \(hostKey)",
                "PidFile \(directory.appending("sshd-\(port).pid"))",
                "AuthorizedKeysFile \(directory.appending("authorized_keys"))",
                "UsePAM no",
                "StrictModes no",
                "PermitRootLogin yes",
                "PasswordAuthentication yes",
                "KbdInteractiveAuthentication no",
                "MaxStartups 100",
                "Subsystem sftp internal-sftp" + (sftpArguments.isEmpty ? "" : " " + sftpArguments.joined(separator: " ")),
            ] + extraConfig).joined(separator: "\n") + "\n"
            let configPath = directory.appending("sshd_config")
            try config.write(toFile: configPath, atomically: true, encoding: .utf8)
            _ = FileManager.default.createFile(atPath: logPath, contents: nil)
            let child = try Self.spawn("/usr/sbin/sshd", ["-f", configPath, "-D", "-e"], output: logPath)
            // sshd announces a successful bind; an exit instead means the port was taken meanwhile.
            let deadline = Date().addingTimeInterval(10)
            var listening = false
            var exited = false
            while Date() < deadline {
                let log = (try? String(contentsOfFile: logPath, encoding: .utf8)) ?? ""
                if log.contains("Server listening on 127.0.0.1 port \(port)") { listening = true; break }
                var status: Int32 = 0
                if waitpid(child, &status, WNOHANG) == child { exited = true; break }
                usleep(10_000)
            }
            if listening {
                self.port = port
                self.pid = child
                self.running = Mutex(true)
                return
            }
            lastFailure = (try? String(contentsOfFile: logPath, encoding: .utf8)) ?? "no log"
            if !exited { Self.terminate(child) }
        }
        throw SSHDServerError("could not start sshd on any port 2200-2299; last log: \(lastFailure)")
    }

    deinit { stop() }

    /// A known_hosts line for this server.
    public var knownHostsLine: String { "[\(host)]:\(port) \(hostPublicKey)" }

    /// Process ids of all per-connection sshd processes (every descendant of the listener).
    public func sessionProcessIDs() -> [pid_t] {
        var children: [pid_t: [pid_t]] = [:]
        let entries = (try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? []
        for entry in entries {
            guard let child = pid_t(entry),
                  let stat = try? String(contentsOfFile: "/proc/\(entry)/stat", encoding: .utf8),
                  let close = stat.lastIndex(of: ")") else { continue }
            // Fields after "comm)": state ppid ...
            let fields = stat[stat.index(after: close)...].split(separator: " ")
            if fields.count > 1, let parent = pid_t(fields[1]) { children[parent, default: []].append(child) }
        }
        var result: [pid_t] = []
        var queue = children[pid] ?? []
        while let next = queue.popLast() {
            result.append(next)
            queue.append(contentsOf: children[next] ?? [])
        }
        return result
    }

    /// Sends `signal` to every per-connection sshd process: SIGKILL drops connections, SIGSTOP freezes them
    /// (the listener keeps running). Returns how many processes were signalled.
    @discardableResult
    public func signalSessions(_ signal: Int32) -> Int {
        let pids = sessionProcessIDs()
        for child in pids { kill(child, signal) }
        return pids.count
    }

    /// Kills the sshd processes of one connection (the listener's child for it and everything below), the newest
    /// when `newest` (else the oldest): one of several connections drops while the others go on. Returns how many
    /// processes were killed (0 when there is no connection).
    @discardableResult
    public func killConnection(newest: Bool = true) -> Int {
        var children: [pid_t: [pid_t]] = [:]
        var started: [pid_t: UInt64] = [:]
        for entry in (try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? [] {
            guard let child = pid_t(entry),
                  let stat = try? String(contentsOfFile: "/proc/\(entry)/stat", encoding: .utf8),
                  let close = stat.lastIndex(of: ")") else { continue }
            // Fields after "comm)": state(3) ppid(4) ... starttime(22), so ppid is [1] and starttime [19].
            let fields = stat[stat.index(after: close)...].split(separator: " ")
            if fields.count > 19, let parent = pid_t(fields[1]) {
                children[parent, default: []].append(child)
                started[child] = UInt64(fields[19])
            }
        }
        let connections = (children[pid] ?? []).sorted { (started[$0] ?? 0, $0) < (started[$1] ?? 0, $1) }
        guard let victim = newest ? connections.last : connections.first else { return 0 }
        var doomed: [pid_t] = []
        var queue = [victim]
        while let next = queue.popLast() {
            doomed.append(next)
            queue.append(contentsOf: children[next] ?? [])
        }
        for process in doomed { kill(process, SIGKILL) }
        return doomed.count
    }

    /// Kills every connection's sshd processes (the "network dropped" case).
    @discardableResult
    public func killSessions() -> Int { signalSessions(SIGKILL) }

    /// Kills all sessions and the listener; idempotent.
    public func stop() {
        let wasRunning = running.withLock { value -> Bool in
            defer { value = false }
            return value
        }
        guard wasRunning else { return }
        killSessions()
        Self.terminate(pid)
    }

    private static func keygen(_ arguments: [String]) throws {
        try run("/usr/bin/ssh-keygen", ["-q", "-N", "", "-C", "fleetkeep-test"] + arguments, output: nil)
    }

    /// Runs a program to completion; its stdout and stderr go to `output` (or /dev/null).
    private static func run(_ path: String, _ arguments: [String], output: String?) throws {
        let child = try spawn(path, arguments, output: output ?? "/dev/null")
        var status: Int32 = 0
        while waitpid(child, &status, 0) < 0 {
            guard errno == EINTR else { throw SSHDServerError("waitpid for \(path) failed: errno \(errno)") }
        }
        // Normal exit with status 0: low 7 bits (signal) zero and exit code byte zero.
        guard status & 0x7f == 0, (status >> 8) & 0xff == 0 else {
            throw SSHDServerError("\(path) \(arguments.joined(separator: " ")) failed with wait status \(status)")
        }
    }

    /// SIGTERM, then SIGKILL after 5 s, and reap.
    private static func terminate(_ child: pid_t) {
        kill(child, SIGTERM)
        var status: Int32 = 0
        for _ in 0..<500 {
            if waitpid(child, &status, WNOHANG) != 0 { return }
            usleep(10_000)
        }
        kill(child, SIGKILL)
        _ = waitpid(child, &status, 0)
    }

    private typealias CloseFrom = @convention(c) (UnsafeMutablePointer<posix_spawn_file_actions_t>, Int32) -> Int32

    /// posix_spawn with stdin from /dev/null, stdout+stderr appended to `output`, and no other inherited fds
    /// (a long-lived sshd must not keep other tests' pipes open).
    private static func spawn(_ path: String, _ arguments: [String], output: String) throws -> pid_t {
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        posix_spawn_file_actions_addopen(&actions, 1, output, O_WRONLY | O_CREAT | O_APPEND, 0o600)
        posix_spawn_file_actions_adddup2(&actions, 1, 2)
        // Not imported by the Glibc module (needs _GNU_SOURCE); glibc >= 2.34 has it.
        if let symbol = dlsym(UnsafeMutableRawPointer(bitPattern: 0), "posix_spawn_file_actions_addclosefrom_np") {
            _ = unsafeBitCast(symbol, to: CloseFrom.self)(&actions, 3)
        }
        let argv = ([path] + arguments).map { strdup($0) } + [nil]
        defer { for pointer in argv { free(pointer) } }
        var child: pid_t = 0
        let rc = posix_spawn(&child, path, &actions, nil, argv, environ)
        guard rc == 0 else { throw SSHDServerError("posix_spawn \(path) failed: \(String(cString: strerror(rc)))") }
        return child
    }

    private static func portIsFree(_ port: Int) -> Bool {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { return false }
        defer { close(fd) }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = in_port_t(UInt16(port).bigEndian)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        return withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) == 0 }
        }
    }
}

/// Failure to set up the test sshd.
public struct SSHDServerError: Error, CustomStringConvertible, Sendable {
    public let description: String
    public init(_ description: String) { self.description = description }
}
