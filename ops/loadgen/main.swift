import AgentCore
import Crypto
import FleetkeepProtocol
import Foundation
import HTTPClient
import Synchronization

// fleetkeep-loadgen: simulates many enrolled agents sending signed heartbeats to a running controller.
//   fleetkeep-loadgen --tokens FILE [--seconds 10] [--scheme session|ed25519]
// FILE holds one enrollment token per line (`fleetkeep-controller token create --count N`); each token becomes one
// agent with its own Ed25519 key and its own keep-alive HTTPS connection. With `--scheme session` (the default, what
// the agent daemon does) each agent opens a session with one Ed25519-signed request and signs its heartbeats with
// HMAC-SHA256; `--scheme ed25519` signs every heartbeat with Ed25519. Prints one JSON object with the figures.
//
// Scheduling mode (`ops/bench controller`):
//   fleetkeep-loadgen --poll TOKENS --ready FILE --go FILE [--seconds 120]
//     enrolls one agent per token and keeps one long poll open per agent (as the agent daemon does); once all are
//     polling it writes their ids to READY, waits for GO (the commit time of their jobs) and reports, per agent, the
//     time from that commit to receiving its job. Several of these share a fleet (each curl handle holds 3 files).
//   fleetkeep-loadgen --queue --data DIR --ready FILE[,FILE...] --go FILE [--controller-pid PID]
//     queues one job per ready agent in the controller's database in one transaction, as `job run` would from
//     another process, writes GO, and reports the controller's CPU until every job is dispatched.
//
// Licence modes (`ops/bench licence`):
//   fleetkeep-loadgen --validate KEYS --url URL --pin PIN [--clients 32] [--addresses 8] [--seconds 10]
//     POST /v1/licences/validate back to back from `--clients` threads, each with its own keep-alive connection from
//     127.0.0.(1 + client % addresses), with keys drawn from KEYS (one per line).
//   fleetkeep-loadgen --lease-check STATE --root ROOT [--count 1000]
//     times the agent's offline lease check (`AgentLicence.check`) `--count` times in this process.

enum Scheme: String { case session, ed25519 }

struct Options {
    var tokens: [String] = []
    var seconds = 10.0
    var scheme = Scheme.session
}

func parseOptions() -> Options {
    var options = Options()
    var arguments = CommandLine.arguments.dropFirst()
    if let mode = arguments.first, mode == "--validate" || mode == "--lease-check" {
        runLicenceMode(Array(arguments))
        exit(0)
    }
    if arguments.first == "--poll" {
        runPollMode(Array(arguments))
        exit(0)
    }
    if arguments.first == "--queue" {
        runQueueMode(Array(arguments))
        exit(0)
    }
    while let flag = arguments.popFirst() {
        guard let value = arguments.popFirst() else { fatalError("\(flag) needs a value") }
        switch flag {
        case "--tokens":
            let text = (try? String(contentsOfFile: value, encoding: .utf8)) ?? ""
            options.tokens = text.split(separator: "\n").map(String.init).filter { !$0.isEmpty }
        case "--seconds": options.seconds = Double(value) ?? 10
        case "--scheme":
            guard let scheme = Scheme(rawValue: value) else { fatalError("--scheme must be session or ed25519") }
            options.scheme = scheme
        default: fatalError("unknown option \(flag); usage: fleetkeep-loadgen --tokens FILE [--seconds 10] [--scheme session|ed25519]")
        }
    }
    guard !options.tokens.isEmpty else { fatalError("no tokens: pass --tokens FILE") }
    return options
}

/// One simulated agent: enrolls with its token, then sends heartbeats back to back.
final class SimulatedAgent: Sendable {
    let client: HTTPClient
    let key = Ed25519PrivateKey()
    let agentID: String
    let body: [UInt8]
    let session: SessionCredentials?

    init(tokenText: String, index: Int, scheme: Scheme, timeoutSeconds: Double = 10) throws {
        let token = try EnrollmentToken(text: tokenText)
        client = try HTTPClient(configuration: HTTPClientConfiguration(baseURL: token.controllerURL, pinnedPublicKeySHA256: token.certificatePin,
                                                                       timeoutSeconds: timeoutSeconds, retry: .none))
        let facts = AgentFacts(hostname: "sim-\(index).fleet.example", osID: "almalinux", osName: "AlmaLinux", osVersion: "8.10",
                               kernelRelease: "4.18.0-553.el8_10.x86_64", kernelVersion: "#1 SMP", panel: "cpanel",
                               panelVersion: "11.118.0.12", primaryIP: "192.0.2.\(index % 250 + 1)")
        let key = self.key
        let enroll = Array(try JSONEncoder().encode(EnrollRequest(tokenID: token.id, tokenSecret: token.secret, controllerPin: token.certificatePin,
                                                                  publicKey: Base64URL.encode(key.publicKey.rawRepresentation),
                                                                  facts: facts.fields, problems: [:])))
        let response = try client.send(method: "POST", path: APIPath.enroll, body: enroll) { method, path, body in
            try RequestSigning.sign(method: method, path: path, body: body, key: key,
                                    identity: (RequestSigning.keyHeader, Base64URL.encode(key.publicKey.rawRepresentation)))
        }
        guard response.status == 200 else { throw ProtocolError("enroll failed: HTTP \(response.status) \(String(decoding: response.body, as: UTF8.self))") }
        let agentID = RequestSigning.agentID(for: key.publicKey)
        self.agentID = agentID
        body = Array(try JSONEncoder().encode(HeartbeatRequest(facts: facts.fields, problems: [:])))
        guard scheme == .session else { session = nil; return }
        let opened = try client.send(method: "POST", path: APIPath.session, body: Array("{}".utf8)) { method, path, body in
            try RequestSigning.sign(method: method, path: path, body: body, key: key, identity: (RequestSigning.agentHeader, agentID))
        }
        guard opened.status == 200, let answer = try? opened.decode(SessionResponse.self), let sessionKey = Base64URL.decode(answer.sessionKey) else {
            throw ProtocolError("session failed: HTTP \(opened.status) \(String(decoding: opened.body, as: UTF8.self))")
        }
        session = SessionCredentials(token: answer.sessionToken, key: sessionKey, expiresAt: answer.expiresAt)
    }

    /// Sends one signed heartbeat; returns its latency in milliseconds, or nil on failure.
    func beat() -> Double? {
        let started = ContinuousClock.now
        let key = self.key, agentID = self.agentID, session = self.session
        guard let response = try? client.send(method: "POST", path: APIPath.heartbeat, body: body, authorize: { method, path, body in
            if let session { return RequestSigning.sign(method: method, path: path, body: body, session: session) }
            return try RequestSigning.sign(method: method, path: path, body: body, key: key, identity: (RequestSigning.agentHeader, agentID))
        }), response.status == 200 else { return nil }
        let elapsed = ContinuousClock.now - started
        return Double(elapsed.components.seconds) * 1000 + Double(elapsed.components.attoseconds) / 1e15
    }
}

let options = parseOptions()
let agents = options.tokens.enumerated().map { index, token -> SimulatedAgent in
    do { return try SimulatedAgent(tokenText: token, index: index, scheme: options.scheme) } catch { fatalError("agent \(index): \(error)") }
}
let latencies = Mutex<[Double]>([])
let errors = Atomic<Int>(0)
let deadline = ContinuousClock.now + .milliseconds(Int(options.seconds * 1000))
let started = Date()
// One thread per agent: each is blocked in curl most of the time, like a real fleet of independent servers.
let finished = DispatchGroup()
for agent in agents {
    finished.enter()
    Thread.detachNewThread {
        var mine: [Double] = []
        while ContinuousClock.now < deadline {
            if let latency = agent.beat() { mine.append(latency) } else { errors.add(1, ordering: .relaxed) }
        }
        latencies.withLock { $0.append(contentsOf: mine) }
        finished.leave()
    }
}
finished.wait()
let elapsed = Date().timeIntervalSince(started)
let sorted = latencies.withLock { $0.sorted() }
func percentile(_ p: Double) -> Double { sorted.isEmpty ? 0 : sorted[min(sorted.count - 1, Int(Double(sorted.count) * p))] }
struct Figures: Encodable {
    let scheme: String, agents: Int, requests: Int, seconds: Double, rps: Double, p50_ms: Double, p99_ms: Double, errors: Int
}
let figures = Figures(scheme: options.scheme.rawValue, agents: agents.count, requests: sorted.count, seconds: elapsed,
                      rps: Double(sorted.count) / elapsed, p50_ms: percentile(0.5), p99_ms: percentile(0.99),
                      errors: errors.load(ordering: .relaxed))
let encoder = JSONEncoder()
encoder.outputFormatting = [.sortedKeys]
print(String(decoding: try encoder.encode(figures), as: UTF8.self))

// MARK: Licence modes

func licenceOption(_ arguments: [String], _ name: String) -> String? {
    guard let index = arguments.firstIndex(of: name), index + 1 < arguments.count else { return nil }
    return arguments[index + 1]
}

func milliseconds(_ duration: Duration) -> Double {
    Double(duration.components.seconds) * 1000 + Double(duration.components.attoseconds) / 1e15
}

func runLicenceMode(_ arguments: [String]) {
    let encoder = JSONEncoder()
    encoder.outputFormatting = [.sortedKeys]
    if let state = licenceOption(arguments, "--lease-check") {
        let licence = AgentLicence(state: AgentState(directory: state), root: licenceOption(arguments, "--root") ?? "/")
        let count = max(1, Int(licenceOption(arguments, "--count") ?? "1000") ?? 1000)
        var samples: [Double] = []
        var status = ""
        for _ in 0..<count {
            let started = ContinuousClock.now
            status = licence.check(recordRun: false).status
            samples.append(milliseconds(ContinuousClock.now - started) * 1000)
        }
        samples.sort()
        struct Check: Encodable { let count: Int; let median_us: Double; let p99_us: Double; let status: String }
        print(String(decoding: try! encoder.encode(Check(count: count, median_us: samples[count / 2], p99_us: samples[min(count - 1, count * 99 / 100)], status: status)), as: UTF8.self))
        return
    }
    let keys = ((try? String(contentsOfFile: licenceOption(arguments, "--validate") ?? "", encoding: .utf8)) ?? "")
        .split(separator: "\n").map(String.init).filter { !$0.isEmpty }
    guard !keys.isEmpty, let url = licenceOption(arguments, "--url"), let pin = licenceOption(arguments, "--pin") else {
        fatalError("usage: fleetkeep-loadgen --validate KEYS --url URL --pin PIN [--clients 32] [--addresses 8] [--seconds 10]")
    }
    let clients = max(1, Int(licenceOption(arguments, "--clients") ?? "32") ?? 32)
    let addresses = max(1, min(250, Int(licenceOption(arguments, "--addresses") ?? "8") ?? 8))
    let seconds = Double(licenceOption(arguments, "--seconds") ?? "10") ?? 10
    let latencies = Mutex<[Double]>([])
    let limited = Atomic<Int>(0), failed = Atomic<Int>(0)
    let deadline = ContinuousClock.now + .milliseconds(Int(seconds * 1000))
    let group = DispatchGroup()
    let started = Date()
    for index in 0..<clients {
        group.enter()
        Thread.detachNewThread {
            defer { group.leave() }
            guard let client = try? HTTPClient(configuration: HTTPClientConfiguration(baseURL: url, pinnedPublicKeySHA256: pin, timeoutSeconds: 10,
                                                                                       retry: .none, localAddress: "127.0.0.\(1 + index % addresses)")) else {
                failed.add(1, ordering: .relaxed)
                return
            }
            let bodies = keys.map { Array(#"{"key":""#.utf8) + Array($0.utf8) + Array(#""}"#.utf8) }
            var mine: [Double] = []
            var next = index
            while ContinuousClock.now < deadline {
                let begin = ContinuousClock.now
                let response = try? client.send(method: "POST", path: APIPath.licenceValidate, body: bodies[next % bodies.count])
                next += 1
                switch response?.status {
                case 200: mine.append(milliseconds(ContinuousClock.now - begin))
                case 429: limited.add(1, ordering: .relaxed)
                default: failed.add(1, ordering: .relaxed)
                }
            }
            latencies.withLock { $0.append(contentsOf: mine) }
        }
    }
    group.wait()
    let elapsed = Date().timeIntervalSince(started)
    let sorted = latencies.withLock { $0.sorted() }
    func percentile(_ p: Double) -> Double { sorted.isEmpty ? 0 : sorted[min(sorted.count - 1, Int(Double(sorted.count) * p))] }
    struct Validation: Encodable {
        let clients: Int, addresses: Int, answered: Int, seconds: Double, rps: Double, p50_ms: Double, p99_ms: Double, limited: Int, errors: Int
    }
    let figures = Validation(clients: clients, addresses: addresses, answered: sorted.count, seconds: elapsed, rps: Double(sorted.count) / elapsed,
                             p50_ms: percentile(0.5), p99_ms: percentile(0.99), limited: limited.load(ordering: .relaxed), errors: failed.load(ordering: .relaxed))
    print(String(decoding: try! encoder.encode(figures), as: UTF8.self))
}
