import ControllerCore
import Foundation
import HTTPServer
import Testing
import TestSupport

/// Access control of the dashboard, at the server: sessions, passwords, CSRF, roles and personal data.
struct DashboardAccessTests {
    @Test func withoutASessionPagesRedirectToLoginAndTheAPISays401() throws {
        let harness = try DashboardHarness()
        for path in ["/", "/agent", "/jobs", "/licences", "/licence", "/agent/confirm"] {
            let response = harness.request("GET", path, query: ["id": "x"])
            #expect(response.status == 303, "\(path)")
            #expect(response.headers["Location"] == "/login", "\(path)")
        }
        // A made-up session cookie is no session.
        #expect(harness.request("GET", "/", cookies: ["__Host-fk-session": "forged"]).headers["Location"] == "/login")
        let live = harness.request("GET", "/jobs/live", query: ["ids": "1"])
        #expect(live.status == 401)
        #expect(live.text.contains("\"error\""))
        // A POST without a session is refused and changes nothing.
        try harness.addAgent("fk-a1", hostname: "web1", lastSeen: harness.clock.now)
        let post = harness.request("POST", "/agent/action", form: [("csrf", "x"), ("id", "fk-a1"), ("action", "backup")])
        #expect(post.status == 403)
        #expect(try harness.jobs.jobs(agentID: nil, states: nil, limit: 10).isEmpty)
        // The login page itself is open, and sets the strict cookie for its form.
        let login = harness.request("GET", "/login")
        #expect(login.status == 200)
        #expect(login.headers["Set-Cookie"]?.contains("HttpOnly; SameSite=Strict") == true)
        #expect(login.headers["Content-Security-Policy"]?.contains("default-src 'none'") == true)
    }

    @Test func signInSetsAStrictSessionCookieAndSignOutEndsIt() throws {
        let harness = try DashboardHarness()
        try harness.addOperator("alice", role: .admin)
        let (status, headers) = try harness.postLogin("alice", password: "a long enough password")
        #expect(status == 303)
        let cookie = try #require(headers["Set-Cookie"])
        #expect(cookie.hasPrefix("__Host-fk-session="))
        for attribute in ["Path=/", "Secure", "HttpOnly", "SameSite=Strict"] { #expect(cookie.contains(attribute), "\(attribute) in \(cookie)") }
        let browser = try harness.signIn("alice")
        #expect(browser.get("/").status == 200)
        let out = browser.post("/logout", [])
        #expect(out.status == 303)
        #expect(out.headers["Set-Cookie"]?.contains("Max-Age=0") == true)
        #expect(browser.get("/").headers["Location"] == "/login", "the session is gone on the server too")
        // A login form whose token does not match its cookie is refused.
        let (forged, _) = try harness.postLogin("alice", password: "a long enough password", csrfMatches: false)
        #expect(forged == 403)
    }

    @Test func wrongPasswordIsRefusedAndSignInIsRateLimited() throws {
        let harness = try DashboardHarness()
        try harness.addOperator("alice", role: .admin)
        let (wrong, wrongHeaders) = try harness.postLogin("alice", password: "not the password", address: "192.0.2.50")
        #expect(wrong == 401)
        #expect(wrongHeaders["Set-Cookie"]?.contains("fk-session") != true)
        let (unknown, _) = try harness.postLogin("mallory", password: "whatever it is", address: "192.0.2.51")
        #expect(unknown == 401, "an unknown name gets the same answer")
        // Five attempts per address and per name, refilled one per 12 s: the sixth is refused even with the right
        // password, and says when to try again.
        for _ in 0..<4 { #expect(try harness.postLogin("alice", password: "guess", address: "192.0.2.50").0 == 401) }
        let (limited, headers) = try harness.postLogin("alice", password: "a long enough password", address: "192.0.2.50")
        #expect(limited == 429)
        #expect(Int(headers["Retry-After"] ?? "") ?? 0 >= 1)
        // The name is limited too, from any address.
        #expect(try harness.postLogin("alice", password: "a long enough password", address: "192.0.2.99").0 == 429)
    }

    /// One address hammering sign-in with made-up names: its attempts past its own limit are refused before they
    /// touch the overall limit, so they cannot use it up and lock every operator out. (The overall bucket used to be
    /// charged first: attempts from one address emptied it.)
    @Test func oneAddressCannotUseUpTheOverallSignInLimit() throws {
        let harness = try DashboardHarness()
        try harness.addOperator("alice", role: .admin)
        // 100: well past the overall burst (20) plus what it refills (5 a second) while they run.
        for attempt in 0..<100 {
            _ = try harness.postLogin("made-up-\(attempt)", password: "whatever it is", address: "192.0.2.66")
        }
        #expect(try harness.postLogin("made-up-x", password: "whatever it is", address: "192.0.2.66").0 == 429)
        #expect(try harness.postLogin("alice", password: "a long enough password", address: "192.0.2.67").0 == 303)
    }

    @Test func aViewerCannotPostActionsNorOpenAdminPages() throws {
        let harness = try DashboardHarness()
        try harness.addOperator("vic", role: .viewer)
        try harness.addAgent("fk-a1", hostname: "web1", lastSeen: harness.clock.now)
        let viewer = try harness.signIn("vic")
        #expect(viewer.get("/").status == 200)
        #expect(viewer.get("/agent", ["id": "fk-a1"]).status == 200)
        let post = viewer.post("/agent/action", [("id", "fk-a1"), ("action", "backup")])
        #expect(post.status == 403)
        #expect(post.text.contains("administrator"))
        #expect(try harness.jobs.jobs(agentID: nil, states: nil, limit: 10).isEmpty, "no job was queued")
        #expect(viewer.post("/licences/new", [("customer", "X"), ("email", "x@example.com"), ("tier", "basic"), ("maxServers", "1"), ("expires", "")]).status == 403)
        for path in ["/licences", "/licences/new", "/agent/confirm"] { #expect(viewer.get(path, ["id": "fk-a1", "action": "backup"]).status == 403, "\(path)") }
        #expect(!viewer.get("/agent", ["id": "fk-a1"]).text.contains("action-backup"), "no buttons for a viewer")
        // A viewer may still sign out (a POST with its CSRF token).
        #expect(viewer.post("/logout", []).status == 303)
    }

    @Test func aMissingOrWrongCSRFTokenIsRefused() throws {
        let harness = try DashboardHarness()
        try harness.addOperator("alice", role: .admin)
        try harness.addAgent("fk-a1", hostname: "web1", lastSeen: harness.clock.now)
        let admin = try harness.signIn("alice")
        let missing = admin.post("/agent/action", [("id", "fk-a1"), ("action", "backup")], csrf: .some(nil))
        #expect(missing.status == 403)
        #expect(missing.text.contains("CSRF"))
        #expect(admin.post("/agent/action", [("id", "fk-a1"), ("action", "backup")], csrf: "wrong-token").status == 403)
        // Another session's token is not this session's.
        let other = try harness.signIn("alice")
        #expect(admin.post("/agent/action", [("id", "fk-a1"), ("action", "backup")], csrf: other.csrf).status == 403)
        #expect(try harness.jobs.jobs(agentID: nil, states: nil, limit: 10).isEmpty)
        // With its own token the same form queues the job, and answers with a redirect to the agent.
        let queued = admin.post("/agent/action", [("id", "fk-a1"), ("action", "backup")])
        #expect(queued.status == 303)
        #expect(queued.headers["Location"] == "/agent?id=fk-a1")
        let jobs = try harness.jobs.jobs(agentID: "fk-a1", states: nil, limit: 10)
        #expect(jobs.count == 1 && jobs.first?.kind == .backup && jobs.first?.origin == "operator")
        // Unexpected or repeated fields are refused, not ignored.
        #expect(admin.post("/agent/action", [("id", "fk-a1"), ("action", "backup"), ("extra", "1")]).status == 400)
        #expect(admin.post("/agent/action", [("id", "fk-a1"), ("action", "backup"), ("action", "verify")]).status == 400)
    }

    @Test func anIdleOrOldSessionIsRefused() throws {
        let harness = try DashboardHarness()
        try harness.addOperator("alice", role: .admin)
        let browser = try harness.signIn("alice")
        harness.clock.now += 29 * 60
        #expect(browser.get("/").status == 200, "used within the idle limit")
        harness.clock.now += 31 * 60
        let expired = browser.get("/")
        #expect(expired.status == 303 && expired.headers["Location"] == "/login", "idle for 31 minutes")
        harness.clock.now += 1
        #expect(browser.get("/").status == 303, "an expired session does not come back")
        // Used every 20 minutes, a session still ends after 12 hours.
        let busy = try harness.signIn("alice")
        for _ in 0..<36 {
            harness.clock.now += 20 * 60
            #expect(busy.get("/jobs").status == 200)
        }
        harness.clock.now += 20 * 60
        #expect(busy.get("/jobs").status == 303)
    }

    @Test func resettingOrRemovingAnOperatorEndsItsSessionsAndLinksWorkOnce() throws {
        let harness = try DashboardHarness()
        let secret = try harness.dashboard.operators.add(name: "bob", role: .admin)
        let setup = harness.request("GET", "/setup", query: ["token": secret])
        #expect(setup.status == 200)
        #expect(setup.text.contains("bob"))
        _ = try harness.dashboard.operators.completeSetup(secret: secret, password: "the own secret password!", confirmation: "the own secret password!")
        #expect(harness.request("GET", "/setup", query: ["token": secret]).status == 404, "a link works once")
        let browser = try harness.signIn("bob", password: "the own secret password!")
        _ = try harness.dashboard.operators.reset(name: "bob")
        #expect(browser.get("/").status == 303, "reset ends the session")
        #expect(try harness.postLogin("bob", password: "the own secret password!").0 == 401, "and the old password")
        try harness.addOperator("carol", role: .viewer)
        let carol = try harness.signIn("carol")
        try harness.dashboard.operators.remove(name: "carol")
        #expect(carol.get("/").status == 303)
        // An expired link is refused.
        let late = try harness.dashboard.operators.add(name: "dave", role: .viewer, linkSeconds: 60)
        harness.clock.now += 61
        #expect(harness.request("GET", "/setup", query: ["token": late]).status == 404)
        // Short passwords and differing confirmations are refused on the page.
        let fresh = try harness.dashboard.operators.reset(name: "dave")
        #expect(throws: DashboardError.self) { try harness.dashboard.operators.completeSetup(secret: fresh, password: "short", confirmation: "short") }
        #expect(throws: DashboardError.self) {
            try harness.dashboard.operators.completeSetup(secret: fresh, password: "long enough password", confirmation: "long enough passw0rd")
        }
    }

    @Test func personalDataIsHiddenFromAViewerAndItsReadIsRecordedForAnAdmin() throws {
        let harness = try DashboardHarness()
        try harness.addOperator("alice", role: .admin)
        try harness.addOperator("vic", role: .viewer)
        try harness.addAgent("fk-a1", hostname: "web1", lastSeen: harness.clock.now, facts: ["primaryIP": "203.0.113.7", "osName": "Debian"])
        let (licence, _) = try harness.service.licences.issue(customer: Customer(name: "Zoë Customer-Fullname", email: "zoe@customer.example"),
                                                              tier: "standard", maxServers: 2, expiresAt: nil)
        try harness.store.database.run("INSERT INTO licence_seats (licence_id, agent_id, machine_hash, activated_at) VALUES (?, 'fk-a1', 'm', ?)",
                                       [.text(licence.id), .integer(harness.clock.now)])
        let privacy = PrivacyService(controllerStore: harness.store)
        let readsBefore = try privacy.store.auditEntries(since: 0).count

        let viewer = try harness.signIn("vic")
        let viewed = viewer.get("/agent", ["id": "fk-a1"]).text
        #expect(viewed.contains(licence.id), "the viewer sees which licence")
        #expect(viewed.contains("Debian"))
        for personal in ["Zoë", "Fullname", "zoe@customer.example", "203.0.113.7"] { #expect(!viewed.contains(personal), "\(personal) shown to a viewer") }
        #expect(!viewer.get("/").text.contains("zoe@"))
        #expect(viewer.get("/licence", ["id": licence.id]).status == 403)
        #expect(try privacy.store.auditEntries(since: 0).count == readsBefore, "a viewer reads nothing personal")

        let admin = try harness.signIn("alice")
        let page = admin.get("/agent", ["id": "fk-a1"]).text
        #expect(page.contains("Zoë Customer-Fullname") && page.contains("zoe@customer.example") && page.contains("203.0.113.7"))
        let detail = admin.get("/licence", ["id": licence.id]).text
        #expect(detail.contains("zoe@customer.example"))
        let entries = Array(try privacy.store.auditEntries(since: 0).dropFirst(readsBefore))
        #expect(entries.count == 2)
        #expect(try privacy.store.verifyAudit().broken == nil)
        #expect(entries.allSatisfy { $0.actor == "operator alice (dashboard)" && $0.at == harness.clock.now })
        #expect(entries.last?.subject.contains("customer") == true)
    }

    @Test func storedStringsAreEscapedEverywhere() throws {
        let harness = try DashboardHarness()
        try harness.addOperator("alice", role: .admin)
        let hostile = "<script>alert(1)</script>\"'><img src=x onerror=alert(2)>"
        try harness.addAgent("fk-evil", hostname: hostile, lastSeen: harness.clock.now - 86400,
                             facts: ["osName": hostile, "kernelRelease": "5.10\u{0}\u{1b}[31m", "panel": "cpanel", "panelVersion": "</td><td class=pwned>"])
        try harness.addFinishedBackup(agent: "fk-evil", state: "failed", finishedAt: harness.clock.now - 60, snapshots: [], error: "<b>disk full</b>")
        let (licence, _) = try harness.service.licences.issue(customer: Customer(name: "<i>Eve</i> & co", email: "eve@x.example"),
                                                              tier: "basic", maxServers: 1, expiresAt: nil)
        try harness.evaluateAlerts()
        let admin = try harness.signIn("alice")
        let pages = [admin.get("/"), admin.get("/", ["q": hostile]), admin.get("/agent", ["id": "fk-evil"]), admin.get("/jobs"),
                     admin.get("/licences"), admin.get("/licence", ["id": licence.id]), admin.get("/agent", ["id": hostile]),
                     admin.get("/agent/confirm", ["id": "fk-evil", "action": "backup"]), admin.get("/alerts"), admin.get("/privacy"),
                     admin.get("/privacy/confirm", ["customer": String(licence.customerID), "action": "erase"])]
        for page in pages {
            let text = page.text
            for raw in ["<script>alert", "<img src=x", "<b>disk", "<i>Eve", "<td class=pwned>", "\u{1b}"] { #expect(!text.contains(raw), "\(raw) unescaped in \(page.status) page") }
        }
        #expect(pages[2].text.contains("&lt;script&gt;alert(1)&lt;/script&gt;&quot;&#39;&gt;"))
        #expect(pages[5].text.contains("&lt;i&gt;Eve&lt;/i&gt; &amp; co"))
        #expect(pages[6].status == 404)
        #expect(pages[8].text.contains("agent &lt;script&gt;alert(1)"), "the stale alert names the host, escaped")
        #expect(pages[10].text.contains("&lt;i&gt;Eve&lt;/i&gt; &amp; co"))
    }

    @Test func formBodiesAreReadStrictly() throws {
        let body = Array("csrf=a%2Bb&name=J%C3%B6rg+Smith".utf8)
        let form = try FormBody(body, contentType: "application/x-www-form-urlencoded; charset=UTF-8", allowed: ["csrf", "name"])
        #expect(form.value("csrf") == "a+b")
        #expect(form.value("name") == "Jörg Smith")
        #expect(throws: DashboardError.self) { try FormBody(body, contentType: "application/json", allowed: ["csrf", "name"]) }
        #expect(throws: DashboardError.self) { try FormBody(body, contentType: "application/x-www-form-urlencoded", allowed: ["csrf"]) }
        #expect(throws: DashboardError.self) { try FormBody(Array("a=1&a=2".utf8), contentType: "application/x-www-form-urlencoded", allowed: ["a"]) }
        #expect(throws: DashboardError.self) { try FormBody([0xff, 0xfe], contentType: "application/x-www-form-urlencoded", allowed: ["a"]) }
        #expect(throws: DashboardError.self) {
            try FormBody(Array(repeating: UInt8(ascii: "a"), count: 17 * 1024), contentType: "application/x-www-form-urlencoded", allowed: ["a"])
        }
    }
}
