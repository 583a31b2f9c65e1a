import Foundation
import SFTP
import Testing
import TestSupport

/// Ad-hoc throughput comparison with OpenSSH's `sftp -b` (skipped unless FLEETKEEP_SFTP_BENCH=1; run in release:
/// `FLEETKEEP_SFTP_BENCH=1 swift test -c release --filter ThroughputBenchmark`).
@Suite struct ThroughputBenchmark {
    @Test(.enabled(if: ProcessInfo.processInfo.environment["FLEETKEEP_SFTP_BENCH"] == "1"))
    func upload256MiBVersusOpenSSH() throws {
        let server = try SSHDServer()
        let scratch = TemporaryDirectory()
        let size = 256 << 20
        let data = testBytes(size)
        let local = scratch.appending("source.bin")
        try Data(data).write(to: URL(fileURLWithPath: local))

        let sftp = try SFTPSession.connect(options(for: server))
        var ours: [Double] = []
        for round in 0..<3 {
            let start = ContinuousClock.now
            try sftp.writeFile(server.root + "/ours\(round).bin", data)
            ours.append(Double(size) / 1e6 / (ContinuousClock.now - start).seconds)
        }
        for round in 0..<3 { #expect(localBytes(server.root + "/ours\(round).bin") == data, "round \(round)") }
        var readRates: [Double] = []
        for _ in 0..<2 {
            let start = ContinuousClock.now
            let back = try sftp.readFile(server.root + "/ours0.bin")
            readRates.append(Double(size) / 1e6 / (ContinuousClock.now - start).seconds)
            #expect(back.count == size)
        }

        let knownHosts = scratch.appending("known_hosts")
        try (server.knownHostsLine + "\n").write(toFile: knownHosts, atomically: true, encoding: .utf8)
        let batch = scratch.appending("batch")
        try "put \(local) \(server.root)/openssh.bin\n".write(toFile: batch, atomically: true, encoding: .utf8)
        var theirs: [Double] = []
        for _ in 0..<3 {
            let start = ContinuousClock.now
            let result = try ProcessRunner.run("/usr/bin/sftp", ["-q", "-b", batch, "-i", server.clientKeyPath, "-P", String(server.port),
                                                                 "-o", "UserKnownHostsFile=\(knownHosts)", "-o", "BatchMode=yes",
                                                                 "\(server.user)@127.0.0.1"])
            theirs.append(Double(size) / 1e6 / (ContinuousClock.now - start).seconds)
            #expect(result.status == 0, "\(result.stderr)")
        }
        print("SFTP upload 256 MiB: ours \(ours.map { Int($0) }) MB/s, read back \(readRates.map { Int($0) }) MB/s; sftp -b \(theirs.map { Int($0) }) MB/s")
    }
}

extension Duration {
    var seconds: Double { Double(components.seconds) + Double(components.attoseconds) / 1e18 }
}
