import BackupEngine
import CLinux
import FleetkeepProtocol
import Foundation
import Posix
import Scheduling
import Synchronization

/// What a job's child process needs from its parent.
public enum JobChild {
    /// Set in a job's child: the parent's pid. The child asks the kernel to kill it when the parent dies, so a
    /// killed agent never leaves a backup running that nobody will report.
    public static let parentVariable = "FLEETKEEP_JOB_PARENT"
    /// Set in a backup job's child: where it writes "files bytes" progress for the parent to report.
    public static let progressFileVariable = "FLEETKEEP_PROGRESS_FILE"

    /// Call first thing in `main`.
    public static func bindToParentIfJob() {
        guard let text = ProcessInfo.processInfo.environment[parentVariable], let parent = Int32(text) else { return }
        // The daemon blocks SIGTERM for its own sigwait, and a spawned child inherits that mask: without this a
        // cancelled job would not stop.
        var signals = sigset_t()
        sigemptyset(&signals)
        sigaddset(&signals, SIGINT)
        sigaddset(&signals, SIGTERM)
        pthread_sigmask(SIG_UNBLOCK, &signals, nil)
        _ = fleetkeep_set_parent_death_signal(SIGKILL)
        // The parent may have died before the call above: then nobody would ever send the signal.
        if getppid() != parent { exit(1) }
    }

    static func progressWriter(path: String) -> @Sendable (BackupSummary) -> Void {
        let last = Mutex<Date>(.distantPast)
        return { summary in
            let now = Date()
            guard last.withLock({ previous in
                guard now.timeIntervalSince(previous) >= 1 else { return false }
                previous = now
                return true
            }) else { return }
            let files = summary.filesNew + summary.filesChanged + summary.filesUnchanged
            try? PrivateFile.write(path, Array("\(files) \(summary.bytesRead)\n".utf8))
        }
    }
}

/// The agent's side of jobs: a long poll for work, each job run as a child `fleetkeep-agent` command, progress and
/// results reported, results spooled on disk (0600) until the controller has acknowledged them, and the last known
/// schedule run locally while the controller cannot be reached.
///
/// On disk, in `STATE/jobs`: `held-ID.json` for each accepted job until it ends (a job id is never run twice),
/// `result-NAME.json` for each result until the controller acknowledged it, `policy.json` (the last schedule) and
/// `offline.json` (the last scheduled run considered while offline).
public final class JobAgent: Sendable {
    let state: AgentState
    let agentID: String
    let executable: String
    let configPath: String?
    /// How long the controller must have been unreachable before the agent runs its schedule itself.
    let offlineGrace: Double
    let log: @Sendable (String) -> Void
    let pollConnection: ControllerConnection
    let reportConnection: ControllerConnection
    private let running = Mutex<[Int64: RunningJob]>([:])
    private let lastContact = Mutex<Date>(Date())
    /// At most this many results wait on disk; the oldest are dropped beyond it (with a log line).
    static let spoolLimit = 1000
    static let pollWait = 15

    final class RunningJob: Sendable {
        let process: Process
        init(process: Process) { self.process = process }
    }

    public init(state: AgentState, configPath: String?, offlineGrace: Double, log: @escaping @Sendable (String) -> Void) throws {
        self.state = state
        agentID = try state.loadEnrollment().agentID
        executable = URL(fileURLWithPath: "/proc/self/exe").resolvingSymlinksInPath().path
        self.configPath = configPath
        self.offlineGrace = offlineGrace
        self.log = log
        pollConnection = try Enrollment.connection(state: state)
        reportConnection = try Enrollment.connection(state: state)
        // The job records are how an interrupted job is reported after a restart: the directory must survive a
        // power cut like the records in it.
        do throws(Errno) {
            try Directory.createPrivate(directory)
        } catch {
            throw AgentError("cannot create the job directory \(directory): \(error)")
        }
    }

    var directory: String { state.directory + "/jobs" }

    /// Starts the poll loop on its own thread.
    public func start() {
        recoverInterrupted()
        Thread.detachNewThread { [self] in loop() }
    }

    /// Jobs accepted before a crash or kill of the agent have no process now: each gets a failed result, so the
    /// controller retries it.
    func recoverInterrupted() {
        for name in files(prefix: "held-") {
            guard let job = read(JobAssignment.self, name) else { continue }
            log("job \(job.id) (\(job.kind.rawValue)) was interrupted by an agent restart; reporting it failed")
            spool(JobResultRequest(jobID: job.id, localID: nil, kind: job.kind, task: nil, slot: nil, succeeded: false,
                                   error: "interrupted: the agent stopped while the job ran", snapshots: [], bytesAdded: 0, files: 0,
                                   startedAt: now(), finishedAt: now()), name: "job-\(job.id)")
            unlink(directory + "/" + name)
        }
    }

    private func loop() {
        var failures = 0
        while true {
            deliverSpooled()
            do {
                let holding = heldIDs()
                let answer = try pollConnection.post(APIPath.jobsPoll, JobPollRequest(holding: holding, waitSeconds: Self.pollWait,
                                                                                      timeZone: TimeZone.current.identifier),
                                                     as: JobPollResponse.self)
                lastContact.withLock { $0 = Date() }
                failures = 0
                savePolicy(answer.policy)
                markOnline()
                for id in answer.cancel { cancel(id) }
                for job in answer.jobs where !holding.contains(job.id) { accept(job, task: nil, slot: nil, localID: nil) }
                // A cancelled job is still held until its process has ended; do not ask again at once.
                if answer.jobs.isEmpty && !answer.cancel.isEmpty { Thread.sleep(forTimeInterval: 0.5) }
            } catch {
                failures += 1
                runScheduleOffline()
                Thread.sleep(forTimeInterval: Double.random(in: 1...HeartbeatDaemon.retryCeiling(failures: failures, interval: 30)))
            }
        }
    }

    func heldIDs() -> [Int64] {
        let held = files(prefix: "held-").compactMap { Int64($0.dropFirst(5).dropLast(5)) }
        let spooled = files(prefix: "result-job-").compactMap { Int64($0.dropFirst(11).dropLast(5)) }
        return Array(Set(held + spooled)).sorted().suffix(JobLimits.mostHeld)
    }

    private func accept(_ job: JobAssignment, task: ScheduledTask?, slot: Int64?, localID: String?) {
        let name = localID.map { "held-\($0).json" } ?? "held-\(job.id).json"
        guard (try? PrivateFile.write(directory + "/" + name, AgentState.encode(job))) != nil else {
            log("job \(job.id): cannot record it in \(directory); not starting it")
            return
        }
        log("job \(localID ?? String(job.id)) started: \(job.kind.rawValue)")
        Thread.detachNewThread { [self] in
            let result = execute(job, task: task, slot: slot, localID: localID)
            spool(result, name: localID ?? "job-\(job.id)")
            unlink(directory + "/" + name)
            log("job \(localID ?? String(job.id)) \(result.succeeded ? "succeeded" : "failed\(result.error.map { ": \($0)" } ?? "")")")
            deliverSpooled()
        }
    }

    private func cancel(_ id: Int64) {
        guard let job = running.withLock({ $0[id] }) else { return }
        log("job \(id): cancelled by the controller; stopping it")
        job.process.terminate()
    }

    /// Runs the job as a child `fleetkeep-agent` command and turns its exit and JSON output into a result.
    func execute(_ job: JobAssignment, task: ScheduledTask?, slot: Int64?, localID: String?) -> JobResultRequest {
        let started = now()
        var result = JobResultRequest(jobID: localID == nil ? job.id : nil, localID: localID, kind: job.kind, task: task, slot: slot,
                                      succeeded: false, error: nil, snapshots: [], bytesAdded: 0, files: 0, startedAt: started, finishedAt: started)
        let output = directory + "/output-\(localID ?? String(job.id))"
        let progressPath = output + ".progress"
        defer { unlink(output); unlink(progressPath) }
        let process = Process()
        process.executableURL = URL(fileURLWithPath: executable)
        process.arguments = arguments(for: job, localID: localID) + (configPath.map { ["--config", $0] } ?? [])
        var environment = ProcessInfo.processInfo.environment
        environment[JobChild.parentVariable] = String(getpid())
        environment[JobChild.progressFileVariable] = progressPath
        process.environment = environment
        guard FileManager.default.createFile(atPath: output, contents: nil, attributes: [.posixPermissions: 0o600]),
              let handle = FileHandle(forWritingAtPath: output) else {
            result.error = "cannot create \(output)"
            return result
        }
        process.standardOutput = handle
        process.standardError = handle
        do { try process.run() } catch {
            result.error = "cannot start \(executable): \(error)"
            return result
        }
        try? handle.close()
        if localID == nil { running.withLock { $0[job.id] = RunningJob(process: process) } }
        defer { if localID == nil { _ = running.withLock { $0.removeValue(forKey: job.id) } } }
        let deadline = Date().addingTimeInterval(Double(min(max(job.timeoutSeconds, 60), 7 * 86_400)))
        var lastReport = Date.distantPast
        while process.isRunning {
            Thread.sleep(forTimeInterval: 0.2)
            if Date() > deadline {
                process.terminate()
                result.error = "timed out after \(job.timeoutSeconds)s"
            }
            if localID == nil, Date().timeIntervalSince(lastReport) >= 2 {
                lastReport = Date()
                reportProgress(job.id, progressPath: progressPath, process: process)
            }
        }
        process.waitUntilExit()
        result.finishedAt = now()
        let text = (try? String(contentsOfFile: output, encoding: .utf8)) ?? ""
        if job.kind == .backup, let start = text.firstIndex(of: "["), let end = text.lastIndex(of: "]"),
           let items = try? JSONDecoder().decode([BackupCommands.BackupResult].self, from: Data(text[start...end].utf8)) {
            result.snapshots = items.compactMap(\.snapshot)
            result.bytesAdded = items.reduce(0) { $0 &+ ($1.summary?.bytesAdded ?? 0) }
            result.files = items.reduce(0) { $0 &+ Int64(($1.summary.map { $0.filesNew + $0.filesChanged + $0.filesUnchanged }) ?? 0) }
            result.items = Self.itemReports(items)
        }
        if job.kind == .backup, let config = try? AgentConfig.load(path: configPath) {
            result.repositoryBytes = RepositoryUsage.bytes(root: config.repository)
        }
        if process.terminationReason == .uncaughtSignal {
            result.error = result.error ?? "stopped by signal \(process.terminationStatus)"
        } else if process.terminationStatus != 0 {
            let lines = text.split(separator: "\n").filter { !$0.hasPrefix("[") && !$0.hasPrefix(" ") && !$0.hasPrefix("{") && !$0.hasPrefix("}") && !$0.hasPrefix("]") }
            result.error = result.error ?? String(lines.suffix(3).joined(separator: "; ").prefix(JobLimits.longestError - 100))
            if result.error?.isEmpty ?? true { result.error = "exit status \(process.terminationStatus)" }
        } else if result.error == nil {
            result.succeeded = true
        }
        return Self.fitted(result)
    }

    /// What the controller needs of each backup item: whether it was backed up, and why not. Items the controller
    /// would refuse (an account name it cannot store) are left out rather than losing the whole result.
    static func itemReports(_ items: [BackupCommands.BackupResult]) -> [BackupItemReport] {
        items.map { item in
            BackupItemReport(account: item.account, kind: item.kind, succeeded: item.error == nil && item.snapshot != nil,
                             error: item.error.map { truncated($0, bytes: JobLimits.longestItemError) }, snapshot: item.snapshot)
        }.filter { $0.violation == nil }.prefix(JobLimits.mostItems).map { $0 }
    }

    /// A result within the controller's body limit: snapshot ids (informational; the items say what was backed
    /// up) are dropped from the end until it fits.
    static func fitted(_ result: JobResultRequest) -> JobResultRequest {
        var result = result
        result.snapshots = Array(result.snapshots.prefix(JobLimits.mostSnapshots))
        let budget = JobLimits.largestResultBody - 4096
        while let size = try? JSONEncoder().encode(result).count, size > budget, !result.snapshots.isEmpty {
            let excess = size - budget
            result.snapshots.removeLast(min(result.snapshots.count, max(1, excess / 64)))
        }
        return result
    }

    /// `text` cut to at most `bytes` UTF-8 bytes, at a character boundary.
    static func truncated(_ text: String, bytes: Int) -> String {
        var count = 0
        var end = text.startIndex
        for index in text.indices {
            let length = String(text[index]).utf8.count
            guard count + length <= bytes else { break }
            count += length
            end = text.index(after: index)
        }
        return String(text[..<end])
    }

    func arguments(for job: JobAssignment, localID: String?) -> [String] {
        Self.arguments(for: job, localID: localID, policy: read(SchedulePolicy.self, "policy.json"), stateDirectory: state.directory)
    }

    /// The child command for `job`. Retention comes from the controller's `policy` (the last one saved from a poll),
    /// so `schedule set --keep-files` and friends take effect; without a saved policy the agent's config decides.
    static func arguments(for job: JobAssignment, localID: String?, policy: SchedulePolicy?, stateDirectory: String) -> [String] {
        let parameters = job.parameters
        switch job.kind {
        case .backup:
            return ["backup", "--json"] + (parameters.account.map { ["--account", $0] } ?? [])
                + (parameters.kinds.map { ["--kind", $0.joined(separator: ",")] } ?? [])
        case .verify:
            if let part = parameters.verifyPart, let parts = parameters.verifyParts { return ["verify", "--read-data-part", "\(part)/\(parts)"] }
            return ["verify"]
        case .prune:
            guard let retention = policy?.retention else { return ["prune"] }
            return ["prune", "--keep-files", String(retention.filesDays), "--keep-databases", String(retention.databasesDays),
                    "--keep-email", String(retention.emailDays)]
        case .offsitePush:
            guard let retention = policy?.retention else { return ["offsite", "push"] }
            return ["offsite", "push", "--keep-weekly", String(retention.offsiteWeeks)]
        case .restore:
            let target = stateDirectory + "/restores/job-\(localID ?? String(job.id))"
            return ["restore", parameters.snapshot ?? "latest", "--account", parameters.account ?? "", "--kind", "files", "--target", target]
        }
    }

    private func reportProgress(_ id: Int64, progressPath: String, process: Process) {
        let numbers = ((try? String(contentsOfFile: progressPath, encoding: .utf8)) ?? "").split(separator: " ")
            .compactMap { Int64($0.trimmingCharacters(in: .whitespacesAndNewlines)) }
        let files = numbers.first ?? 0, bytes = numbers.count > 1 ? numbers[1] : 0
        if let answer = try? reportConnection.post(APIPath.jobsProgress, JobProgressRequest(jobID: id, bytes: max(bytes, 0), files: max(files, 0), percent: nil),
                                                   as: JobProgressResponse.self), answer.cancel {
            log("job \(id): cancelled by the controller; stopping it")
            process.terminate()
        }
    }

    // MARK: Spool

    func spool(_ result: JobResultRequest, name: String) {
        let existing = files(prefix: "result-").sorted()
        if existing.count >= Self.spoolLimit, let oldest = existing.first {
            log("result spool is full (\(Self.spoolLimit) results); dropping the oldest, \(oldest)")
            unlink(directory + "/" + oldest)
        }
        do { try PrivateFile.write(directory + "/result-\(name).json", AgentState.encode(result)) } catch {
            log("cannot spool the result of \(name): \(error)")
        }
        AgentTelemetry(state: state, configPath: configPath).record(result)
    }

    /// Sends every spooled result; each file is removed only after the controller answered 2xx (recorded or
    /// duplicate), so a result is recorded exactly once however often it is sent.
    func deliverSpooled() {
        for name in files(prefix: "result-").sorted() {
            guard let result = read(JobResultRequest.self, name) else { unlink(directory + "/" + name); continue }
            do {
                _ = try reportConnection.post(APIPath.jobsResult, result, as: JobResultResponse.self)
                unlink(directory + "/" + name)
                lastContact.withLock { $0 = Date() }
            } catch let error as AgentError where error.message.contains("HTTP 4") && !error.message.contains("HTTP 401") {
                log("controller refused the result \(name) (\(error)); dropping it")
                unlink(directory + "/" + name)
            } catch {
                return
            }
        }
    }

    // MARK: Offline schedule

    struct OfflineMark: Codable { var considered: Int64 }

    private func savePolicy(_ policy: SchedulePolicy) {
        try? PrivateFile.write(directory + "/policy.json", AgentState.encode(policy))
    }

    private func markOnline() {
        try? PrivateFile.write(directory + "/offline.json", AgentState.encode(OfflineMark(considered: now())))
    }

    /// While the controller has been out of reach for longer than the grace, runs the scheduled runs that came due
    /// since the last one considered, one at a time, from the last policy the controller sent.
    func runScheduleOffline() {
        let silent = Date().timeIntervalSince(lastContact.withLock { $0 })
        guard silent >= offlineGrace, running.withLock({ $0.isEmpty }), files(prefix: "held-").isEmpty,
              let policy = read(SchedulePolicy.self, "policy.json") else { return }
        let considered = read(OfflineMark.self, "offline.json")?.considered ?? now()
        let calendar = policy.calendar(agentTimeZone: TimeZone.current.identifier)
        let current = now()
        let due = policy.upcoming(agentID: agentID, after: Date(timeIntervalSince1970: TimeInterval(considered)), count: 16,
                                  agentTimeZone: calendar.timeZone.identifier).filter { Int64($0.at.timeIntervalSince1970) <= current }
        guard let run = due.first else {
            try? PrivateFile.write(directory + "/offline.json", AgentState.encode(OfflineMark(considered: current)))
            return
        }
        let slot = Int64(run.at.timeIntervalSince1970)
        // Recorded before running: a crash during the run does not run it again.
        try? PrivateFile.write(directory + "/offline.json", AgentState.encode(OfflineMark(considered: slot)))
        let localID = "local-" + UUID().uuidString.lowercased()
        var parameters = JobParameters()
        if run.task == .verify { parameters.verifyParts = policy.verifyRotation; parameters.verifyPart = Int((slot / 86_400) % Int64(max(1, policy.verifyRotation))) }
        let job = JobAssignment(id: 0, kind: run.task.jobKind, parameters: parameters, timeoutSeconds: 6 * 3600, attempt: 1)
        log("controller unreachable for \(Int(silent))s: running the scheduled \(run.task.rawValue) of \(ISO8601DateFormatter().string(from: run.at)) locally")
        let result = execute(job, task: run.task, slot: slot, localID: localID)
        spool(result, name: localID)
        log("local \(run.task.rawValue) \(result.succeeded ? "succeeded" : "failed\(result.error.map { ": \($0)" } ?? "")"); result spooled")
    }

    // MARK: Files

    private func files(prefix: String) -> [String] {
        ((try? FileManager.default.contentsOfDirectory(atPath: directory)) ?? []).filter { $0.hasPrefix(prefix) && $0.hasSuffix(".json") }
    }

    private func read<T: Decodable>(_ type: T.Type, _ name: String) -> T? {
        guard let data = FileManager.default.contents(atPath: directory + "/" + name) else { return nil }
        let decoder = JSONDecoder()
        decoder.dateDecodingStrategy = .iso8601
        return try? decoder.decode(type, from: data)
    }

    /// The shared clock (`FleetkeepClock`), so an end-to-end test can move the agent through a simulated outage.
    private func now() -> Int64 { FleetkeepClock.now() }
}
