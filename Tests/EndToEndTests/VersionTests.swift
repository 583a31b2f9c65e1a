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
