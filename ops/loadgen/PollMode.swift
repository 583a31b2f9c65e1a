import ControllerCore
import Foundation
import FleetkeepProtocol
import HTTPClient
import SQLite
import Synchronization

/// `--poll`: job pickup with many agents holding long polls (see the usage at the top of main.swift).
func runPollMode(_ arguments: [String]) {
    let tokens = ((try? String(contentsOfFile: licenceOption(arguments, "--poll") ?? "", encoding: .utf8)) ?? "")
        .split(separator: "\n").map(String.init).filter { !$0.isEmpty }
    guard !tokens.isEmpty, let ready = licenceOption(arguments, "--ready"), let go = licenceOption(arguments, "--go") else {
        fatalError("usage: fleetkeep-loadgen --poll TOKENS --ready FILE --go FILE [--seconds 120]")
    }
    let seconds = Double(licenceOption(arguments, "--seconds") ?? "120") ?? 120
    let log = { (text: String) in FileHandle.standardError.write(Data((text + "\n").utf8)) }

    // Enroll and open sessions, 32 at a time.
    let enrolled = Mutex<[Int: SimulatedAgent]>([:])
    let next = Atomic<Int>(0)
    let enrolling = DispatchGroup()
    let enrollStarted = Date()
    for _ in 0..<32 {
        enrolling.enter()
        Thread.detachNewThread {
            defer { enrolling.leave() }
            while true {
                let index = next.add(1, ordering: .relaxed).oldValue
                guard index < tokens.count else { return }
                do {
                    let agent = try SimulatedAgent(tokenText: tokens[index], index: index, scheme: .session, timeoutSeconds: 40)
                    enrolled.withLock { $0[index] = agent }
                } catch { fatalError("agent \(index): \(error)") }
            }
        }
    }
    enrolling.wait()
    let agents = enrolled.withLock { dictionary in (0..<tokens.count).compactMap { dictionary[$0] } }
    log("enrolled \(agents.count) agents in \(Int(Date().timeIntervalSince(enrollStarted)))s")

    // One long poll per agent, on its own thread (a small stack: ten thousand of them).
    let received = Mutex<[String: Date]>([:])
    let polling = Atomic<Int>(0)
    let pollErrors = Atomic<Int>(0)
    let deadline = ContinuousClock.now + .milliseconds(Int(seconds * 1000))
    let done = DispatchGroup()
    for agent in agents {
        done.enter()
        let thread = Thread {
            defer { done.leave() }
            var holding: [Int64] = []
            var counted = false
            while ContinuousClock.now < deadline {
                let body = Array((try? JSONEncoder().encode(JobPollRequest(holding: holding, waitSeconds: 15, timeZone: "UTC"))) ?? Data())
                if !counted { counted = true; polling.add(1, ordering: .relaxed) }
                let session = agent.session
                guard let response = try? agent.client.send(method: "POST", path: APIPath.jobsPoll, body: body, authorize: { method, path, body in
                    guard let session else { return [:] }
                    return RequestSigning.sign(method: method, path: path, body: body, session: session)
                }), response.status == 200, let answer = try? response.decode(JobPollResponse.self) else {
                    pollErrors.add(1, ordering: .relaxed)
                    Thread.sleep(forTimeInterval: 1)
                    continue
                }
                if !answer.jobs.isEmpty {
                    let now = Date()
                    received.withLock { if $0[agent.agentID] == nil { $0[agent.agentID] = now } }
                    holding = Array(Set(holding + answer.jobs.map(\.id))).sorted().suffix(JobLimits.mostHeld)
                }
            }
        }
        thread.stackSize = 256 * 1024
        thread.start()
    }
    while polling.load(ordering: .relaxed) < agents.count { Thread.sleep(forTimeInterval: 0.1) }
    // Let the last polls reach the controller and wait there.
    Thread.sleep(forTimeInterval: 5)

    // Tell the queueing process who is waiting, then wait for its commit time.
    try? Data(agents.map(\.agentID).joined(separator: "\n").utf8).write(to: URL(fileURLWithPath: ready + ".tmp"))
    rename(ready + ".tmp", ready)
    var queuedAtMS: Double?
    while queuedAtMS == nil {
        queuedAtMS = (try? String(contentsOfFile: go, encoding: .utf8)).flatMap { Double($0.trimmingCharacters(in: .whitespacesAndNewlines)) }
        if queuedAtMS == nil { Thread.sleep(forTimeInterval: 0.01) }
    }
    let queuedAt = Date(timeIntervalSince1970: (queuedAtMS ?? 0) / 1000)
    let pickupDeadline = Date().addingTimeInterval(60)
    while received.withLock({ $0.count }) < agents.count && Date() < pickupDeadline { Thread.sleep(forTimeInterval: 0.05) }
    let delays = received.withLock { $0.values.map { $0.timeIntervalSince(queuedAt) * 1000 } }.sorted()
    log("picked up \(delays.count) of \(agents.count) jobs")
    done.wait()

    func percentile(_ p: Double) -> Double { delays.isEmpty ? 0 : delays[min(delays.count - 1, Int(Double(delays.count) * p))] }
    struct Pickup: Encodable {
        let agents: Int, pickedUp: Int, delays_ms: [Double], poll_errors: Int
    }
    let encoder = JSONEncoder()
    encoder.outputFormatting = [.sortedKeys]
    let figures = Pickup(agents: agents.count, pickedUp: delays.count, delays_ms: delays, poll_errors: pollErrors.load(ordering: .relaxed))
    print(String(decoding: (try? encoder.encode(figures)) ?? Data(), as: UTF8.self))
}

/// `--queue`: once every `--poll` process is ready, queues one backup job for each of their agents in one
/// transaction (as `job run` would, from another process), writes the commit time (Unix ms) to `--go`, and reports
/// the controller's CPU from then until no job is left queued.
func runQueueMode(_ arguments: [String]) {
    guard let data = licenceOption(arguments, "--data"), let readyList = licenceOption(arguments, "--ready"), let go = licenceOption(arguments, "--go") else {
        fatalError("usage: fleetkeep-loadgen --queue --data DIR --ready FILE[,FILE...] --go FILE [--controller-pid PID]")
    }
    let readyFiles = readyList.split(separator: ",").map(String.init)
    let controllerPID = licenceOption(arguments, "--controller-pid").flatMap { Int32($0) }
    while !readyFiles.allSatisfy({ FileManager.default.fileExists(atPath: $0) }) { Thread.sleep(forTimeInterval: 0.1) }
    let agentIDs = readyFiles.flatMap { ((try? String(contentsOfFile: $0, encoding: .utf8)) ?? "").split(separator: "\n").map(String.init) }
    // Let the last polls reach the controller and wait there.
    Thread.sleep(forTimeInterval: 5)
    do {
        let database = try Database(path: data + "/controller.db")
        let jobs = try SQLiteJobStore(database: database)
        let cpuBefore = controllerPID.map(processCPUSeconds) ?? 0
        let now = Int64(Date().timeIntervalSince1970)
        let ids = try database.transaction { _ in
            try agentIDs.compactMap { agent in
                try jobs.enqueue(JobDraft(agentID: agent, kind: .backup, parameters: JobParameters(), origin: .operator_, maxAttempts: 1,
                                          retryBaseSeconds: 60, timeoutSeconds: 6 * 3600, notBefore: now), now: now)
            }
        }
        let first = ids.min() ?? 0, last = ids.max() ?? 0
        let committed = Date()
        try Data(String(committed.timeIntervalSince1970 * 1000).utf8).write(to: URL(fileURLWithPath: go + ".tmp"))
        rename(go + ".tmp", go)
        let deadline = committed.addingTimeInterval(60)
        while Date() < deadline, (try database.query("SELECT COUNT(*) AS n FROM jobs WHERE state = 'queued' AND id BETWEEN ? AND ?",
                                                                [.integer(first), .integer(last)]).first?.int("n") ?? 0) > 0 {
            Thread.sleep(forTimeInterval: 0.05)
        }
        let cpuAfter = controllerPID.map(processCPUSeconds) ?? 0
        struct Queued: Encodable { let jobs: Int; let dispatched_s: Double; let controller_cpu_s: Double }
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        print(String(decoding: try encoder.encode(Queued(jobs: agentIDs.count, dispatched_s: Date().timeIntervalSince(committed),
                                                          controller_cpu_s: cpuAfter - cpuBefore)), as: UTF8.self))
    } catch { fatalError("queueing jobs: \(error)") }
}

/// User plus system CPU seconds of a process, from /proc/PID/stat.
func processCPUSeconds(_ pid: Int32) -> Double {
    guard let text = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8), let close = text.lastIndex(of: ")") else { return 0 }
    let fields = text[text.index(after: close)...].split(separator: " ")
    // After the command name: state is field 3, utime 14 and stime 15 (1-based), so indexes 11 and 12 here.
    guard fields.count > 12, let user = Double(fields[11]), let system = Double(fields[12]) else { return 0 }
    return (user + system) / Double(sysconf(Int32(_SC_CLK_TCK)))
}
