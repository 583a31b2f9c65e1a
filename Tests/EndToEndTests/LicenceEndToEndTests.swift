import Crypto
import Foundation
import HTTPClient
import Testing
import TestSupport

/// Licences end to end: the real controller and agent binaries over loopback HTTPS.
struct LicenceEndToEndTests {
    /// An enrolled agent with its own state directory and server root (with its own /etc/machine-id).
    struct Server {
        let state: String
        let root: String
        var flags: [String] { ["--state", state, "--root", root] }

        init(_ controller: RunningController, in scratch: TemporaryDirectory, name: String, machineID: String? = nil) throws {
            state = scratch.appending(name + "-state")
            root = scratch.appending(name + "-root")
            try FileManager.default.createDirectory(atPath: root + "/etc", withIntermediateDirectories: true)
            try Data(((machineID ?? Hex.encode(SecureRandom.bytes(16))) + "\n").utf8).write(to: URL(fileURLWithPath: root + "/etc/machine-id"))
            let enrolled = try agent(["enroll", try controller.token(), "--state", state, "--root", root])
            guard enrolled.status == 0 else { throw TestFailure("enroll failed: \(enrolled.stderr)") }
        }

        var agentID: String {
            get throws {
                let data = try Data(contentsOf: URL(fileURLWithPath: state + "/enrollment.json"))
                return try #require((try JSONSerialization.jsonObject(with: data) as? [String: Any])?["agentID"] as? String)
            }
        }

        func licence(_ arguments: [String], offset: Int64 = 0) throws -> ProcessOutput {
            try ProcessRunner.run(RunningController.bin + "/fleetkeep-agent", ["licence"] + arguments + flags,
                                  environment: ["FLEETKEEP_CLOCK_OFFSET": String(offset)])
        }

        /// `licence status --json` as a dictionary.
        func status(offset: Int64 = 0) throws -> [String: Any] {
            let output = try licence(["status", "--json"], offset: offset)
            guard output.status == 0 else { throw TestFailure("licence status failed: \(output.stderr)") }
            return try #require(try JSONSerialization.jsonObject(with: Data(output.stdout.utf8)) as? [String: Any])
        }

        /// Runs the daemon until a heartbeat has been answered `count` times, then stops it.
        @discardableResult
        func heartbeats(_ count: Int = 1, offset: Int64 = 0, until: ((String) -> Bool)? = nil) throws -> String {
            let daemon = try BackgroundProcess(RunningController.bin + "/fleetkeep-agent", ["run", "--interval", "1s"] + flags,
                                               environment: ["FLEETKEEP_CLOCK_OFFSET": String(offset)])
            let output = try daemon.waitForOutput(timeout: 30) { text in
                text.components(separatedBy: "heartbeat ok").count > count && (until?(text) ?? true)
            }
            daemon.stop()
            return output
        }
    }

    static func issue(_ controller: RunningController, tier: String = "standard", maxServers: Int = 1) throws -> String {
        let output = try controller.controller(["licence", "issue", "--customer", "Acme Hosting", "--email", "ops@acme.example",
                                                "--tier", tier, "--max-servers", String(maxServers)])
        guard output.status == 0 else { throw TestFailure("licence issue failed: \(output.stderr)") }
        return output.stdout.trimmingCharacters(in: .whitespacesAndNewlines)
    }

    static func json(_ output: ProcessOutput) throws -> [String: Any] {
        try #require(try JSONSerialization.jsonObject(with: Data(output.stdout.utf8)) as? [String: Any], "\(output.stdout) \(output.stderr)")
    }

    @Test func issueActivateVerifyOfflineThenRevokeKeepsLocalBackupsRunning() throws {
        let controller = try RunningController()
        let scratch = TemporaryDirectory(prefix: "fk-e2e-licence")
        let server = try Server(controller, in: scratch, name: "web1")
        let key = try Self.issue(controller)
        #expect(try server.status()["status"] as? String == "unlicensed")

        // A typo is caught offline: exit 2 before any network call, nothing bound.
        var typo = Array(key)
        typo[10] = typo[10] == "Z" ? "Y" : "Z"
        let mistyped = try server.licence(["activate", String(typo)])
        #expect(mistyped.status == 2 && mistyped.stderr.contains("check"), "\(mistyped.stderr)")

        let activated = try server.licence(["activate", key])
        #expect(activated.status == 0, "\(activated.stdout) \(activated.stderr)")
        let mode = try FileManager.default.attributesOfItem(atPath: server.state + "/licence.lease")[.posixPermissions] as? Int
        #expect(mode == 0o600)

        // Verified offline: the controller is stopped and the lease still checks out.
        #expect(controller.server.stop() == 0)
        let offline = try server.status()
        #expect(offline["status"] as? String == "valid", "\(offline)")
        #expect((offline["features"] as? [String])?.contains("offsite") == true)
        let plainStatus = try agent(["status", "--state", server.state, "--root", server.root])
        #expect(plainStatus.stdout.contains("licence:        valid"), "\(plainStatus.stdout)")

        // Back online, revoke: the next heartbeat carries it.
        let restarted = try BackgroundProcess(RunningController.bin + "/fleetkeep-controller",
                                              ["serve", "--data", controller.data.path, "--listen", "127.0.0.1:\(controller.port)"])
        try restarted.waitForOutput { $0.contains("listening on") }
        let licenceID = String(key.dropFirst(3).prefix(5))
        #expect(try controller.controller(["licence", "revoke", licenceID]).status == 0)
        try server.heartbeats(until: { $0.contains("licence revoked") })
        let revoked = try server.status()
        #expect(revoked["status"] as? String == "revoked", "\(revoked)")
        #expect((revoked["nextStep"] as? String)?.contains("local backups") == true)

        // Local backups, listing, verify and restore still run; the off-site push is refused with the reason.
        let site = scratch.appending("site")
        try FileManager.default.createDirectory(atPath: site + "/home/alice/public_html", withIntermediateDirectories: true)
        try Data("<?php echo 1;".utf8).write(to: URL(fileURLWithPath: site + "/home/alice/public_html/index.php"))
        // The push reads the machine identity under the configured root: the same machine as the activation.
        try FileManager.default.createDirectory(atPath: site + "/etc", withIntermediateDirectories: true)
        try FileManager.default.copyItem(atPath: server.root + "/etc/machine-id", toPath: site + "/etc/machine-id")
        let config = scratch.appending("agent.conf")
        try """
        root = \(site)
        repository = \(scratch.appending("repo"))
        key-file = \(scratch.appending("repo.key"))
        [accounts]
        alice = /home/alice
        [database]
        enabled = no
        [offsite]
        target = sftp://nobody@127.0.0.1:1/offsite

        """.write(toFile: config, atomically: true, encoding: .utf8)
        #expect(try agent(["repo", "init", "--config", config]).status == 0)
        let backup = try agent(["backup", "--config", config])
        #expect(backup.status == 0, "\(backup.stderr)")
        #expect(try agent(["snapshots", "--config", config]).stdout.contains("alice"))
        #expect(try agent(["verify", "--config", config]).status == 0)
        #expect(try agent(["restore", "latest", "--config", config, "--account", "alice", "--kind", "files", "--target", scratch.appending("out")]).status == 0)
        let push = try agent(["offsite", "push", "--config", config, "--state", server.state])
        #expect(push.status == 1)
        #expect(push.stderr.contains("revoked") && push.stderr.contains("Local backups and restores are not affected"), "\(push.stderr)")
        restarted.stop()
    }

    @Test func seatLimitAndAFourthMoveWithinThirtyDaysIsRefused() throws {
        let controller = try RunningController()
        let scratch = TemporaryDirectory(prefix: "fk-e2e-licence")
        let key = try Self.issue(controller, maxServers: 1)
        let licenceID = String(key.dropFirst(3).prefix(5))
        let servers = try (0..<5).map { try Server(controller, in: scratch, name: "s\($0)") }
        #expect(try servers[0].licence(["activate", key]).status == 0)
        let full = try servers[1].licence(["activate", key])
        #expect(full.status == 1 && full.stderr.contains("no free seat") && full.stderr.contains("deactivate-server"), "\(full.stderr)")
        for index in 1...3 {
            #expect(try controller.controller(["licence", "deactivate-server", licenceID, "--agent", try servers[index - 1].agentID]).status == 0)
            let moved = try servers[index].licence(["activate", key])
            #expect(moved.status == 0, "move \(index): \(moved.stderr)")
        }
        #expect(try controller.controller(["licence", "deactivate-server", licenceID, "--agent", try servers[3].agentID]).status == 0)
        let fourth = try servers[4].licence(["activate", key])
        #expect(fourth.status == 1)
        #expect(fourth.stderr.contains("limit 3 per 30 days") && fourth.stderr.contains("next move is possible at"), "\(fourth.stderr)")
        let shown = try Self.json(try controller.controller(["licence", "show", licenceID, "--json"]))
        let kinds = (shown["history"] as? [[String: Any]])?.compactMap { $0["kind"] as? String } ?? []
        #expect(kinds.filter { $0 == "moved" }.count == 3 && kinds.contains("activated") && kinds.contains("deactivated"))
    }

    @Test func controllerOutageGoesValidGraceExpiredAndBackToValid() throws {
        let controller = try RunningController()
        #expect(try controller.controller(["licence", "policy", "--lease-duration", "1d"]).status == 0)
        let scratch = TemporaryDirectory(prefix: "fk-e2e-licence")
        let server = try Server(controller, in: scratch, name: "web1")
        #expect(try server.licence(["activate", try Self.issue(controller)]).status == 0)
        #expect(controller.server.stop() == 0)
        let day: Int64 = 86400
        #expect(try server.status(offset: day / 2)["status"] as? String == "valid")
        let grace = try server.status(offset: 2 * day)
        #expect(grace["status"] as? String == "grace", "\(grace)")
        #expect((grace["nextStep"] as? String)?.contains("reachable") == true)
        let expired = try server.status(offset: 8 * day + day / 2)
        #expect(expired["status"] as? String == "expired", "\(expired)")
        // The controller comes back (its clock moved on too): the next heartbeat renews the lease.
        let offset = String(8 * day + day / 2)
        let restarted = try BackgroundProcess(RunningController.bin + "/fleetkeep-controller",
                                              ["serve", "--data", controller.data.path, "--listen", "127.0.0.1:\(controller.port)"],
                                              environment: ["FLEETKEEP_CLOCK_OFFSET": offset])
        try restarted.waitForOutput { $0.contains("listening on") }
        try server.heartbeats(offset: 8 * day + day / 2, until: { $0.contains("licence valid") })
        #expect(try server.status(offset: 8 * day + day / 2)["status"] as? String == "valid")
        restarted.stop()
    }

    @Test func clockTurnedBackIsReported() throws {
        let controller = try RunningController()
        let scratch = TemporaryDirectory(prefix: "fk-e2e-licence")
        let server = try Server(controller, in: scratch, name: "web1")
        #expect(try server.licence(["activate", try Self.issue(controller)]).status == 0)
        #expect(try server.status(offset: 3 * 86400)["status"] as? String == "valid")
        // Three days later the clock says "now" again: back past the last run the agent trusted.
        let rolledBack = try server.status(offset: 0)
        #expect(rolledBack["status"] as? String == "clock-rollback", "\(rolledBack)")
        #expect((rolledBack["nextStep"] as? String)?.contains("NTP") == true)
        let plain = try agent(["status", "--state", server.state, "--root", server.root])
        #expect(plain.stdout.contains("clock-rollback"))
    }

    @Test func forgedTamperedForeignAndOlderLeasesAreRefused() throws {
        let controller = try RunningController()
        let scratch = TemporaryDirectory(prefix: "fk-e2e-licence")
        let key = try Self.issue(controller, maxServers: 2)
        let server = try Server(controller, in: scratch, name: "web1")
        let other = try Server(controller, in: scratch, name: "web2")
        #expect(try server.licence(["activate", key]).status == 0)
        #expect(try other.licence(["activate", key]).status == 0)
        let leasePath = server.state + "/licence.lease"
        let first = try Data(contentsOf: URL(fileURLWithPath: leasePath))
        // Activating again renews: the newer serial is kept, and the first lease is now "older".
        #expect(try server.licence(["activate", key]).status == 0)
        let current = try Data(contentsOf: URL(fileURLWithPath: leasePath))

        let signed = try #require(try JSONSerialization.jsonObject(with: first) as? [String: String])
        let payloadText = try #require(signed["payload"])
        let payloadBytes = try #require(Base64URL.decode(payloadText))
        var payload = try #require(try JSONSerialization.jsonObject(with: Data(payloadBytes)) as? [String: Any])
        payload["tier"] = "unlimited"
        payload["serial"] = 1_000_000
        let tamperedPayload = try JSONSerialization.data(withJSONObject: payload, options: [.sortedKeys])
        let forger = Ed25519PrivateKey()
        let cases: [(String, [String: String], String)] = [
            ("tampered", ["payload": Base64URL.encode(Array(tamperedPayload)), "signature": signed["signature"] ?? ""], "signature"),
            ("forged", ["payload": Base64URL.encode(Array(tamperedPayload)),
                        "signature": Base64URL.encode(try forger.signature(for: Array("FLEETKEEP-LEASE-V1\n".utf8) + Array(tamperedPayload)))], "signature"),
            ("foreign", try #require(try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: other.state + "/licence.lease"))) as? [String: String]), "another agent"),
            ("older", signed, "older"),
        ]
        for (name, lease, reason) in cases {
            let file = scratch.appending(name + ".lease")
            try JSONSerialization.data(withJSONObject: lease).write(to: URL(fileURLWithPath: file))
            let installed = try server.licence(["install", file])
            #expect(installed.status == 1, "\(name) lease was accepted")
            #expect(installed.stderr.contains(reason), "\(name): \(installed.stderr)")
            #expect(try Data(contentsOf: URL(fileURLWithPath: leasePath)) == current, "\(name) lease replaced the stored one")
        }
        // The same leases dropped straight into the state directory are refused when checked.
        for (name, lease, _) in cases {
            try JSONSerialization.data(withJSONObject: lease).write(to: URL(fileURLWithPath: leasePath))
            #expect(try server.status()["status"] as? String == "invalid", "\(name) lease in place was not refused")
        }
        try current.write(to: URL(fileURLWithPath: leasePath))
        #expect(try server.status()["status"] as? String == "valid")
    }

    @Test func aCopiedStateDirectoryOnASecondMachineIsFlaggedAndGetsNoLease() throws {
        let controller = try RunningController()
        let scratch = TemporaryDirectory(prefix: "fk-e2e-licence")
        let server = try Server(controller, in: scratch, name: "web1", machineID: "11111111111111111111111111111111")
        let key = try Self.issue(controller)
        #expect(try server.licence(["activate", key]).status == 0)
        try server.heartbeats()

        // The same state directory copied to a second machine (another machine-id).
        let copyState = scratch.appending("copy-state"), copyRoot = scratch.appending("copy-root")
        #expect(try ProcessRunner.run("/bin/cp", ["-a", server.state, copyState]).status == 0)
        try FileManager.default.createDirectory(atPath: copyRoot + "/etc", withIntermediateDirectories: true)
        try Data("22222222222222222222222222222222\n".utf8).write(to: URL(fileURLWithPath: copyRoot + "/etc/machine-id"))
        let copiedLease = try Data(contentsOf: URL(fileURLWithPath: copyState + "/licence.lease"))
        let daemon = try BackgroundProcess(RunningController.bin + "/fleetkeep-agent", ["run", "--interval", "1s", "--state", copyState, "--root", copyRoot])
        try daemon.waitForOutput(timeout: 30) { $0.components(separatedBy: "heartbeat ok").count > 2 }
        daemon.stop()
        #expect(try Data(contentsOf: URL(fileURLWithPath: copyState + "/licence.lease")) == copiedLease, "the clone was given a lease")
        let copyStatus = try ProcessRunner.run(RunningController.bin + "/fleetkeep-agent", ["licence", "status", "--json", "--state", copyState, "--root", copyRoot])
        let copyReport = try Self.json(copyStatus)
        #expect(copyReport["status"] as? String == "invalid")
        #expect((copyReport["reason"] as? String)?.contains("another machine") == true)
        let activateCopy = try ProcessRunner.run(RunningController.bin + "/fleetkeep-agent", ["licence", "activate", key, "--state", copyState, "--root", copyRoot])
        #expect(activateCopy.status == 1 && activateCopy.stderr.contains("more than one machine"), "\(activateCopy.stderr)")

        let agentID = try server.agentID
        let agents = try #require(try JSONSerialization.jsonObject(with: Data(try controller.controller(["agents", "--json"]).stdout.utf8)) as? [[String: Any]])
        #expect(agents.first { $0["agentID"] as? String == agentID }?["clone"] as? Bool == true)
        #expect(try controller.controller(["agents"]).stdout.contains("CLONE"))
        let report = try #require(try JSONSerialization.jsonObject(with: Data(try controller.controller(["report", "--json"]).stdout.utf8)) as? [[String: Any]])
        #expect(report.first?["clone"] as? Bool == true)
        #expect(try controller.controller(["report"]).stdout.contains("CLONE"))
        // The original machine keeps its lease.
        #expect(try server.status()["status"] as? String == "valid")
    }

    @Test func validationAPIAnswersSignedAndIsRateLimitedPerAddress() throws {
        let controller = try RunningController()
        let client = try controller.client()
        let signingKeyText = try controller.controller(["licence", "signing-key"]).stdout.trimmingCharacters(in: .whitespacesAndNewlines)
        let signingKey = try Ed25519PublicKey(rawRepresentation: try #require(Base64URL.decode(signingKeyText)))
        let published = try JSONSerialization.jsonObject(with: Data(try client.send(method: "GET", path: "/v1/licences/signing-key").body)) as? [String: String]
        #expect(published?["signingKey"] == signingKeyText)

        let valid = try Self.issue(controller, maxServers: 3)
        let revoked = try Self.issue(controller), suspended = try Self.issue(controller)
        #expect(try controller.controller(["licence", "revoke", String(revoked.dropFirst(3).prefix(5))]).status == 0)
        #expect(try controller.controller(["licence", "suspend", String(suspended.dropFirst(3).prefix(5))]).status == 0)

        func validate(_ key: String, from client: HTTPClient) throws -> (Int, [String: Any], HTTPClientResponse) {
            let response = try client.send(method: "POST", path: "/v1/licences/validate", body: Array(try JSONSerialization.data(withJSONObject: ["key": key, "nonce": "n-1"])))
            return (response.status, (try? JSONSerialization.jsonObject(with: Data(response.body)) as? [String: Any]) ?? [:], response)
        }
        func verified(_ body: [String: Any]) throws -> [String: Any] {
            let signedText = try #require(body["signed"] as? String), signatureText = try #require(body["signature"] as? String)
            let signed = try #require(Base64URL.decode(signedText))
            let signature = try #require(Base64URL.decode(signatureText))
            #expect(signingKey.isValidSignature(signature, for: Array("FLEETKEEP-VALIDATION-V1\n".utf8) + signed))
            return try #require(try JSONSerialization.jsonObject(with: Data(signed)) as? [String: Any])
        }
        let (status, body, _) = try validate(valid, from: client)
        #expect(status == 200)
        let answer = try verified(body)
        #expect(answer["status"] as? String == "valid" && answer["tier"] as? String == "standard" && answer["nonce"] as? String == "n-1")
        #expect((answer["servers"] as? [String: Int]) == ["used": 0, "max": 3])
        #expect(try verified(try validate(revoked, from: client).1)["status"] as? String == "revoked")
        #expect(try verified(try validate(suspended, from: client).1)["status"] as? String == "suspended")

        // An unknown key and a known id with the wrong secret get the same answer.
        let unknown = try validate(Self.randomKey(), from: client)
        let wrongSecret = try validate(Self.randomKey(id: String(valid.dropFirst(3).prefix(5))), from: client)
        for (code, response, _) in [unknown, wrongSecret] {
            let opened = try verified(response)
            #expect(code == 200 && opened["status"] as? String == "unknown" && opened["tier"] == nil)
            #expect((opened["servers"] as? [String: Int]) == ["used": 0, "max": 0])
        }

        // Bad requests: clear 4xx, nothing stored changes.
        let before = try controller.controller(["licence", "list", "--json"]).stdout
        let malformed = try validate("FK-NOT-A-KEY", from: client)
        #expect(malformed.0 == 400 && (malformed.1["error"] as? String)?.contains("characters") == true)
        let typo = try validate(String(valid.dropLast()) + (valid.last == "Z" ? "Y" : "Z"), from: client)
        #expect(typo.0 == 400 && (typo.1["error"] as? String)?.contains("check") == true)
        let oversized = try client.send(method: "POST", path: "/v1/licences/validate", body: Array(#"{"key":""#.utf8) + [UInt8](repeating: 65, count: 4096) + Array(#""}"#.utf8))
        #expect(oversized.status == 413)
        let notJSON = try client.send(method: "POST", path: "/v1/licences/validate", body: Array("key=1".utf8))
        #expect(notJSON.status == 400)
        let unknownTier = try controller.controller(["licence", "issue", "--customer", "X", "--email", "x@y.example", "--tier", "gold", "--max-servers", "1"])
        #expect(unknownTier.status == 2 && unknownTier.stderr.contains("unknown tier 'gold'"))
        #expect(try controller.controller(["licence", "list", "--json"]).stdout == before)

        // A burst from 127.0.0.1 is limited (429 with Retry-After) while 127.0.0.2 is still served.
        var limited: HTTPClientResponse?
        for _ in 0..<60 where limited == nil {
            let response = try validate(Self.randomKey(), from: client).2
            if response.status == 429 { limited = response }
        }
        let refused = try #require(limited, "60 requests from one address were never limited")
        #expect(Int(refused.headers["retry-after"] ?? "") ?? 0 >= 1)
        let neighbour = try HTTPClient(configuration: HTTPClientConfiguration(baseURL: "https://127.0.0.1:\(controller.port)", pinnedPublicKeySHA256: controller.pin,
                                                                              timeoutSeconds: 10, retry: .none, localAddress: "127.0.0.2"))
        let served = try validate(valid, from: neighbour)
        #expect(served.0 == 200 && served.1["status"] as? String == "valid")
    }

    /// A well-formed key (its check characters right) that the controller never issued.
    /// A tier's `max-accounts`: a server with more accounts is `over-limit` and loses the tier's features (the push),
    /// while its local status still says what to do. The account count comes from the server's panel (cPanel users).
    @Test func moreAccountsThanTheTierAllowsIsOverLimit() throws {
        let controller = try RunningController()
        let scratch = TemporaryDirectory(prefix: "fk-e2e-licence")
        let server = try Server(controller, in: scratch, name: "web1")
        #expect(try controller.controller(["licence", "tiers", "set", "tiny", "--features", "offsite,max-accounts:2"]).status == 0)
        let key = try Self.issue(controller, tier: "tiny")
        #expect(try server.licence(["activate", key]).status == 0)
        try FileManager.default.createDirectory(atPath: server.root + "/var/cpanel/users", withIntermediateDirectories: true)
        for user in ["alice", "bob"] {
            try Data("HOMEDIR=/home/\(user)\n".utf8).write(to: URL(fileURLWithPath: server.root + "/var/cpanel/users/" + user))
        }
        #expect(try server.status()["status"] as? String == "valid")
        try Data("HOMEDIR=/home/carol\n".utf8).write(to: URL(fileURLWithPath: server.root + "/var/cpanel/users/carol"))
        let over = try server.status()
        #expect(over["status"] as? String == "over-limit")
        #expect((over["reason"] as? String)?.contains("3 hosting accounts") == true, "\(over)")
    }

    static func randomKey(id: String? = nil) -> String {
        let alphabet = Array("0123456789ABCDEFGHJKMNPQRSTVWXYZ")
        let body = (id ?? String((0..<5).map { _ in alphabet.randomElement()! })) + String((0..<20).map { _ in alphabet.randomElement()! })
        let hash = SHA256.hash(Array(("fleetkeep licence key v1\n" + body).utf8))
        let all = Array(body + String(hash.prefix(5).map { alphabet[Int($0 >> 3)] }))
        return "FK-" + stride(from: 0, to: 30, by: 5).map { String(all[$0..<$0 + 5]) }.joined(separator: "-")
    }
}
