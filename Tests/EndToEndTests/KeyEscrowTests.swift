import Foundation
import Testing
import TestSupport

struct KeyEscrowTests {
    @Test func escrowedRepositoryKeyOpensOnlyWithTheOperatorsRecoveryKey() throws {
        let controller = try RunningController()
        let scratch = TemporaryDirectory(prefix: "fk-escrow")
        let recoveryFile = scratch.appending("recovery.key")
        let created = try ProcessRunner.run(RunningController.bin + "/fleetkeep-controller", ["recovery-key", "create", "--out", recoveryFile])
        #expect(created.status == 0, "\(created.stderr)")
        let publicKey = try #require(created.stdout.split(separator: "\n").first { $0.hasPrefix("recovery public key: ") }.map { String($0.dropFirst(21)) })

        let state = scratch.appending("state"), keyFile = scratch.appending("repo.key")
        #expect(try agent(["enroll", try controller.token(), "--state", state]).status == 0)
        #expect(try agent(["repo", "init", "--repo", scratch.appending("repo"), "--key-file", keyFile]).status == 0)

        // Before the operator configures a recovery key the agent is told what is missing.
        let early = try agent(["escrow", "--state", state, "--key-file", keyFile])
        #expect(early.status == 1)
        #expect(early.stderr.contains("recovery-key"))

        #expect(try controller.controller(["recovery-key", "set", publicKey]).status == 0)
        let escrowed = try agent(["escrow", "--state", state, "--key-file", keyFile])
        #expect(escrowed.status == 0, "\(escrowed.stderr)")

        let agentID = try #require(try JSONSerialization.jsonObject(with: Data(try controller.controller(["agents", "--json"]).stdout.utf8)) as? [[String: Any]]).first?["agentID"] as? String
        let recovered = scratch.appending("recovered.key")
        let opened = try controller.controller(["escrow", "open", try #require(agentID), "--recovery-key", recoveryFile, "--out", recovered])
        #expect(opened.status == 0, "\(opened.stderr)")
        #expect(FileManager.default.contents(atPath: recovered) == FileManager.default.contents(atPath: keyFile))

        // Another recovery key (an attacker who copied the controller database has none) cannot open it.
        let otherFile = scratch.appending("other.key")
        _ = try ProcessRunner.run(RunningController.bin + "/fleetkeep-controller", ["recovery-key", "create", "--out", otherFile])
        let refused = try controller.controller(["escrow", "open", agentID!, "--recovery-key", otherFile, "--out", scratch.appending("x")])
        #expect(refused.status == 1)
        #expect(refused.stderr.contains("does not open"))
    }

    @Test func offsitePushEscrowsTheKeyOfAnEnrolledAgent() throws {
        let controller = try RunningController()
        let sshd = try SSHDServer()
        defer { sshd.stop() }
        let scratch = TemporaryDirectory(prefix: "fk-escrow-push")
        let recoveryFile = scratch.appending("recovery.key")
        let created = try ProcessRunner.run(RunningController.bin + "/fleetkeep-controller", ["recovery-key", "create", "--out", recoveryFile])
        let publicKey = try #require(created.stdout.split(separator: "\n").first { $0.hasPrefix("recovery public key: ") }.map { String($0.dropFirst(21)) })
        #expect(try controller.controller(["recovery-key", "set", publicKey]).status == 0)

        let state = scratch.appending("state"), keyFile = scratch.appending("repo.key"), site = scratch.appending("site")
        try FileManager.default.createDirectory(atPath: site + "/home/alice/public_html", withIntermediateDirectories: true)
        try Data("<?php echo 1;".utf8).write(to: URL(fileURLWithPath: site + "/home/alice/public_html/index.php"))
        let config = scratch.appending("agent.conf")
        try """
        root = \(site)
        repository = \(scratch.appending("repo"))
        key-file = \(keyFile)
        [accounts]
        alice = /home/alice
        [database]
        enabled = no
        [offsite]
        target = sftp://\(sshd.user)@127.0.0.1:\(sshd.port)\(sshd.root)/offsite
        host-key = \(sshd.hostKeyFingerprintSHA256)
        identity = \(sshd.clientKeyPath)

        """.write(toFile: config, atomically: true, encoding: .utf8)
        #expect(try agent(["repo", "init", "--config", config]).status == 0)
        let backedUp = try agent(["backup", "--config", config])
        #expect(backedUp.status == 0, "\(backedUp.stderr)")

        // Not enrolled, so not licensed: off-site pushes are a tier feature and are refused, saying why.
        let unenrolled = try agent(["offsite", "push", "--config", config, "--state", state])
        #expect(unenrolled.status == 1, "\(unenrolled.stderr)")
        #expect(unenrolled.stderr.contains("unlicensed"), "\(unenrolled.stderr)")

        #expect(try agent(["enroll", try controller.token(), "--state", state, "--root", site]).status == 0)
        let key = try controller.controller(["licence", "issue", "--customer", "Acme", "--email", "ops@acme.example", "--tier", "standard",
                                             "--max-servers", "1"]).stdout.trimmingCharacters(in: .whitespacesAndNewlines)
        let activated = try agent(["licence", "activate", key, "--state", state, "--root", site])
        #expect(activated.status == 0, "\(activated.stderr)")
        let pushed = try agent(["offsite", "push", "--config", config, "--state", state])
        #expect(pushed.status == 0, "\(pushed.stderr)")
        #expect(pushed.stdout.contains("escrowed"), "\(pushed.stdout)")

        let agentID = try #require(try JSONSerialization.jsonObject(with: Data(try controller.controller(["agents", "--json"]).stdout.utf8)) as? [[String: Any]]).first?["agentID"] as? String
        let recovered = scratch.appending("recovered.key")
        let opened = try controller.controller(["escrow", "open", try #require(agentID), "--recovery-key", recoveryFile, "--out", recovered])
        #expect(opened.status == 0, "\(opened.stderr)")
        #expect(FileManager.default.contents(atPath: recovered) == FileManager.default.contents(atPath: keyFile))
    }
}
