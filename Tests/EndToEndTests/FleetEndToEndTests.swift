import Crypto
import Foundation
import HTTPClient
import Testing
import TestSupport

/// A real controller process over HTTPS on 127.0.0.1, started and stopped by the test.
final class RunningController: @unchecked Sendable {
    let data = TemporaryDirectory(prefix: "fk-e2e-controller")
    let server: BackgroundProcess
    let port: Int
    let pin: String
    static var bin: String { ProcessRunner.productsDirectory }

    let scheme: String

    init(heartbeatInterval: String = "2s", plainHTTP: Bool = false) throws {
        let initialized = try ProcessRunner.run(Self.bin + "/fleetkeep-controller", ["init", "--data", data.path, "--heartbeat-interval", heartbeatInterval])
        guard initialized.status == 0, let line = initialized.stdout.split(separator: "\n").first(where: { $0.contains("fingerprint") }) else {
            throw TestFailure("controller init failed: \(initialized.stderr)")
        }
        pin = String(line.split(separator: " ").last!)
        scheme = plainHTTP ? "http" : "https"
        server = try BackgroundProcess(Self.bin + "/fleetkeep-controller", ["serve", "--data", data.path, "--listen", "127.0.0.1:0"]
                                           + (plainHTTP ? ["--plain-http"] : []))
        port = try server.waitForListeningPort()
    }

    func controller(_ arguments: [String]) throws -> ProcessOutput {
        try ProcessRunner.run(Self.bin + "/fleetkeep-controller", arguments + ["--data", data.path])
    }

    func token(_ extra: [String] = []) throws -> String {
        let output = try controller(["token", "create"] + extra)
        guard output.status == 0 else { throw TestFailure("token create failed: \(output.stderr)") }
        return output.stdout.trimmingCharacters(in: .whitespacesAndNewlines)
    }

    func client(pin: String? = nil) throws -> HTTPClient {
        try HTTPClient(configuration: HTTPClientConfiguration(baseURL: "\(scheme)://127.0.0.1:\(port)", pinnedPublicKeySHA256: scheme == "https" ? pin ?? self.pin : nil,
                                                              timeoutSeconds: 10, retry: .none))
    }
}

func agent(_ arguments: [String]) throws -> ProcessOutput {
    try ProcessRunner.run(RunningController.bin + "/fleetkeep-agent", arguments)
}

struct FleetEndToEndTests {
    @Test func enrollHeartbeatAndReport() throws {
        let controller = try RunningController()
        let root = TemporaryDirectory(prefix: "fk-e2e-root")
        try HostingFixtureTool.create(root.path, accounts: 1, sizeMB: 1, panel: "cpanel", os: "almalinux8")
        let state = TemporaryDirectory(prefix: "fk-e2e-state")
        let enrolled = try agent(["enroll", try controller.token(), "--state", state.path + "/agent", "--root", root.path])
        #expect(enrolled.status == 0, "\(enrolled.stderr)")
        let mode = try FileManager.default.attributesOfItem(atPath: state.path + "/agent/agent.key")[.posixPermissions] as? Int
        #expect(mode == 0o600)

        let daemon = try BackgroundProcess(RunningController.bin + "/fleetkeep-agent",
                                           ["run", "--state", state.path + "/agent", "--root", root.path, "--interval", "1s"])
        try daemon.waitForOutput { $0.components(separatedBy: "heartbeat ok").count >= 3 }
        #expect(daemon.stop() == 0)
        #expect(daemon.output.contains("stopping"))

        let report = try controller.controller(["report", "--json"])
        #expect(report.status == 0)
        let rows = try JSONSerialization.jsonObject(with: Data(report.stdout.utf8)) as? [[String: Any]]
        let row = try #require(rows?.first)
        #expect(row["status"] as? String == "online")
        #expect(row["os"] as? String == "AlmaLinux 8.10")
        #expect((row["panel"] as? String)?.hasPrefix("cpanel ") == true)
        #expect(row["kernel"] as? String == (try String(contentsOfFile: root.path + "/proc/sys/kernel/osrelease", encoding: .utf8)).trimmingCharacters(in: .whitespacesAndNewlines))

        let status = try agent(["status", "--state", state.path + "/agent"])
        #expect(status.stdout.contains("licence:        unlicensed"), "\(status.stdout)")
    }

    @Test func daemonBacksOffWhileTheControllerIsDownAndResumesAfterARestart() throws {
        let controller = try RunningController()
        let state = TemporaryDirectory(prefix: "fk-e2e-state")
        #expect(try agent(["enroll", try controller.token(), "--state", state.path + "/agent"]).status == 0)
        let daemon = try BackgroundProcess(RunningController.bin + "/fleetkeep-agent", ["run", "--state", state.path + "/agent", "--interval", "1s"])
        try daemon.waitForOutput { $0.contains("heartbeat ok") }

        #expect(controller.server.stop() == 0)
        try daemon.waitForOutput { $0.contains("heartbeat failed") && $0.contains("retrying in") }
        let status = try agent(["status", "--state", state.path + "/agent"])
        #expect(status.stdout.contains("last error:"), "\(status.stdout)")

        // Same data directory and port: the agent's session (keyed by the signing key) and the replay floor carry over.
        let restarted = try BackgroundProcess(RunningController.bin + "/fleetkeep-controller",
                                              ["serve", "--data", controller.data.path, "--listen", "127.0.0.1:\(controller.port)"])
        try restarted.waitForOutput { $0.contains("listening on") }
        try daemon.waitForOutput(timeout: 30) { $0.contains("controller reachable again") }
        #expect(daemon.stop() == 0)
        #expect(restarted.stop() == 0)
        let after = try agent(["status", "--state", state.path + "/agent"])
        #expect(!after.stdout.contains("last error:"), "\(after.stdout)")
    }

    @Test func badTokensAndFingerprintsAreRefusedWithoutStoringAnything() throws {
        let controller = try RunningController()
        let other = try RunningController()
        let state = TemporaryDirectory(prefix: "fk-e2e-state")

        // A token whose fingerprint is wrong: TLS pinning fails before anything is sent.
        let good = try controller.token()
        let json = try #require(Base64URL.decode(String(good.dropFirst(4))))
        var fields = try #require(try JSONSerialization.jsonObject(with: Data(json)) as? [String: String])
        fields["p"] = other.pin
        let wrongPin = "fk1." + Base64URL.encode(try JSONSerialization.data(withJSONObject: fields, options: [.sortedKeys]))
        let pinned = try agent(["enroll", wrongPin, "--state", state.path + "/a"])
        #expect(pinned.status == 1)
        #expect(pinned.stderr.contains("pinned"), "\(pinned.stderr)")
        #expect(!FileManager.default.fileExists(atPath: state.path + "/a/agent.key"))

        // A token for another controller, presented here.
        let foreign = try other.token()
        let foreignJSON = try #require(Base64URL.decode(String(foreign.dropFirst(4))))
        var foreignFields = try #require(try JSONSerialization.jsonObject(with: Data(foreignJSON)) as? [String: String])
        foreignFields["u"] = fields["u"]
        foreignFields["p"] = controller.pin
        let misdirected = "fk1." + Base64URL.encode(try JSONSerialization.data(withJSONObject: foreignFields, options: [.sortedKeys]))
        let refused = try agent(["enroll", misdirected, "--state", state.path + "/b"])
        #expect(refused.status == 1)
        #expect(refused.stderr.contains("not known to this controller"), "\(refused.stderr)")

        // Expired and reused tokens.
        let expiring = try controller.token(["--expires", "1s"])
        Thread.sleep(forTimeInterval: 2.1)
        let expired = try agent(["enroll", expiring, "--state", state.path + "/c"])
        #expect(expired.stderr.contains("expired"), "\(expired.stderr)")
        #expect(try agent(["enroll", good, "--state", state.path + "/d"]).status == 0)
        let reused = try agent(["enroll", good, "--state", state.path + "/e"])
        #expect(reused.stderr.contains("already used"))

        let agents = try controller.controller(["agents", "--json"])
        let list = try JSONSerialization.jsonObject(with: Data(agents.stdout.utf8)) as? [Any]
        #expect(list?.count == 1)
    }

    @Test func hostileHTTPInputGetsFittingStatuses() throws {
        let controller = try RunningController()
        let client = try controller.client()
        #expect(try client.send(method: "GET", path: "/v1/nowhere").status == 404)
        #expect(try client.send(method: "GET", path: "/v1/heartbeat").status == 405)
        let oversized = try client.send(method: "POST", path: "/v1/enroll", body: [UInt8](repeating: 65, count: 100 * 1024))
        #expect(oversized.status == 413)
        #expect(String(decoding: oversized.body, as: UTF8.self).contains("65536"))
        let malformed = try client.send(method: "POST", path: "/v1/enroll", body: Array("{nope".utf8))
        #expect(malformed.status == 400)
        #expect(String(decoding: malformed.body, as: UTF8.self).contains("malformed JSON"))
        // The wrong pin is refused by the client before any request is sent.
        let wrong = try controller.client(pin: Data(SecureRandom.bytes(32)).base64EncodedString())
        #expect(throws: HTTPClientError.self) { try wrong.send(method: "GET", path: "/v1/health") }
    }

    @Test func damagedAgentStateGivesAClearError() throws {
        let state = TemporaryDirectory(prefix: "fk-e2e-state")
        let missing = try agent(["status", "--state", state.path])
        #expect(missing.status == 1)
        #expect(missing.stderr.contains("not enrolled"))
        try Data("garbage".utf8).write(to: URL(fileURLWithPath: state.appending("enrollment.json")))
        let damaged = try agent(["run", "--state", state.path])
        #expect(damaged.status == 1)
        #expect(damaged.stderr.contains("damaged"))
        let usage = try agent(["run", "--bogus"])
        #expect(usage.status == 2)
        #expect(usage.stderr.contains("--bogus"))
    }
}

/// The agent binary with arguments the shell builds from raw bytes, as a user would type them.
struct RawArgumentEndToEndTests {
    /// `restore --path` names a directory whose name is Latin-1 ("caf\xe9"), and `--target` is itself not UTF-8:
    /// only that directory's contents come back, into a target with the exact bytes given.
    @Test func restorePathAndTargetMayBeNonUTF8Bytes() throws {
        let scratch = TemporaryDirectory(prefix: "fk-e2e-raw")
        let script = """
            set -e
            S='\(scratch.path)'; A='\(RunningController.bin)/fleetkeep-agent'; name="$(printf 'caf\\351')"
            mkdir -p "$S/home/alice/$name" "$S/home/alice/other"
            echo menu > "$S/home/alice/$name/menu.txt"; echo no > "$S/home/alice/other/no.txt"
            printf 'root = %s\\nrepository = %s/repo\\nkey-file = %s/repo.key\\n[accounts]\\nalice = /home/alice\\n' "$S" "$S" "$S" > "$S/agent.conf"
            "$A" repo init --config "$S/agent.conf" > /dev/null
            "$A" backup --config "$S/agent.conf" --kind files > /dev/null
            "$A" restore latest --config "$S/agent.conf" --account alice --kind files --path "$name" --target "$S/out-$name"
            test "$(cat "$S/out-$name/menu.txt")" = menu
            test ! -e "$S/out-$name/other" && test ! -e "$S/out-$name/no.txt"
            echo restored-exactly
            """
        let result = try ProcessRunner.run("/bin/sh", ["-c", script])
        #expect(result.status == 0, "\(result.stdout)\n\(result.stderr)")
        #expect(result.stdout.contains("restored-exactly"))
        #expect(result.stdout.contains("out-caf\\xe9"), "the target is printed with the byte escaped: \(result.stdout)")
    }
}
