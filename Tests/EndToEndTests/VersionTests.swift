import FleetkeepProtocol
import Foundation
import Testing
import TestSupport

/// `--version` on both programs: what packaging (`ops/package`) and support scripts read.
struct VersionTests {
    @Test(arguments: [("fleetkeep-agent", FleetkeepVersion.agent), ("fleetkeep-controller", FleetkeepVersion.controller)])
    func versionFlagPrintsTheCompiledVersion(program: String, version: String) throws {
        for spelling in ["--version", "version"] {
            let result = try ProcessRunner.run(ProcessRunner.productsDirectory + "/" + program, [spelling])
            #expect(result.status == 0, "\(result.stderr)")
            #expect(result.stdout == "\(program) \(version)\n")
        }
    }

    @Test func versionRefusesExtraArguments() throws {
        let result = try ProcessRunner.run(ProcessRunner.productsDirectory + "/fleetkeep-agent", ["--version", "--json"])
        #expect(result.status == 2)
        #expect(result.stdout.isEmpty)
        #expect(result.stderr.contains("takes no arguments"))
    }
}

/// Without /proc (a bare chroot, a sandbox) Swift's runtime cannot find the command line and reports no arguments at
/// all, not even the program's name. Both programs must then answer with their usage and exit 2, not crash.
struct MissingProcTests {
    @Test(arguments: ["fleetkeep-agent", "fleetkeep-controller"])
    func withoutProcTheArgumentsAreMissingAndTheProgramSaysHowToUseIt(program: String) throws {
        guard getuid() == 0, let unshare = ProcessRunner.which("unshare") else { return }  // a mount namespace needs root
        let result = try ProcessRunner.run(unshare, ["--mount", "--propagation", "private", "/bin/sh", "-c",
                                                     "mount -t tmpfs none /proc && exec \"$0\" --version",
                                                     ProcessRunner.productsDirectory + "/" + program])
        #expect(result.status == 2, "\(program) without /proc: \(result.stderr)")
        #expect(result.stdout.contains("usage: \(program)"))
    }
}
