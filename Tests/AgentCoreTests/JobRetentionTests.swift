@testable import AgentCore
import BackupEngine
import CommandLineSupport
import FleetkeepProtocol
import Foundation
import Scheduling
import Testing
import TestSupport

/// The controller's retention (`schedule set --keep-files ...`) reaches the jobs the agent runs, and `prune` applies it.
struct JobRetentionTests {
    func job(_ kind: JobKind) -> JobAssignment { JobAssignment(id: 1, kind: kind, parameters: JobParameters(), timeoutSeconds: 60, attempt: 1) }

    @Test func pruneAndPushJobsCarryThePolicysRetention() {
        var policy = SchedulePolicy.hosting
        policy.retention = RetentionSettings(filesDays: 45, databasesDays: 14, emailDays: 2, offsiteWeeks: 8)
        #expect(JobAgent.arguments(for: job(.prune), localID: nil, policy: policy, stateDirectory: "/s")
                == ["prune", "--keep-files", "45", "--keep-databases", "14", "--keep-email", "2"])
        #expect(JobAgent.arguments(for: job(.offsitePush), localID: nil, policy: policy, stateDirectory: "/s") == ["offsite", "push", "--keep-weekly", "8"])
        // No policy saved yet: the agent's own configuration decides.
        #expect(JobAgent.arguments(for: job(.prune), localID: nil, policy: nil, stateDirectory: "/s") == ["prune"])
    }

    @Test func pruneKeepsTheDaysItIsGivenAndRefusesNonsense() throws {
        let scratch = TemporaryDirectory(prefix: "fk-keep")
        let home = scratch.appending("home/alice")
        try FileManager.default.createDirectory(atPath: home, withIntermediateDirectories: true)
        try Data("a".utf8).write(to: URL(fileURLWithPath: home + "/index.html"))
        let config = scratch.appending("agent.conf")
        try Data("root = \(scratch.path)\nrepository = \(scratch.appending("repo"))\nkey-file = \(scratch.appending("key"))\n[database]\nenabled = no\n[accounts]\nalice = /home/alice\n".utf8)
            .write(to: URL(fileURLWithPath: config))
        #expect(try BackupCommands.repo(["init", "--config", config]) == 0)
        #expect(try BackupCommands.backup(["--config", config, "--kind", "files"]) == 0)
        #expect(try BackupCommands.prune(["--config", config, "--keep-files", "7", "--dry-run"]) == 0)
        for bad in ["0", "-1", "99999999999999999999", "x"] {
            #expect(throws: UsageError.self, "\(bad)") { try BackupCommands.prune(["--config", config, "--keep-files", bad]) }
        }
    }
}
