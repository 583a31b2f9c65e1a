import AgentCore
import CommandLineSupport
import Crypto
import FleetkeepProtocol
import Foundation
import Posix

/// The command table: each entry parses its own arguments and returns an exit status.
let commands: [String: ([String]) throws -> Int32] = [
    "enroll": AgentCommands.enroll,
    "facts": AgentCommands.facts,
    "run": AgentCommands.run,
    "status": AgentCommands.status,
    "repo": BackupCommands.repo,
    "backup": BackupCommands.backup,
    "snapshots": BackupCommands.snapshots,
    "restore": BackupCommands.restore,
    "verify": BackupCommands.verify,
    "prune": BackupCommands.prune,
    "repair": RepairCommands.repair,
    "offsite": OffsiteCommands.run,
    "escrow": KeyEscrow.command,
    "licence": AgentLicenceCommands.run,
    "license": AgentLicenceCommands.run,
    "telemetry": TelemetryCommands.run,
]

JobChild.bindToParentIfJob()
CryptoLibrary.disableCleanupAtExit()
MemoryTuning.apply()
ResourceLimits.raiseOpenFilesToHardLimit()
// Before any thread starts (see there).
ResourceLimits.reserveDescriptors(4096)
exit(CommandRunner.run(program: "fleetkeep-agent", version: FleetkeepVersion.agent, commands: commands, usage: AgentCommands.usage,
                      help: AgentHelp.program, arguments: RawArguments.current()))
