import Foundation
import Testing
import TestSupport

struct PrometheusScrapeTests {
    /// A real Prometheus (Debian's `prometheus`) scrapes a real controller with the documented configuration
    /// (ops/prometheus/prometheus.yml: the controller's own certificate as CA, the bearer token file) and loads the
    /// documented alert rules; the scraped values are the controller's.
    @Test func prometheusScrapesTheControllerWithTheDocumentedConfiguration() throws {
        let prometheus = try #require(ProcessRunner.which("prometheus"), "prometheus is missing: run ops/bootstrap (Debian package prometheus)")
        let promtool = try #require(ProcessRunner.which("promtool"), "promtool is missing: run ops/bootstrap (Debian package prometheus)")
        let data = TemporaryDirectory(prefix: "fk-e2e-prometheus")
        let bin = RunningController.bin
        #expect(try ProcessRunner.run(bin + "/fleetkeep-controller", ["init", "--data", data.path]).status == 0)
        let token = try ProcessRunner.run(bin + "/fleetkeep-controller", ["metrics", "token", "--data", data.path])
        #expect(token.status == 0, "\(token.stderr)")
        let server = try BackgroundProcess(bin + "/fleetkeep-controller", ["serve", "--data", data.path, "--listen", "127.0.0.1:0"])
        let port = try server.waitForListeningPort()
        // One enrolled agent: online (it enrolled just now, within three heartbeat intervals).
        let root = data.appending("root")
        try HostingFixtureTool.create(root, accounts: 1, sizeMB: 1, panel: "cpanel", os: "debian12")
        let tokenText = try ProcessRunner.run(bin + "/fleetkeep-controller", ["token", "create", "--data", data.path]).stdout
        let enrolled = try agent(["enroll", tokenText.trimmingCharacters(in: .whitespacesAndNewlines), "--state", data.appending("agent"), "--root", root])
        #expect(enrolled.status == 0, "\(enrolled.stderr)")

        // The documented files, pointed at this controller and scraping every second.
        let example = ProcessRunner.packageRoot + "/ops/prometheus"
        let config = try String(contentsOfFile: example + "/prometheus.yml", encoding: .utf8)
            .replacingOccurrences(of: "/etc/prometheus/fleetkeep/tls.crt", with: data.appending("tls.crt"))
            .replacingOccurrences(of: "/etc/prometheus/fleetkeep/metrics.token", with: data.appending("metrics.token"))
            .replacingOccurrences(of: "ctl.example.net:8443", with: "127.0.0.1:\(port)")
            .replacingOccurrences(of: "interval: 30s", with: "interval: 1s")
            .replacingOccurrences(of: "- fleetkeep-alerts.yml", with: "- \(example)/fleetkeep-alerts.yml")
        let configPath = data.appending("prometheus.yml")
        try Data(config.utf8).write(to: URL(fileURLWithPath: configPath))
        let checked = try ProcessRunner.run(promtool, ["check", "config", configPath])
        #expect(checked.status == 0, "\(checked.stdout) \(checked.stderr)")

        let webPort = try freePort()
        let scraper = try BackgroundProcess(prometheus, ["--config.file=\(configPath)", "--storage.tsdb.path=\(data.appending("tsdb"))",
                                                         "--web.listen-address=127.0.0.1:\(webPort)"])
        func query(_ expression: String) throws -> [[String: Any]] {
            var components = URLComponents(string: "http://127.0.0.1:\(webPort)/api/v1/query")
            components?.queryItems = [URLQueryItem(name: "query", value: expression)]
            let answer = try ProcessRunner.run("/usr/bin/curl", ["-sf", components?.string ?? ""])
            let object = try? JSONSerialization.jsonObject(with: Data(answer.stdout.utf8)) as? [String: Any]
            return ((object?["data"] as? [String: Any])?["result"] as? [[String: Any]]) ?? []
        }
        func value(_ sample: [String: Any]?) -> String? { (sample?["value"] as? [Any])?.last as? String }
        let deadline = Date().addingTimeInterval(40)
        var online: String?
        while Date() < deadline, online == nil {
            Thread.sleep(forTimeInterval: 0.5)
            online = value(try query(#"fleetkeep_agents{state="online"}"#).first)
        }
        #expect(online == "1", "Prometheus did not scrape the controller:\n\(scraper.output)")
        #expect(value(try query(#"up{job="fleetkeep-controller"}"#).first) == "1")
        #expect(value(try query(#"fleetkeep_agent_backups{state="pending"}"#).first) == "1")
        let rules = try ProcessRunner.run("/usr/bin/curl", ["-sf", "http://127.0.0.1:\(webPort)/api/v1/rules"]).stdout
        for rule in ["FleetkeepBackupOverdue", "FleetkeepControllerDown", "FleetkeepAgentsStale"] { #expect(rules.contains(rule), "\(rule) not loaded") }
        scraper.stop()
        server.stop()
    }

    /// A loopback port nobody listens on right now.
    func freePort() throws -> Int {
        let output = try ProcessRunner.run("/usr/bin/python3", ["-c", "import socket; s = socket.socket(); s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])"])
        guard let port = Int(output.stdout.trimmingCharacters(in: .whitespacesAndNewlines)) else { throw TestFailure("no free port: \(output.stderr)") }
        return port
    }
}
