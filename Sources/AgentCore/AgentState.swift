import Crypto
import FleetkeepProtocol
import Foundation
import Posix

/// Where the agent keeps its identity and enrollment: a directory (0700) of files (0600).
public struct AgentState: Sendable {
    public static let defaultDirectory = "/var/lib/fleetkeep"

    /// What the agent learned when it enrolled.
    public struct Enrollment: Codable, Sendable {
        public var agentID: String
        public var controllerURL: String
        public var certificatePin: String
        public var enrolledAt: Date
        public var heartbeatIntervalSeconds: Int
        /// The controller's Ed25519 lease-signing key (base64url), pinned at enrollment (or at the first activation
        /// of an agent enrolled before keys were handed out), over the pinned TLS connection.
        public var controllerSigningKey: String?
    }

    /// The latest heartbeat outcome, for `fleetkeep-agent status`.
    public struct Status: Codable, Sendable {
        public var lastAttemptAt: Date?
        public var lastSuccessAt: Date?
        public var lastError: String?
        public var licence: LicenceStatus?
        /// What the controller's last heartbeat answer said about the customer's consent to improvement telemetry.
        public var telemetryConsent: Bool?
    }

    public let directory: String
    public init(directory: String) { self.directory = directory }

    var keyPath: String { directory + "/agent.key" }
    var enrollmentPath: String { directory + "/enrollment.json" }
    var statusPath: String { directory + "/status.json" }

    public var isEnrolled: Bool { FileManager.default.fileExists(atPath: enrollmentPath) }

    /// Creates the directory with mode 0700 (tightening an existing one).
    func prepareDirectory() throws {
        do throws(Errno) {
            try Directory.createPrivate(directory)
        } catch {
            throw AgentError("cannot create state directory \(directory): \(error); pass --state DIR to use another")
        }
    }

    func saveKey(_ key: Ed25519PrivateKey) throws {
        try PrivateFile.write(keyPath, Array(Base64URL.encode(key.rawRepresentation).utf8))
    }

    public func loadKey() throws -> Ed25519PrivateKey {
        let text = try readText(keyPath)
        guard let raw = Base64URL.decode(text.trimmingCharacters(in: .whitespacesAndNewlines)),
              let key = try? Ed25519PrivateKey(rawRepresentation: raw) else {
            throw AgentError("agent key \(keyPath) is damaged; the agent must be enrolled again (`fleetkeep-agent enroll TOKEN --state \(directory)` into an empty directory)")
        }
        return key
    }

    public func save(_ enrollment: Enrollment) throws { try PrivateFile.write(enrollmentPath, try Self.encode(enrollment)) }

    public func loadEnrollment() throws -> Enrollment {
        guard isEnrolled else {
            throw AgentError("this agent is not enrolled (no \(enrollmentPath)); run `fleetkeep-agent enroll TOKEN --state \(directory)`")
        }
        return try decode(Enrollment.self, enrollmentPath)
    }

    func save(_ status: Status) throws { try PrivateFile.write(statusPath, try Self.encode(status)) }

    public func loadStatus() throws -> Status {
        guard FileManager.default.fileExists(atPath: statusPath) else { return Status() }
        return try decode(Status.self, statusPath)
    }

    private func readText(_ path: String) throws -> String {
        guard let data = FileManager.default.contents(atPath: path) else {
            throw AgentError("cannot read \(path) (missing or no permission); check the --state directory")
        }
        return String(decoding: data, as: UTF8.self)
    }

    private func decode<T: Decodable>(_ type: T.Type, _ path: String) throws -> T {
        let text = try readText(path)
        let decoder = JSONDecoder()
        decoder.dateDecodingStrategy = .iso8601
        do {
            return try decoder.decode(type, from: Data(text.utf8))
        } catch {
            throw AgentError("state file \(path) is damaged (not the JSON the agent wrote); restore it from a backup or enroll again into an empty --state directory")
        }
    }

    static func encode<T: Encodable>(_ value: T) throws -> [UInt8] {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
        encoder.dateEncodingStrategy = .iso8601
        return Array(try encoder.encode(value))
    }
}

/// An agent-side failure with a message that names the input and the next step.
public struct AgentError: Error, CustomStringConvertible, Sendable {
    public let message: String
    public init(_ message: String) { self.message = message }
    public var description: String { message }
}

/// Atomic, durable writes of private files: mode 0600, the whole new content or the old one, even after a crash.
public enum PrivateFile {
    public static func write(_ path: String, _ contents: [UInt8]) throws {
        do throws(Errno) {
            try AtomicFile.write(contents, to: path, permissions: 0o600, durable: true)
        } catch {
            throw AgentError("cannot write \(path): \(error.operation) failed: \(error.text)")
        }
    }
}
