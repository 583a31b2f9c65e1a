import Foundation
import Testing
import TestSupport

/// What the browser test needs from Debian: `chromium`, `chromium-driver` and `python3-selenium` (ops/bootstrap
/// installs them).
enum BrowserSupport {
    static let python = "/usr/bin/python3"
    static let missing: [String] = {
        var missing: [String] = []
        if !FileManager.default.isExecutableFile(atPath: "/usr/bin/chromium") { missing.append("chromium") }
        if !FileManager.default.isExecutableFile(atPath: "/usr/bin/chromedriver") { missing.append("chromium-driver") }
        let selenium = (try? ProcessRunner.run(python, ["-c", "import selenium"]))?.status
        if selenium != 0 { missing.append("python3-selenium") }
        return missing
    }()
    static var available: Bool { missing.isEmpty }
}

struct DashboardBrowserTests {
    /// In a real headless Chromium: set the password through the one-time link, sign in (a wrong password first),
    /// open the overview and the agent page, start a backup with the button and its confirmation, watch the page
    /// until the job says "succeeded" (a real agent daemon runs it), then sign out. Screenshots of each page go to
    /// `.build/dashboard-screenshots/`.
    @Test(.enabled(if: BrowserSupport.available,
                   "skipped: Debian packages \(BrowserSupport.missing.joined(separator: ", ")) are not installed and could not be; run ops/bootstrap as root"))
    func signInStartABackupWatchItSucceedAndSignOut() throws {
        let fleet = try JobFleet()
        try fleet.startAgent()
        let added = try fleet.controller.controller(["operator", "add", "alice", "--role", "admin"])
        #expect(added.status == 0, "\(added.stderr)")
        let link = try #require(added.stdout.firstMatch(of: /https:\/\/\S+\/setup\?token=\S+/)).0
        let screenshots = ProcessRunner.packageRoot + "/.build/dashboard-screenshots"
        try? FileManager.default.removeItem(atPath: screenshots)
        try FileManager.default.createDirectory(atPath: screenshots, withIntermediateDirectories: true)

        let started = Date()
        let run = try ProcessRunner.run(BrowserSupport.python, [ProcessRunner.packageRoot + "/Tests/Browser/dashboard_flow.py"], environment: [
            "FK_SETUP_LINK": String(link), "FK_OPERATOR": "alice", "FK_PASSWORD": "a browser's long password", "FK_AGENT_ID": fleet.agentID,
            "FK_SCREENSHOTS": screenshots,
        ])
        print("browser flow (\(String(format: "%.1f", Date().timeIntervalSince(started))) s):\n\(run.stdout)\(run.stderr)")
        #expect(run.status == 0, "\(run.stdout)\n\(run.stderr)\n\(fleet.daemon?.output ?? "")")
        // The job the button started is a real one, run by the agent daemon.
        let jobID = try #require(run.stdout.firstMatch(of: /OK job=(\d+)/)?.1).description
        let job = try fleet.show(try #require(Int64(jobID)))
        #expect(job["state"] as? String == "succeeded")
        #expect(job["origin"] as? String == "operator")
        #expect(((job["outcome"] as? [String: Any])?["snapshots"] as? [String])?.isEmpty == false)
        #expect(fleet.daemon?.output.contains("job \(jobID) started") == true)
        for name in ["2-overview", "3-agent", "5-agent-succeeded", "7-signed-out"] {
            let size = (try? FileManager.default.attributesOfItem(atPath: "\(screenshots)/\(name).png")[.size] as? Int) ?? 0
            #expect(size > 1000, "screenshot \(name).png")
        }
    }
}

struct OperatorCommandTests {
    /// `operator add|list|reset|remove` and `metrics token` on a real data directory.
    @Test func operatorCommandsManageAccountsAndLinks() throws {
        let data = TemporaryDirectory(prefix: "fk-e2e-operators")
        func controller(_ arguments: [String]) throws -> ProcessOutput {
            try ProcessRunner.run(RunningController.bin + "/fleetkeep-controller", arguments + ["--data", data.path])
        }
        #expect(try controller(["init"]).status == 0)
        let noURL = try controller(["operator", "add", "alice", "--role", "admin"])
        #expect(noURL.status != 0 && noURL.stderr.contains("--url"), "no URL known before serve: \(noURL.stderr)")
        let added = try controller(["operator", "add", "alice", "--role", "admin", "--url", "https://dash.example.net/"])
        #expect(added.status == 0, "\(added.stderr)")
        #expect(added.stdout.contains("https://dash.example.net/setup?token="))
        #expect(try controller(["operator", "add", "alice", "--role", "viewer", "--url", "https://x.example"]).stderr.contains("exists already"))
        let badRole = try controller(["operator", "add", "bob", "--role", "root", "--url", "https://x.example"])
        #expect(badRole.status == 2 && badRole.stderr.contains("--role"))
        #expect(try controller(["operator", "add", "bad name", "--role", "viewer", "--url", "https://x.example"]).stderr.contains("operator name"))
        #expect(try controller(["operator", "add", "bob", "--role", "viewer", "--url", "https://x.example", "--expires", "99999999999d"]).status == 2)
        let listed = try controller(["operator", "list", "--json"])
        let operators = try #require(try JSONSerialization.jsonObject(with: Data(listed.stdout.utf8)) as? [[String: Any]])
        #expect(operators.count == 1 && operators.first?["role"] as? String == "admin" && operators.first?["passwordSet"] as? Bool == false)
        let reset = try controller(["operator", "reset", "alice", "--url", "https://dash.example.net"])
        #expect(reset.status == 0 && reset.stdout.contains("/setup?token="))
        #expect(try controller(["operator", "remove", "alice"]).status == 0)
        #expect(try controller(["operator", "remove", "alice"]).stderr.contains("no operator"))
        let token = try controller(["metrics", "token"])
        #expect(token.status == 0)
        let mode = try FileManager.default.attributesOfItem(atPath: data.appending("metrics.token"))[.posixPermissions] as? Int
        #expect(mode == 0o600)
        // A token file others may read stops the controller from serving.
        chmod(data.appending("metrics.token"), 0o644)
        let refused = try controller(["serve", "--listen", "127.0.0.1:0"])
        #expect(refused.status != 0 && refused.stderr.contains("chmod 600"), "\(refused.stderr)")
    }
}
