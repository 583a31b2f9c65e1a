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
