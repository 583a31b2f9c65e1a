import BackupEngine
import FleetkeepProtocol
import Foundation

/// The agent's backup configuration, read from `/etc/fleetkeep/agent.conf` (or `--config`). Command-line flags
/// override it. The format is `key = value` lines under optional `[section]` headers; `#` starts a comment.
/// Unknown sections or keys, and bad values, are errors that name the file and line.
public struct AgentConfig: Sendable {
    public static let defaultPath = "/etc/fleetkeep/agent.conf"

    public var root = "/"
    public var repository = "/var/backups/fleetkeep"
    public var keyFile = "/etc/fleetkeep/repository.key"
    public var host = ProcessInfo.processInfo.hostName
    public var database = DatabaseSettings()
    /// Accounts for servers without a control panel: user -> home directory.
    public var accounts: [String: String] = [:]
    public var retention: [BackupKind: RetentionPolicy] = [
        .files: RetentionPolicy(keepDaily: 30), .databases: RetentionPolicy(keepDaily: 30), .email: RetentionPolicy(keepDaily: 1),
    ]
    public var offsite = OffsiteSettings()
    /// `telemetry = off|local|on`: caps the mode chosen with `fleetkeep-agent telemetry` (off wins over everything).
    public var telemetry: TelemetryMode?

    /// How to reach MariaDB/MySQL for dumps.
    public struct DatabaseSettings: Sendable {
        public var socket: String?
        public var host: String?
        public var port: Int?
        public var user = "root"
        public var passwordFile: String?
        public var dumpCommand = "mariadb-dump"
        public var clientCommand = "mariadb"
        /// Set to false on servers without databases.
        public var enabled = true
    }

    /// Where and how the weekly off-site copy goes.
    public struct OffsiteSettings: Sendable {
        public var target: String?
        public var hostKey: String?
        public var knownHosts: String?
        public var identity: String?
        public var passwordFile: String?
        public var keepWeekly = 4
        public var kinds: [BackupKind] = [.files, .databases]
        /// SSH connections a push uploads over (`connections` in [offsite], `--connections`).
        public var connections = OffsiteSettings.defaultConnections

        /// Four: on two cores the encryption of two sessions keeps both busy, and the other two upload while those
        /// wait for the remote's disk to flush a group of packs. More only adds handshakes and server processes.
        public static let defaultConnections = 4
        public static let connectionRange = 1...8

        /// Parses a connection count; the message names the value and the allowed range.
        public static func parseConnections(_ text: String, source: String) throws -> Int {
            guard let number = Int(text), connectionRange.contains(number) else {
                throw AgentError("\(source) must be a whole number from \(connectionRange.lowerBound) to \(connectionRange.upperBound), got '\(text)'")
            }
            return number
        }
    }

    public init() {}

    /// Loads `path`; a missing file at the default path means "all defaults", a missing explicit file is an error.
    public static func load(path: String?) throws -> AgentConfig {
        let file = path ?? defaultPath
        guard FileManager.default.fileExists(atPath: file) else {
            if path == nil { return AgentConfig() }
            throw AgentError("config file \(file) does not exist")
        }
        guard let data = FileManager.default.contents(atPath: file), let text = String(data: data, encoding: .utf8) else {
            throw AgentError("config file \(file) is unreadable or not UTF-8")
        }
        return try parse(text, file: file)
    }

    public static func parse(_ text: String, file: String) throws -> AgentConfig {
        var config = AgentConfig()
        var section = ""
        for (number, rawLine) in text.split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
            let location = "\(file):\(number + 1)"
            let line = rawLine.split(separator: "#", maxSplits: 1, omittingEmptySubsequences: false).first.map(String.init)?
                .trimmingCharacters(in: .whitespaces) ?? ""
            if line.isEmpty { continue }
            if line.hasPrefix("[") {
                guard line.hasSuffix("]") else { throw AgentError("\(location): section header must look like [name]") }
                section = String(line.dropFirst().dropLast()).trimmingCharacters(in: .whitespaces)
                guard ["", "database", "accounts", "offsite", "retention.files", "retention.databases", "retention.email"].contains(section) else {
                    throw AgentError("\(location): unknown section [\(section)]")
                }
                continue
            }
            guard let equals = line.firstIndex(of: "=") else { throw AgentError("\(location): expected `key = value`") }
            let key = line[..<equals].trimmingCharacters(in: .whitespaces)
            let value = line[line.index(after: equals)...].trimmingCharacters(in: .whitespaces)
            func wholeNumber() throws -> Int {
                guard let n = Int(value), n >= 0 else { throw AgentError("\(location): \(key) must be a whole number, got '\(value)'") }
                return n
            }
            func absolutePath() throws -> String {
                guard value.hasPrefix("/") else { throw AgentError("\(location): \(key) must be an absolute path, got '\(value)'") }
                return value
            }
            switch (section, key) {
            case ("", "root"): config.root = try absolutePath()
            case ("", "repository"): config.repository = try absolutePath()
            case ("", "key-file"): config.keyFile = try absolutePath()
            case ("", "host"): config.host = value
            case ("", "telemetry"):
                guard let mode = TelemetryMode(rawValue: value) else { throw AgentError("\(location): telemetry must be off, local or on, got '\(value)'") }
                config.telemetry = mode
            case ("database", "socket"): config.database.socket = try absolutePath()
            case ("database", "host"): config.database.host = value
            case ("database", "port"): config.database.port = try wholeNumber()
            case ("database", "user"): config.database.user = value
            case ("database", "password-file"): config.database.passwordFile = try absolutePath()
            case ("database", "dump-command"): config.database.dumpCommand = value
            case ("database", "client-command"): config.database.clientCommand = value
            case ("database", "enabled"):
                guard ["yes", "no", "true", "false"].contains(value) else { throw AgentError("\(location): enabled must be yes or no") }
                config.database.enabled = value == "yes" || value == "true"
            case ("accounts", _):
                try HostingAccounts.validateName(key, source: location)
                config.accounts[key] = try absolutePath()
            case ("offsite", "target"): config.offsite.target = value
            case ("offsite", "host-key"): config.offsite.hostKey = value
            case ("offsite", "known-hosts"): config.offsite.knownHosts = try absolutePath()
            case ("offsite", "identity"): config.offsite.identity = try absolutePath()
            case ("offsite", "password-file"): config.offsite.passwordFile = try absolutePath()
            case ("offsite", "keep-weekly"): config.offsite.keepWeekly = try wholeNumber()
            case ("offsite", "kinds"): config.offsite.kinds = try BackupKind.parseList(value, source: location)
            case ("offsite", "connections"): config.offsite.connections = try OffsiteSettings.parseConnections(value, source: "\(location): connections")
            case (let retention, _) where retention.hasPrefix("retention."):
                let kind = BackupKind(rawValue: String(retention.dropFirst("retention.".count)))!
                var policy = config.retention[kind] ?? RetentionPolicy()
                switch key {
                case "keep-last": policy.keepLast = try wholeNumber()
                case "keep-daily": policy.keepDaily = try wholeNumber()
                case "keep-weekly": policy.keepWeekly = try wholeNumber()
                case "keep-monthly": policy.keepMonthly = try wholeNumber()
                default: throw AgentError("\(location): unknown key '\(key)' in [\(section)] (known: keep-last, keep-daily, keep-weekly, keep-monthly)")
                }
                config.retention[kind] = policy
            default:
                throw AgentError("\(location): unknown key '\(key)'\(section.isEmpty ? "" : " in [\(section)]")")
            }
        }
        return config
    }
}

/// The three kinds of data each hosting account has.
public enum BackupKind: String, Sendable, CaseIterable, Codable {
    /// The home directory without mail.
    case files
    /// Each MySQL/MariaDB database of the account.
    case databases
    /// The mail directory.
    case email

    public static func parseList(_ text: String, source: String) throws -> [BackupKind] {
        let names = text.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty }
        // An empty list would back up nothing and still succeed.
        guard !names.isEmpty else {
            throw AgentError("\(source): no kind given (use files, databases, email, or a comma-separated list of them)")
        }
        return try names.map { name in
            guard let kind = BackupKind(rawValue: name) else {
                throw AgentError("\(source): unknown kind '\(name)' (use files, databases, email)")
            }
            return kind
        }
    }
}
