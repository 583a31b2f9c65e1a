import FleetkeepProtocol
import Scheduling

/// The rules for a job an operator starts (`job run`, the dashboard's buttons): what an account name and a
/// snapshot id may be, and the parameters each kind carries.
public enum OnDemandJob {
    /// Why a value was refused; the caller names the option or form field.
    public struct Invalid: Error, Sendable, CustomStringConvertible {
        public let description: String
    }

    /// A hosting account name: 1 to 64 ASCII letters, digits, '-', '_' or '.'.
    public static func account(_ text: String) throws -> String {
        guard (1...64).contains(text.utf8.count), text.allSatisfy({ $0.isASCII && ($0.isLetter || $0.isNumber || "-_.".contains($0)) }) else {
            throw Invalid(description: "'\(text.prefix(64))' is not a hosting account name")
        }
        return text
    }

    /// A snapshot id (hex), or nil for `latest`.
    public static func snapshot(_ text: String) throws -> String? {
        guard (1...128).contains(text.utf8.count), text.allSatisfy({ $0.isHexDigit }) || text == "latest" else {
            throw Invalid(description: "'\(text.prefix(64))' must be a snapshot id (hex) or `latest`")
        }
        return text == "latest" ? nil : text
    }

    /// The parameters of a `kind` job: prune and off-site push carry the agent's retention; verify reads every pack.
    public static func parameters(kind: JobKind, account: String?, snapshot: String?, kinds: [String], policy: SchedulePolicy) throws -> JobParameters {
        var parameters = JobParameters(account: account, snapshot: snapshot, kinds: kinds.isEmpty ? nil : kinds)
        if kind == .restore && account == nil { throw Invalid(description: "a restore job needs an account") }
        if kind == .prune || kind == .offsitePush { parameters.retention = policy.retention }
        if kind == .verify { parameters.verifyParts = nil }
        return parameters
    }
}
