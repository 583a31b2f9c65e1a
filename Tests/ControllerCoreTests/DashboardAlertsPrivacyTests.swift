import ControllerCore
import FleetkeepProtocol
import Foundation
import HTTPServer
import Testing
import TestSupport

/// The alerts page and the privacy pages, at the server.
struct DashboardAlertsPrivacyTests {
    /// What the pages show as firing is what the alert evaluation recorded (and notifies about); a resolved alert
    /// moves to the resolved list.
    @Test func alertsComeFromTheAlertEvaluationAndResolve() throws {
        let harness = try DashboardHarness()
        try harness.addOperator("alice", role: .admin)
        try harness.addOperator("vic", role: .viewer)
        try harness.addAgent("fk-a1", hostname: "web1.example", lastSeen: harness.clock.now - 86400)
        try harness.addAgent("fk-a2", hostname: "web2.example", lastSeen: harness.clock.now)
        let viewer = try harness.signIn("vic")
        #expect(!viewer.get("/alerts").text.contains("is stale"), "nothing fires before the evaluation runs")

        try harness.evaluateAlerts()
        let page = viewer.get("/alerts")
        #expect(page.status == 200)
        #expect(page.text.contains("agent web1.example is stale"))
        #expect(!page.text.contains("agent web2.example is stale"))
        #expect(!page.text.contains("Notification channels"), "channels are for administrators")
        #expect(viewer.get("/").text.contains(#"<span class="number bad">1</span> agent-stale"#))
        #expect(viewer.get("/agent", ["id": "fk-a1"]).text.contains("agent web1.example is stale"))
        #expect(!viewer.get("/agent", ["id": "fk-a2"]).text.contains("is stale"))
        let filtered = viewer.get("/alerts", ["condition": "agent-stale"]).text
        #expect(filtered.contains("is stale") && !filtered.contains("off-site push overdue on"))
        #expect(viewer.get("/alerts", ["condition": "offsite-overdue"]).text.contains("off-site push overdue on web1.example"))
        #expect(viewer.get("/alerts", ["condition": "disk-on-fire"]).status == 400)

        // The agent beats again: the next evaluation resolves the alert.
        try harness.store.database.run("UPDATE agents SET last_seen = ? WHERE id = 'fk-a1'", [.integer(harness.clock.now)])
        harness.clock.now += 60
        let transitions = try harness.evaluateAlerts()
        #expect(transitions.resolved.map(\.condition) == [.agentStale])
        let after = viewer.get("/alerts").text
        let resolved = try #require(after.range(of: "Resolved in the last 7 days (1)"))
        #expect(after[resolved.upperBound...].contains("agent web1.example is stale"))
        #expect(!after[..<resolved.lowerBound].contains("is stale"))

        let admin = try harness.signIn("alice")
        #expect(admin.get("/alerts").text.contains("No channel is set up"))
        let alerts = try SQLiteAlertStore(database: harness.store.database)
        _ = try alerts.addChannel(AlertChannel(name: "ops-hook", kind: .webhook, settings: ChannelSettings(url: "https://hooks.example/T0KEN"),
                                               secret: nil, createdAt: harness.clock.now))
        let channels = admin.get("/alerts").text
        #expect(channels.contains("ops-hook") && channels.contains("nothing sent yet"))
        #expect(!channels.contains("T0KEN"), "a channel's URL may hold its secret: it is not shown")
    }

    /// Viewers see the anonymised aggregates only. Administrators see customers; export and erase each need a
    /// confirmation (the erase one, the customer number typed), a CSRF token and an administrator, and each
    /// read or change is in the audit log.
    @Test func privacyPagesExportAndEraseWithConfirmationAndAudit() throws {
        let harness = try DashboardHarness()
        try harness.addOperator("alice", role: .admin)
        try harness.addOperator("vic", role: .viewer)
        try harness.addAgent("fk-a1", hostname: "web1.example", lastSeen: harness.clock.now, facts: ["osName": "Debian", "osVersion": "12"])
        let (licence, _) = try harness.service.licences.issue(customer: Customer(name: "Ada Lovelace", email: "ada@example.org"),
                                                              tier: "standard", maxServers: 3, expiresAt: nil)
        let id = String(licence.customerID)
        let privacy = PrivacyService(controllerStore: harness.store)
        func entries() throws -> [AuditEntry] { try privacy.store.auditEntries(since: 0) }

        let viewer = try harness.signIn("vic")
        let viewed = viewer.get("/privacy")
        #expect(viewed.status == 200)
        #expect(viewed.text.contains("Fleet aggregates") && viewed.text.contains("id=\"aggregate-os\""))
        #expect(!viewed.text.contains("id=\"customers\"") && !viewed.text.contains("id=\"audit\""))
        #expect(viewer.get("/privacy/confirm", ["customer": id, "action": "erase"]).status == 403)
        #expect(viewer.post("/privacy/erase", [("customer", id), ("confirmation", id)]).status == 403)
        #expect(viewer.post("/privacy/export", [("customer", id)]).status == 403)

        let admin = try harness.signIn("alice")
        let list = admin.get("/privacy").text
        #expect(list.contains("id=\"erase-\(id)\"") && list.contains(licence.id))
        #expect(!list.contains("ada@example.org"), "the list itself shows no personal data")
        #expect(admin.get("/privacy", ["k": "1"]).status == 400)
        #expect(admin.get("/privacy/confirm", ["customer": "x1", "action": "erase"]).status == 400)
        #expect(admin.get("/privacy/confirm", ["customer": "99999", "action": "erase"]).status == 404)
        #expect(admin.get("/privacy/confirm", ["customer": id, "action": "sell"]).status == 400)

        let before = try entries().count
        let confirm = admin.get("/privacy/confirm", ["customer": id, "action": "erase"])
        #expect(confirm.text.contains("Ada Lovelace") && confirm.text.contains("ada@example.org"))
        #expect(try entries().count == before + 1, "naming the customer is a recorded read")
        #expect(try entries().last.map { $0.action == "read" && $0.actor == "operator alice (dashboard)" && $0.subject == "customer \(id)" } == true)
        #expect(try privacy.store.customerRecord(licence.customerID)?.erasedAt == nil, "the confirmation page changes nothing")

        #expect(admin.post("/privacy/erase", [("customer", id), ("confirmation", id)], csrf: .some(nil)).status == 403)
        #expect(admin.post("/privacy/erase", [("customer", id), ("confirmation", id)], csrf: "forged").status == 403)
        let unconfirmed = admin.post("/privacy/erase", [("customer", id), ("confirmation", "yes")])
        #expect(unconfirmed.status == 400 && unconfirmed.text.contains("nothing was erased"))
        #expect(try privacy.store.customerRecord(licence.customerID)?.erasedAt == nil)

        let export = admin.post("/privacy/export", [("customer", id)])
        #expect(export.status == 200)
        #expect(export.headers["Content-Disposition"] == "attachment; filename=\"fleetkeep-customer-\(id)-export.json\"")
        #expect(export.headers["Content-Type"]?.hasPrefix("application/json") == true)
        let exported = try JSONSerialization.jsonObject(with: Data(export.body)) as? [String: Any]
        let customer = (exported?["customer"] as? [String: Any])?["customer"] as? [String: Any]
        #expect(customer?["email"] as? String == "ada@example.org")
        #expect(try entries().last?.action == "export")

        let erased = admin.post("/privacy/erase", [("customer", id), ("confirmation", " \(id) ")])
        #expect(erased.status == 200 && erased.text.contains("id=\"erased\""))
        #expect(try privacy.store.customerRecord(licence.customerID)?.erasedAt == harness.clock.now)
        #expect(try harness.service.licences.find(licence.id).state == .revoked)
        #expect(try entries().last.map { $0.action == "erase" && $0.actor == "operator alice (dashboard)" } == true)
        #expect(admin.post("/privacy/erase", [("customer", id), ("confirmation", id)]).status == 410)
        #expect(admin.get("/privacy").text.contains("erased "))
        #expect(admin.get("/privacy", ["verify": "1"]).text.contains("Audit chain verified"))
    }

    /// Host names are stored sealed; searching and sorting by them still work, in SQL.
    @Test func searchAndSortSeeSealedHostNames() throws {
        let harness = try DashboardHarness()
        try harness.addOperator("alice", role: .admin)
        for (id, name) in [("fk-c", "mail.example.org"), ("fk-a", "Zeta.example.net"), ("fk-b", "alpha.example.net")] {
            try harness.addAgent(id, hostname: name, lastSeen: harness.clock.now)
        }
        let stored = try harness.store.database.query("SELECT hostname FROM agents").compactMap { $0.string("hostname") }
        #expect(stored == ["", "", ""], "no host name in the clear")
        let admin = try harness.signIn("alice")
        func hosts(_ query: [String: String]) -> [String] {
            admin.get("/", query).text.matches(of: /<td><a href="\/agent\?id=[^"]+">([^<]+)<\/a>/).map { String($0.1) }
        }
        #expect(hosts(["sort": "host"]) == ["alpha.example.net", "mail.example.org", "Zeta.example.net"], "case-insensitive order")
        #expect(hosts(["sort": "host", "dir": "desc"]) == ["Zeta.example.net", "mail.example.org", "alpha.example.net"])
        #expect(hosts(["q": "example.net"]) == ["alpha.example.net", "Zeta.example.net"])
        #expect(hosts(["q": "ZETA"]) == ["Zeta.example.net"], "search ignores case")
        #expect(hosts(["q": "fk-c"]) == ["mail.example.org"], "agent ids match too")
        #expect(hosts(["q": "%"]).isEmpty, "LIKE wildcards match literally")
    }

    /// Backup results that name accounts show per account and kind on the agent page, and /metrics counts each
    /// overdue account and kind (an agent that reported none is graded per kind from its backup jobs).
    @Test func perAccountResultsShowPerAccountAndCountInMetrics() throws {
        let harness = try DashboardHarness()
        try harness.addOperator("alice", role: .admin)
        try harness.addAgent("fk-a1", hostname: "web1.example", lastSeen: harness.clock.now)
        let now = harness.clock.now
        func result(_ local: String, at: Int64, items: [BackupItemReport]) throws {
            let request = JobResultRequest(jobID: nil, localID: local, kind: .backup, task: nil, slot: nil, succeeded: items.allSatisfy(\.succeeded),
                                           error: nil, snapshots: items.compactMap(\.snapshot), bytesAdded: 1, files: 1, startedAt: at - 60, finishedAt: at, items: items,
                                           repositoryBytes: 4096)
            _ = try harness.jobs.recordResult(agentID: "fk-a1", result: request, now: at, retryJitter: 1)
        }
        // Two days ago everything succeeded. Today alice's and bob's email failed, and carol's files are not named: a
        // run of every account and kind that leaves one out says it is gone from the server.
        try result("run-1", at: now - 2 * 86400, items: ["alice", "bob", "carol"].flatMap { account in
            ["files", "email"].map { BackupItemReport(account: account, kind: $0, succeeded: true) }
        })
        try result("run-2", at: now - 600, items: [BackupItemReport(account: "alice", kind: "files", succeeded: true, snapshot: String(repeating: "a", count: 64)),
                                                   BackupItemReport(account: "alice", kind: "email", succeeded: false, error: "quota exceeded"),
                                                   BackupItemReport(account: "bob", kind: "files", succeeded: true, snapshot: String(repeating: "b", count: 64)),
                                                   BackupItemReport(account: "bob", kind: "email", succeeded: false, error: "mailbox locked"),
                                                   BackupItemReport(account: "carol", kind: "email", succeeded: true)])
        let admin = try harness.signIn("alice")
        let page = admin.get("/agent", ["id": "fk-a1"]).text
        let table = try #require(page.firstMatch(of: /<table id="coverage">(.*?)<\/table>/.dotMatchesNewlines())?.1)
        let rows = table.matches(of: /<tr><td>([a-z]+)<\/td><td>([a-z]+)<\/td><td><span class="badge [a-z]+">([a-z ]+)<\/span>/).map { "\($0.1)/\($0.2)/\($0.3)" }
        #expect(rows == ["alice/email/overdue", "alice/files/ok", "bob/email/overdue", "bob/files/ok", "carol/email/ok"], "\(rows)")
        #expect(page.contains("mailbox locked"))
        // The restore form offers each snapshot with the account and kind it holds, and refuses a mismatch.
        #expect(page.contains("aaaaaaaaaaaa · ") && page.contains(" · alice files</option>") && page.contains(" · bob files</option>"))
        let mismatch = admin.get("/agent/confirm", ["id": "fk-a1", "action": "restore", "account": "alice", "snapshot": String(repeating: "b", count: 64)])
        #expect(mismatch.status == 400 && mismatch.text.contains("holds account bob, not alice"))
        #expect(admin.get("/agent/confirm", ["id": "fk-a1", "action": "restore", "account": "alice", "snapshot": String(repeating: "a", count: 64)]).status == 200)
        #expect(admin.post("/agent/action", [("id", "fk-a1"), ("action", "restore"), ("account", "alice"), ("snapshot", String(repeating: "b", count: 64))]).status == 400)

        let metrics = harness.request("GET", "/metrics", address: "127.0.0.1").text
        #expect(metrics.contains("fleetkeep_backups_overdue 2\n"), "alice's and bob's email")
        #expect(metrics.contains("fleetkeep_agent_oldest_backup_age_seconds{agent=\"fk-a1\"} \(2 * 86400)\n"))
    }
}
