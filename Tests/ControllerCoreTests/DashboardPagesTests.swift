import ControllerCore
import Foundation
import HTTPServer
import Testing
import TestSupport

/// What admins do on the pages: start jobs with a confirmation, follow their progress, issue and revoke licences.
struct DashboardPagesTests {
    @Test func jobButtonsConfirmFirstAndQueueWhatTheyName() throws {
        let harness = try DashboardHarness()
        try harness.addOperator("alice", role: .admin)
        try harness.addAgent("fk-a1", hostname: "web1", lastSeen: harness.clock.now)
        try harness.addFinishedBackup(agent: "fk-a1", state: "succeeded", finishedAt: harness.clock.now - 600, snapshots: ["0a1b2c3d4e5f"])
        let admin = try harness.signIn("alice")
        let page = admin.get("/agent", ["id": "fk-a1"]).text
        for action in ["backup", "offsite-push", "verify", "restore"] { #expect(page.contains("id=\"action-\(action)\""), "\(action) button") }
        #expect(page.contains("<option value=\"0a1b2c3d4e5f\">"), "a known snapshot to restore from")

        // The button only opens a confirmation page: nothing is queued by a GET.
        let confirm = admin.get("/agent/confirm", ["id": "fk-a1", "action": "restore", "account": "shop", "snapshot": "0a1b2c3d4e5f"])
        #expect(confirm.status == 200)
        #expect(confirm.text.contains("restore account <strong>shop</strong> from snapshot"))
        #expect(try harness.jobs.jobs(agentID: nil, states: [.queued], limit: 10).isEmpty)
        // Bad values are refused on the confirmation page and in the POST alike.
        #expect(admin.get("/agent/confirm", ["id": "fk-a1", "action": "restore", "account": "../etc"]).status == 400)
        #expect(admin.get("/agent/confirm", ["id": "fk-a1", "action": "restore"]).status == 400)
        #expect(admin.get("/agent/confirm", ["id": "fk-a1", "action": "format-disk"]).status == 400)
        #expect(admin.post("/agent/action", [("id", "fk-a1"), ("action", "restore"), ("account", "shop"), ("snapshot", "not-hex")]).status == 400)
        #expect(admin.post("/agent/action", [("id", "fk-nobody"), ("action", "backup")]).status == 404)

        #expect(admin.post("/agent/action", [("id", "fk-a1"), ("action", "restore"), ("account", "shop"), ("snapshot", "0a1b2c3d4e5f")]).status == 303)
        #expect(admin.post("/agent/action", [("id", "fk-a1"), ("action", "offsite-push")]).status == 303)
        let queued = try harness.jobs.jobs(agentID: "fk-a1", states: [.queued], limit: 10)
        let restore = try #require(queued.first { $0.kind == .restore })
        #expect(restore.parameters.account == "shop" && restore.parameters.snapshot == "0a1b2c3d4e5f")
        let push = try #require(queued.first { $0.kind == .offsitePush })
        #expect(push.parameters.retention != nil, "an off-site push carries the agent's retention, as `job run` gives it")

        // The live endpoint reports their state for the page script; the jobs page lists them.
        let live = admin.get("/jobs/live", ["ids": "\(restore.id),\(push.id),999"])
        #expect(live.status == 200)
        let answer = try #require(try JSONSerialization.jsonObject(with: Data(live.body)) as? [[String: Any]])
        #expect(answer.count == 2)
        #expect(answer.allSatisfy { $0["state"] as? String == "queued" && $0["finished"] as? Bool == false })
        #expect(admin.get("/jobs/live", ["ids": "1,x"]).status == 400)
        #expect(admin.get("/jobs/live", ["ids": (1...51).map(String.init).joined(separator: ",")]).status == 400)
        let jobsPage = admin.get("/jobs").text
        #expect(jobsPage.contains("Queued (2)"))
        #expect(jobsPage.contains("data-job=\"\(restore.id)\""))
    }

    @Test func adminsIssueAndRevokeLicences() throws {
        let harness = try DashboardHarness()
        try harness.addOperator("alice", role: .admin)
        let admin = try harness.signIn("alice")
        #expect(admin.get("/licences/new").text.contains("<option value=\"standard\""))
        let refused = admin.post("/licences/new", [("customer", "Acme"), ("email", "not an email"), ("tier", "standard"), ("maxServers", "3"), ("expires", "")])
        #expect(refused.status == 400)
        #expect(refused.text.contains("not an email address") && refused.text.contains("value=\"Acme\""), "the form comes back with the error and the values")
        #expect(admin.post("/licences/new", [("customer", "Acme"), ("email", "ops@acme.example"), ("tier", "standard"), ("maxServers", "99999999999999999999"),
                                              ("expires", "")]).status == 400)
        #expect(admin.post("/licences/new", [("customer", "Acme"), ("email", "ops@acme.example"), ("tier", "standard"), ("maxServers", "3"),
                                              ("expires", "2020-13-45")]).status == 400)

        let issued = admin.post("/licences/new", [("customer", "Acme Hosting"), ("email", "ops@acme.example"), ("tier", "standard"), ("maxServers", "3"),
                                                  ("expires", "2099-12-31")])
        #expect(issued.status == 200)
        let key = try #require(issued.text.firstMatch(of: /id="licence-key">(FK-[0-9A-Z-]+)</)?.1).description
        let licence = try harness.service.licences.find(key)
        #expect(licence.maxServers == 3 && licence.tier == "standard" && licence.state == .active)
        #expect(admin.get("/licences").text.contains("Acme Hosting"))
        #expect(!admin.get("/licence", ["id": licence.id]).text.contains(key), "the key is shown once only")

        #expect(admin.get("/licence/revoke", ["id": licence.id]).text.contains("is final"))
        #expect(try harness.service.licences.find(licence.id).state == .active, "the confirmation page changes nothing")
        let revoked = admin.post("/licence/revoke", [("id", licence.id)])
        #expect(revoked.status == 303)
        #expect(try harness.service.licences.find(licence.id).state == .revoked)
        let again = admin.post("/licence/revoke", [("id", licence.id)])
        #expect(again.status == 409)
        #expect(again.text.contains("revocation is final"))
        #expect(admin.post("/licence/revoke", [("id", "ZZZZZ")]).status == 404)
    }
}
