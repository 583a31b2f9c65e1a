import Scheduling

/// What a job needs beyond its kind. Every field is optional; the kind says which ones it reads.
public struct JobParameters: Codable, Sendable, Equatable {
    /// backup, restore: one hosting account (all when nil).
    public var account: String?
    /// restore: a snapshot id, or nil for the latest.
    public var snapshot: String?
    /// backup: files, databases, email (all when nil).
    public var kinds: [String]?
    /// verify: read the packs of part `verifyPart` of `verifyParts` (all packs when nil).
    public var verifyPart: Int?
    public var verifyParts: Int?
    /// restore: a drill (test restore into a scratch directory, compared with the snapshot); `drillIndex` picks the
    /// account in rotation.
    public var drill: Bool?
    public var drillIndex: Int?
    /// prune and offsite-push: how long to keep.
    public var retention: RetentionSettings?

    public init(account: String? = nil, snapshot: String? = nil, kinds: [String]? = nil, verifyPart: Int? = nil, verifyParts: Int? = nil,
                drill: Bool? = nil, drillIndex: Int? = nil, retention: RetentionSettings? = nil) {
        self.account = account
        self.snapshot = snapshot
        self.kinds = kinds
        self.verifyPart = verifyPart
        self.verifyParts = verifyParts
        self.drill = drill
        self.drillIndex = drillIndex
        self.retention = retention
    }
}

/// A job handed to an agent by `POST /v1/jobs/poll`.
public struct JobAssignment: Codable, Sendable, Equatable {
    public var id: Int64
    public var kind: JobKind
    public var parameters: JobParameters
    public var timeoutSeconds: Int64
    public var attempt: Int
    public init(id: Int64, kind: JobKind, parameters: JobParameters, timeoutSeconds: Int64, attempt: Int) {
        self.id = id
        self.kind = kind
        self.parameters = parameters
        self.timeoutSeconds = timeoutSeconds
        self.attempt = attempt
    }
}

/// Body of `POST /v1/jobs/poll`: the jobs the agent holds (accepted, result not yet delivered) and how long it is
/// willing to wait for new work.
public struct JobPollRequest: Codable, Sendable, StrictlyDecoded {
    enum CodingKeys: String, CodingKey, CaseIterable { case holding, waitSeconds, timeZone }
    public static let fieldNames = Set(CodingKeys.allCases.map(\.stringValue))
    public var holding: [Int64]
    public var waitSeconds: Int
    /// The server's time zone (IANA name): windows are server-local.
    public var timeZone: String?
    public init(holding: [Int64], waitSeconds: Int, timeZone: String?) {
        self.holding = holding
        self.waitSeconds = waitSeconds
        self.timeZone = timeZone
    }
}

/// Answer to a poll: new jobs (possibly empty after the wait), jobs to cancel, and the agent's effective policy, so
/// it can run its schedule itself while the controller is unreachable.
public struct JobPollResponse: Codable, Sendable {
    public var jobs: [JobAssignment]
    public var cancel: [Int64]
    public var policy: SchedulePolicy
    public init(jobs: [JobAssignment], cancel: [Int64], policy: SchedulePolicy) {
        self.jobs = jobs
        self.cancel = cancel
        self.policy = policy
    }
}

/// Body of `POST /v1/jobs/progress`.
public struct JobProgressRequest: Codable, Sendable, StrictlyDecoded {
    enum CodingKeys: String, CodingKey, CaseIterable { case jobID, bytes, files, percent }
    public static let fieldNames = Set(CodingKeys.allCases.map(\.stringValue))
    public var jobID: Int64
    public var bytes: Int64
    public var files: Int64
    /// 0...100 when the agent knows the total.
    public var percent: Double?
    public init(jobID: Int64, bytes: Int64, files: Int64, percent: Double?) {
        self.jobID = jobID
        self.bytes = bytes
        self.files = files
        self.percent = percent
    }
}

public struct JobProgressResponse: Codable, Sendable {
    /// True when an operator cancelled the job: the agent stops it.
    public var cancel: Bool
    public init(cancel: Bool) { self.cancel = cancel }
}

/// Body of `POST /v1/jobs/result`: the end of a job the controller assigned (`jobID`), or of one the agent ran on its
/// own from its last known schedule while the controller was unreachable (`localID`, with the task and slot).
public struct JobResultRequest: Codable, Sendable, StrictlyDecoded, Equatable {
    enum CodingKeys: String, CodingKey, CaseIterable {
        case jobID, localID, kind, task, slot, succeeded, error, snapshots, bytesAdded, files, startedAt, finishedAt, items, repositoryBytes
    }
    public static let fieldNames = Set(CodingKeys.allCases.map(\.stringValue))
    public var jobID: Int64?
    public var localID: String?
    public var kind: JobKind
    public var task: ScheduledTask?
    /// Unix seconds of the scheduled run this job was for.
    public var slot: Int64?
    public var succeeded: Bool
    public var error: String?
    public var snapshots: [String]
    public var bytesAdded: Int64
    public var files: Int64
    /// Unix seconds, agent clock.
    public var startedAt: Int64
    public var finishedAt: Int64
    /// backup: the outcome of each account and kind the run backed up, so the controller knows which ones are
    /// overdue. A run of every account and kind lists every one the server has.
    public var items: [BackupItemReport]?
    /// backup: the local repository's size on disk after the run, for the controller's 30-day chart.
    public var repositoryBytes: Int64?

    public init(jobID: Int64?, localID: String?, kind: JobKind, task: ScheduledTask?, slot: Int64?, succeeded: Bool, error: String?,
                snapshots: [String], bytesAdded: Int64, files: Int64, startedAt: Int64, finishedAt: Int64, items: [BackupItemReport]? = nil,
                repositoryBytes: Int64? = nil) {
        self.jobID = jobID
        self.localID = localID
        self.kind = kind
        self.task = task
        self.slot = slot
        self.succeeded = succeeded
        self.error = error
        self.snapshots = snapshots
        self.bytesAdded = bytesAdded
        self.files = files
        self.startedAt = startedAt
        self.finishedAt = finishedAt
        self.items = items
        self.repositoryBytes = repositoryBytes
    }
}

/// One account and kind of a backup run: backed up (`succeeded`), or the reason it was not.
public struct BackupItemReport: Codable, Sendable, Equatable {
    public var account: String
    /// `files`, `databases` or `email`.
    public var kind: String
    public var succeeded: Bool
    public var error: String?
    /// The snapshot this item was saved in, so a restore of the account can be offered from it.
    public var snapshot: String?

    public init(account: String, kind: String, succeeded: Bool, error: String? = nil, snapshot: String? = nil) {
        self.account = account
        self.kind = kind
        self.succeeded = succeeded
        self.error = error
        self.snapshot = snapshot
    }

    public static let kinds: Set<String> = ["files", "databases", "email"]

    /// Why this item cannot be stored, or nil: an account name of 1 to 128 bytes without control characters or '/',
    /// a known kind, and an error of at most `JobLimits.longestItemError` bytes.
    public var violation: String? {
        guard (1...JobLimits.longestAccount).contains(account.utf8.count),
              !account.unicodeScalars.contains(where: { $0.properties.generalCategory == .control || $0 == "/" }) else {
            return "items: account names are 1 to \(JobLimits.longestAccount) bytes without control characters or '/'"
        }
        guard Self.kinds.contains(kind) else { return "items: kind must be files, databases or email" }
        guard (error?.utf8.count ?? 0) <= JobLimits.longestItemError else { return "items: an error is at most \(JobLimits.longestItemError) bytes" }
        if let snapshot, !(1...128).contains(snapshot.utf8.count) || !snapshot.utf8.allSatisfy({ (48...57).contains($0) || (97...102).contains($0) }) {
            return "items: a snapshot id is 1 to 128 lowercase hex digits"
        }
        return nil
    }
}

/// Answer to a result: `recorded`, or `duplicate` when this result was recorded before (a retry after a lost answer).
/// Either way the result is on the controller's disk and the agent may drop its copy.
public struct JobResultResponse: Codable, Sendable {
    public var status: String
    public init(status: String) { self.status = status }
}

extension APIPath {
    public static let jobsPoll = "/v1/jobs/poll"
    public static let jobsProgress = "/v1/jobs/progress"
    public static let jobsResult = "/v1/jobs/result"
}

/// Limits both sides apply to job messages.
public enum JobLimits {
    /// The longest a poll is held open; agents wait a little longer for the answer.
    public static let longestPollWait = 25
    public static let longestError = 2048
    public static let mostSnapshots = 10_000
    public static let longestLocalID = 64
    public static let mostHeld = 64
    /// Accounts × kinds in one backup result.
    public static let mostItems = 10_000
    public static let longestAccount = 128
    public static let longestItemError = 512
    /// The largest result body the controller reads (a large server's items and snapshot ids).
    public static let largestResultBody = 1 << 20
}
