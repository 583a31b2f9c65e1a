import CommandLineSupport
import Crypto
import ControllerCore
import FleetkeepProtocol
import Foundation
import Posix

/// The command table: each entry parses its own arguments and returns an exit status.
let commands: [String: ([String]) throws -> Int32] = [
    "init": ControllerCommands.initialize,
    "serve": ControllerCommands.serve,
    "token": ControllerCommands.token,
    "agents": ControllerCommands.agents,
    "report": ControllerCommands.report,
    "recovery-key": RecoveryCommands.recoveryKey,
    "escrow": RecoveryCommands.escrow,
    "licence": LicenceCommands.run,
    "license": LicenceCommands.run,
    "schedule": ScheduleCommands.schedule,
    "group": ScheduleCommands.group,
    "job": JobCommands.job,
    "privacy": PrivacyCommands.run,
    "alerts": AlertCommands.alerts,
    "operator": OperatorCommands.operatorCommand,
    "metrics": OperatorCommands.metrics,
]

CryptoLibrary.disableCleanupAtExit()
// One descriptor per agent connection: the server takes up to 16,384.
ResourceLimits.raiseOpenFilesToHardLimit()
// Before any thread starts (see there): the server's connections (ControllerSetup allows 16,384) and its files.
ResourceLimits.reserveDescriptors(16_384 + 1_024)
exit(CommandRunner.run(program: "fleetkeep-controller", version: FleetkeepVersion.controller, commands: commands, usage: ControllerCommands.usage,
                      help: ControllerHelp.program))
