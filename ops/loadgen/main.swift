import Crypto
import FleetkeepProtocol
import Foundation
import HTTPClient
import Synchronization

// fleetkeep-loadgen: simulates many enrolled agents sending signed heartbeats to a running controller.
//   fleetkeep-loadgen --tokens FILE --seconds 10
// FILE holds one enrollment token per line (`fleetkeep-controller token create --count N`); each token becomes one
// agent with its own Ed25519 key and its own keep-alive HTTPS connection. Prints one JSON object with the figures.

struct Options {
    var tokens: [String] = []
    var seconds = 10.0
}

func parseOptions() -> Options {
    var options = Options()
    var arguments = CommandLine.arguments.dropFirst()
    while let flag = arguments.popFirst() {
        guard let value = arguments.popFirst() else { fatalError("\(flag) needs a value") }
        switch flag {
        case "--tokens":
            let text = (try? String(contentsOfFile: value, encoding: .utf8)) ?? ""
            options.tokens = text.split(separator: "\n").map(String.init).filter { !$0.isEmpty }
        case "--seconds": options.seconds = Double(value) ?? 10
        default: fatalError("unknown option \(flag); usage: fleetkeep-loadgen --tokens FILE [--seconds 10]")
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

    init(tokenText: String, index: Int) throws {
        let token = try EnrollmentToken(text: tokenText)
        client = try HTTPClient(configuration: HTTPClientConfiguration(baseURL: token.controllerURL, pinnedPublicKeySHA256: token.certificatePin,
                                                                       timeoutSeconds: 10, retry: .none))
        let facts = AgentFacts(hostname: "sim-\(index).fleet.example", osID: "almalinux", osName: "AlmaLinux", osVersion: "8.10",
                               kernelRelease: "4.18.0-553.el8_10.x86_64", kernelVersion: "#1 SMP", panel: "cpanel",
                               panelVersion: "11.118.0.12", primaryIP: "192.0.2.\(index % 250 + 1)")
        let key = self.key
        let enroll = Array(try JSONEncoder().encode(EnrollRequest(tokenID: token.id, tokenSecret: token.secret,
                                                                  publicKey: Base64URL.encode(key.publicKey.rawRepresentation),
                                                                  facts: facts.fields, problems: [:])))
        let response = try client.send(method: "POST", path: APIPath.enroll, body: enroll) { method, path, body in
            try RequestSigning.sign(method: method, path: path, body: body, key: key,
                                    identity: (RequestSigning.keyHeader, Base64URL.encode(key.publicKey.rawRepresentation)))
        }
        guard response.status == 200 else { throw ProtocolError("enroll failed: HTTP \(response.status) \(String(decoding: response.body, as: UTF8.self))") }
        agentID = RequestSigning.agentID(for: key.publicKey)
        body = Array(try JSONEncoder().encode(HeartbeatRequest(facts: facts.fields, problems: [:])))
    }

    /// Sends one signed heartbeat; returns its latency in milliseconds, or nil on failure.
    func beat() -> Double? {
        let started = ContinuousClock.now
        let key = self.key, agentID = self.agentID
        guard let response = try? client.send(method: "POST", path: APIPath.heartbeat, body: body, authorize: { method, path, body in
            try RequestSigning.sign(method: method, path: path, body: body, key: key, identity: (RequestSigning.agentHeader, agentID))
        }), response.status == 200 else { return nil }
        let elapsed = ContinuousClock.now - started
        return Double(elapsed.components.seconds) * 1000 + Double(elapsed.components.attoseconds) / 1e15
    }
}

let options = parseOptions()
let agents = options.tokens.enumerated().map { index, token -> SimulatedAgent in
    do { return try SimulatedAgent(tokenText: token, index: index) } catch { fatalError("agent \(index): \(error)") }
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
let result: [String: Double] = ["agents": Double(agents.count), "requests": Double(sorted.count), "seconds": elapsed,
                                "rps": Double(sorted.count) / elapsed, "p50_ms": percentile(0.5), "p99_ms": percentile(0.99),
                                "errors": Double(errors.load(ordering: .relaxed))]
let encoder = JSONEncoder()
encoder.outputFormatting = [.sortedKeys]
print(String(decoding: try encoder.encode(result), as: UTF8.self))
