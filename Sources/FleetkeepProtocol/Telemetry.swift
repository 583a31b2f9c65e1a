import Foundation
import Scheduling

/// Body of `POST /v1/telemetry`: product-improvement counters, sent only by an agent in mode `on` whose customer
/// consented on the controller. The controller refuses any counter its data inventory does not declare.
public struct TelemetryUpload: Codable, Sendable, StrictlyDecoded, Equatable {
    public static let fieldNames = storedPropertyNames(of: TelemetryUpload(from: 0, to: 0, counters: [:]))
    public static let currentSchema = 1
    public var schema: Int
    /// Unix seconds of the first and last counted event in this upload (agent clock).
    public var from: Int64
    public var to: Int64
    /// Counter name (`backup.runs`, `backup.seconds`, ...) to its sum over [from, to].
    public var counters: [String: Int64]

    public init(schema: Int = currentSchema, from: Int64, to: Int64, counters: [String: Int64]) {
        self.schema = schema
        self.from = from
        self.to = to
        self.counters = counters
    }

    /// The exact bytes of the upload: sorted keys, so `fleetkeep-agent telemetry preview` shows what will be sent.
    public func encoded() throws -> [UInt8] {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        return Array(try encoder.encode(self))
    }

    /// The counters an agent keeps per job kind: runs, failures, seconds spent and bytes added.
    public static func counterNames(for kind: JobKind) -> [String] {
        ["runs", "failures", "seconds", "bytes"].map { "\(kind.rawValue).\($0)" }
    }
}

/// Answer to a stored upload.
public struct TelemetryReceipt: Codable, Sendable {
    public var recordID: Int64
    public var counters: Int
    public init(recordID: Int64, counters: Int) {
        self.recordID = recordID
        self.counters = counters
    }
}

/// The agent's telemetry mode, as in Go's telemetry: `off` collects nothing, `local` (the default) keeps counters on
/// the server only, `on` may upload them once the customer has consented on the controller.
public enum TelemetryMode: String, Codable, Sendable, CaseIterable, Comparable {
    case off, local, on

    public static func < (lhs: TelemetryMode, rhs: TelemetryMode) -> Bool {
        allCases.firstIndex(of: lhs)! < allCases.firstIndex(of: rhs)!
    }
}

extension APIPath {
    public static let telemetry = "/v1/telemetry"
}
