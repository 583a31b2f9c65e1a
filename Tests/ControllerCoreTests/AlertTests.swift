import ControllerCore
import Crypto
import FleetkeepProtocol
import Foundation
import HTTPClient
import Scheduling
import Testing
import TestSupport

/// A controller database with one enrolled agent, its job store and an alert service on an injected clock.
final class AlertHarness: @unchecked Sendable {
    let controller: ControllerHarness
    let key: Ed25519PrivateKey
    let jobs: SQLiteJobStore
    let service: AlertService
    let agentID: String
    let enrolledAt: Int64
    var localRuns = 0

    init(heartbeatInterval: Int64 = 7 * 86_400, makeSender: (@Sendable (AlertChannel, String) throws -> any AlertSender)? = nil) throws {
        let (harness, key) = try ControllerHarness.enrolled()
        controller = harness
        self.key = key
        agentID = RequestSigning.agentID(for: key.publicKey)
        enrolledAt = harness.clock.now
        // Long enough that the agent never goes stale in these tests unless a test wants it to.
        try harness.store.setSetting("heartbeat_interval", String(heartbeatInterval))
        jobs = try SQLiteJobStore(database: harness.store.database)
        let clock = harness.clock
        service = try AlertService.open(store: harness.store, startedAt: enrolledAt - 86_400 * 30, controllerName: "https://ctl.test:8443",
                                        clock: { clock.now }, makeSender: makeSender ?? AlertChannels.sender)
    }

    var now: Int64 {
        get { controller.clock.now }
        set { controller.clock.now = newValue }
    }

    /// A backup the agent ran (reported as an offline run, the simplest complete result), finished now.
    func backup(_ items: [BackupItemReport]) throws {
        localRuns += 1
        let result = JobResultRequest(jobID: nil, localID: "local-\(localRuns)", kind: .backup, task: .backup, slot: now - 60,
                                      succeeded: items.allSatisfy(\.succeeded), error: nil, snapshots: [], bytesAdded: 1, files: 1,
                                      startedAt: now - 30, finishedAt: now, items: items)
        _ = try jobs.recordResult(agentID: agentID, result: result, now: now, retryJitter: 1)
    }

    /// An operator job that runs once and ends as `succeeded` says.
    @discardableResult
    func job(_ kind: JobKind, succeeded: Bool, attempts: Int = 1, parameters: JobParameters = JobParameters(), error: String = "disk full") throws -> Int64 {
        let id = try #require(try jobs.enqueue(JobDraft(agentID: agentID, kind: kind, parameters: parameters, origin: .operator_, maxAttempts: attempts,
                                                        retryBaseSeconds: 1, timeoutSeconds: 600, notBefore: now), now: now))
        _ = try jobs.dispatch(agentID: agentID, holding: [], now: now)
        let result = JobResultRequest(jobID: id, localID: nil, kind: kind, task: nil, slot: nil, succeeded: succeeded, error: succeeded ? nil : error,
                                      snapshots: [], bytesAdded: 0, files: 0, startedAt: now, finishedAt: now)
        _ = try jobs.recordResult(agentID: agentID, result: result, now: now, retryJitter: 1)
        return id
    }

    func addEmail(_ name: String, smtp: SMTPTestServer, tls: String = "try", caFile: String? = nil, login: (String, String)? = nil) throws {
        let settings = ChannelSettings(url: "smtp://127.0.0.1:\(smtp.port)", from: "fleetkeep@ctl.test", to: ["ops@example.com"],
                                       username: login?.0, tls: tls, caFile: caFile)
        #expect(try service.alerts.addChannel(AlertChannel(name: name, kind: .email, settings: settings, secret: login?.1, createdAt: now)))
    }

    func addWebhook(_ name: String, url: String, secret: String) throws {
        #expect(try service.alerts.addChannel(AlertChannel(name: name, kind: .webhook, settings: ChannelSettings(url: url), secret: secret, createdAt: now)))
    }
}

/// Waits until `condition` holds or `seconds` pass (servers write what they received asynchronously).
func eventually(_ seconds: Double = 10, _ condition: () -> Bool) -> Bool {
    let deadline = Date().addingTimeInterval(seconds)
    while Date() < deadline {
        if condition() { return true }
        Thread.sleep(forTimeInterval: 0.05)
    }
    return condition()
}

@Suite(.serialized) struct AlertTests {
    /// The brief's test: against a real SMTP server (python3-aiosmtpd), an overdue backup sends exactly one email
    /// however often alerts are evaluated, and exactly one "resolved" email follows once a backup succeeds.
    @Test func overdueBackupSendsExactlyOneEmailThenExactlyOneResolvedEmail() throws {
        let smtp = try SMTPTestServer()
        let fleet = try AlertHarness()
        try fleet.addEmail("ops", smtp: smtp)
        // Off-site pushes are not this test's subject.
        _ = try ScheduleService(store: try SQLiteScheduleStore(database: fleet.controller.store.database))
            .update(.fleet, with: PolicyOverride(timings: ["offsite-push": .off]), now: fleet.now)
        try fleet.backup([BackupItemReport(account: "alice", kind: "files", succeeded: true)])

        for hours in [1, 10, 25] {
            fleet.now = fleet.enrolledAt + Int64(hours) * 3600
            #expect(try fleet.service.evaluate(now: fleet.now).isEmpty, "nothing is overdue after \(hours) h")
            #expect(fleet.service.deliverDue(now: fleet.now) == 0)
        }
        fleet.now = fleet.enrolledAt + 27 * 3600
        let fired = try fleet.service.evaluate(now: fleet.now)
        #expect(fired.fired.map(\.key) == ["backup-overdue/\(fleet.agentID)/alice/files"])
        #expect(fleet.service.deliverDue(now: fleet.now) == 1)
        // Evaluated again and again while it holds: no second email.
        for hours in [27, 28, 29] {
            fleet.now = fleet.enrolledAt + Int64(hours) * 3600 + 60
            #expect(try fleet.service.evaluate(now: fleet.now).isEmpty)
            #expect(fleet.service.deliverDue(now: fleet.now) == 0)
        }
        #expect(eventually { smtp.messages.count == 1 })
        let firing = try #require(smtp.messages.first)
        #expect(SMTPTestServer.header("Subject", in: firing)?.hasPrefix("[fleetkeep] FIRING: backup overdue on web1: account alice, files") == true, "\(firing)")
        #expect(SMTPTestServer.header("X-Test-Rcpt-To", in: firing) == "ops@example.com")
        #expect(SMTPTestServer.header("X-Test-Mail-From", in: firing) == "fleetkeep@ctl.test")
        #expect(firing.contains("no successful files backup of account alice within 26 h"))

        fleet.now = fleet.enrolledAt + 30 * 3600
        try fleet.backup([BackupItemReport(account: "alice", kind: "files", succeeded: true)])
        let cleared = try fleet.service.evaluate(now: fleet.now)
        #expect(cleared.resolved.map(\.key) == ["backup-overdue/\(fleet.agentID)/alice/files"] && cleared.fired.isEmpty)
        #expect(fleet.service.deliverDue(now: fleet.now) == 1)
        for minutes in [1, 10, 60] {
            fleet.now = fleet.enrolledAt + 30 * 3600 + Int64(minutes) * 60
            #expect(try fleet.service.evaluate(now: fleet.now).isEmpty)
            #expect(fleet.service.deliverDue(now: fleet.now) == 0)
        }
        #expect(eventually { smtp.messages.count == 2 })
        Thread.sleep(forTimeInterval: 0.5)
        #expect(smtp.messages.count == 2, "exactly one firing and one resolved email:\n\(smtp.messages.joined(separator: "\n----\n"))")
        let resolved = try #require(smtp.messages.last)
        #expect(SMTPTestServer.header("Subject", in: resolved)?.hasPrefix("[fleetkeep] RESOLVED: backup overdue on web1: account alice, files") == true, "\(resolved)")
        #expect(SMTPTestServer.header("X-Test-TLS", in: resolved) == "no", "this server offers no STARTTLS: plain text is the fallback")
        #expect(try fleet.service.alerts.firingAlerts(agentID: nil).isEmpty)
    }

    /// Webhooks: every request carries a signature the receiver verifies (in Python, from the documented recipe);
    /// a 500 is retried within the delivery with the same delivery id; a receiver that refuses the signature
    /// leaves the delivery queued for a later attempt; the resolved event follows the firing one.
    @Test func webhookDeliveriesAreSignedCheckedByTheReceiverAndRetried() throws {
        let secret = "whsec-" + Hex.encode(SecureRandom.bytes(16))
        let receiver = try WebhookTestReceiver(secret: secret, failFirst: 1)
        let fleet = try AlertHarness()
        try fleet.addWebhook("hook", url: receiver.url, secret: secret)
        try fleet.addWebhook("wrong", url: receiver.url, secret: "not-the-receivers-secret")

        let failedJob = try fleet.job(.backup, succeeded: false)
        let fired = try fleet.service.evaluate(now: fleet.now)
        #expect(fired.fired.map(\.key) == ["job-failed/\(fleet.agentID)/backup"])
        #expect(fleet.service.deliverDue(now: fleet.now) == 1, "the good channel delivers; the wrong secret is refused")
        var requests = receiver.requests
        let good = requests.filter { $0["valid"] as? Bool == true }
        #expect(good.count == 2, "a 500 first, then the retry: \(requests)")
        #expect(good.map { $0["status"] as? Int } == [500, 200])
        #expect(Set(good.compactMap { $0["delivery"] as? String }).count == 1, "a retry keeps its delivery id")
        #expect(good.allSatisfy { $0["path"] as? String == "/hooks/fleetkeep?source=test" && $0["contentType"] as? String == "application/json" })
        let refused = requests.filter { $0["valid"] as? Bool == false }
        #expect(refused.count >= 1 && refused.allSatisfy { $0["status"] as? Int == 401 })

        // The same signature computed here (Crypto), over the exact bytes received.
        let delivered = try #require(good.last)
        let body = try #require(delivered["body"] as? String)
        let timestamp = try #require(Int64(delivered["timestamp"] as? String ?? ""))
        #expect(delivered["signature"] as? String == WebhookSender.signature(secret: secret, timestamp: timestamp, body: Array(body.utf8)))
        let payload = try JSONDecoder().decode(WebhookPayload.self, from: Data(body.utf8))
        #expect(payload.version == 1 && payload.controller == "https://ctl.test:8443")
        #expect(payload.events.map(\.event) == [.firing] && payload.events.first?.condition == "job-failed")
        #expect(payload.events.first?.detail.contains("job \(failedJob)") == true && payload.events.first?.detail.contains("disk full") == true)

        // The refused delivery waits for a later attempt, with the receiver's answer recorded.
        let pending = try fleet.service.alerts.deliveries(channel: "wrong", limit: 5)
        #expect(pending.count == 1 && pending.first?.deliveredAt == nil && pending.first?.failedAt == nil)
        #expect(pending.first?.attempts == 1 && (pending.first?.nextAttemptAt ?? 0) > fleet.now)
        #expect(pending.first?.lastError?.contains("HTTP 401") == true, "\(pending)")

        // A later success of the same kind resolves it: one more signed request with the resolved event.
        fleet.now += 600
        try fleet.job(.backup, succeeded: true)
        #expect(try fleet.service.evaluate(now: fleet.now).resolved.map(\.key) == ["job-failed/\(fleet.agentID)/backup"])
        #expect(fleet.service.deliverDue(now: fleet.now) == 1)
        requests = receiver.requests.filter { $0["valid"] as? Bool == true }
        #expect(requests.count == 3)
        let resolved = try JSONDecoder().decode(WebhookPayload.self, from: Data((requests.last?["body"] as? String ?? "").utf8))
        #expect(resolved.events.map(\.event) == [.resolved] && resolved.events.first?.resolvedAt == fleet.now)
    }

    /// Mail over STARTTLS with AUTH: the server's certificate is checked against the channel's CA file; a server
    /// offering STARTTLS with a certificate that does not verify is an error, never a fallback to plain text.
    @Test func emailUsesStartTLSWhereOfferedAndVerifiesTheCertificate() throws {
        let tlsDirectory = TemporaryDirectory(prefix: "fk-smtp-tls")
        let (certificate, key, _) = try makeSelfSignedTLS(in: tlsDirectory.path)
        let smtp = try SMTPTestServer(tls: (certificate, key), login: ("alerts", "s3cret pass"))
        let fleet = try AlertHarness()
        try fleet.addEmail("tls", smtp: smtp, caFile: certificate, login: ("alerts", "s3cret pass"))
        try fleet.service.sendTest(channel: "tls", now: fleet.now)
        #expect(eventually { smtp.messages.count == 1 })
        let message = try #require(smtp.messages.first)
        #expect(SMTPTestServer.header("X-Test-TLS", in: message) == "yes", "STARTTLS was offered, so it was used")
        #expect(SMTPTestServer.header("X-Test-Auth", in: message) == "alerts")
        #expect(SMTPTestServer.header("Subject", in: message) == "[fleetkeep] TEST: test of alert channel tls")

        // The system CA bundle does not know this self-signed certificate: refused, nothing sent in plain text.
        try fleet.addEmail("unverified", smtp: smtp, login: ("alerts", "s3cret pass"))
        #expect(throws: AlertError.self) { try fleet.service.sendTest(channel: "unverified", now: fleet.now) }
        // A wrong password is refused by the server.
        try fleet.addEmail("badpass", smtp: smtp, caFile: certificate, login: ("alerts", "wrong"))
        #expect(throws: AlertError.self) { try fleet.service.sendTest(channel: "badpass", now: fleet.now) }
        Thread.sleep(forTimeInterval: 0.3)
        #expect(smtp.messages.count == 1)
        // `required` refuses a server that offers no STARTTLS.
        let plain = try SMTPTestServer()
        try fleet.addEmail("must-tls", smtp: plain, tls: "required")
        #expect(throws: AlertError.self) { try fleet.service.sendTest(channel: "must-tls", now: fleet.now) }
        #expect(plain.messages.isEmpty)
    }

    /// Each condition fires and resolves, from the data the controller has: stale agents, accounts that stop
    /// succeeding (and accounts that are gone from the server), off-site pushes, final job failures (not retried
    /// ones), failed verifications and test restores. Nothing is evaluated in the grace after a start.
    @Test func everyConditionFiresOnceAndResolves() throws {
        let fleet = try AlertHarness(heartbeatInterval: 300)
        let t0 = fleet.enrolledAt
        func keys(at time: Int64) throws -> [String] {
            fleet.now = time
            return try fleet.service.heldConditions(now: time).map(\.key).sorted()
        }
        let agent = fleet.agentID
        try fleet.backup([BackupItemReport(account: "alice", kind: "files", succeeded: true),
                          BackupItemReport(account: "bob", kind: "files", succeeded: true),
                          BackupItemReport(account: "bob", kind: "databases", succeeded: false, error: "mariadb-dump: access denied")])
        #expect(try keys(at: t0 + 60).isEmpty)
        #expect(try keys(at: t0 + 16 * 60) == ["agent-stale/\(agent)"], "3 intervals of 5 min without a heartbeat")
        // A heartbeat makes it fresh again.
        try ControllerHarnessHeartbeat.send(fleet, at: t0 + 16 * 60)
        #expect(try keys(at: t0 + 17 * 60).isEmpty)

        // bob's databases never succeeded: overdue 26 h after it was first seen, like the others 26 h after success.
        fleet.now = t0 + 20 * 3600
        try ControllerHarnessHeartbeat.send(fleet, at: fleet.now)
        try fleet.backup([BackupItemReport(account: "alice", kind: "files", succeeded: true),
                          BackupItemReport(account: "bob", kind: "files", succeeded: false, error: "disk full"),
                          BackupItemReport(account: "bob", kind: "databases", succeeded: false, error: "access denied")])
        try ControllerHarnessHeartbeat.send(fleet, at: t0 + 27 * 3600)
        #expect(try keys(at: t0 + 27 * 3600) == ["backup-overdue/\(agent)/bob/databases", "backup-overdue/\(agent)/bob/files"])
        let overdue = try fleet.service.heldConditions(now: fleet.now).first { $0.key.hasSuffix("bob/files") }
        #expect(overdue?.detail.contains("last error: disk full") == true)
        // bob left the server: a complete backup no longer names him, so his alerts resolve.
        try fleet.backup([BackupItemReport(account: "alice", kind: "files", succeeded: true)])
        #expect(try keys(at: fleet.now).isEmpty)

        // Failures that will be retried are not alerts; the last attempt's failure is, until a success.
        try fleet.job(.prune, succeeded: false, attempts: 2)
        #expect(try fleet.service.evaluate(now: fleet.now).isEmpty)
        let retry = try #require(try fleet.jobs.jobs(agentID: agent, states: [.queued], limit: 5).first)
        _ = try fleet.jobs.dispatch(agentID: agent, holding: [], now: retry.notBefore)
        _ = try fleet.jobs.recordResult(agentID: agent, result: JobResultRequest(jobID: retry.id, localID: nil, kind: .prune, task: nil, slot: nil,
                                                                                succeeded: false, error: "repository locked", snapshots: [], bytesAdded: 0,
                                                                                files: 0, startedAt: fleet.now, finishedAt: fleet.now), now: fleet.now, retryJitter: 1)
        try fleet.job(.verify, succeeded: false, error: "pack 3f2a damaged")
        try fleet.job(.restore, succeeded: false, parameters: JobParameters(drill: true, drillIndex: 1), error: "restored file differs")
        let failing = try fleet.service.evaluate(now: fleet.now)
        #expect(failing.fired.map(\.key).sorted() == ["job-failed/\(agent)/prune", "verification-failed/\(agent)/restore-drill",
                                                      "verification-failed/\(agent)/verify"])
        #expect(failing.fired.first { $0.key.hasSuffix("/verify") }?.subject.contains("pack 3f2a damaged") == true)
        #expect(try fleet.service.evaluate(now: fleet.now + 30).isEmpty, "fires once")
        try fleet.job(.verify, succeeded: true)
        try fleet.job(.prune, succeeded: true)
        #expect(try fleet.service.evaluate(now: fleet.now).resolved.map(\.key).sorted() == ["job-failed/\(agent)/prune", "verification-failed/\(agent)/verify"])
        try fleet.job(.restore, succeeded: true, parameters: JobParameters(drill: true, drillIndex: 2))
        #expect(try fleet.service.evaluate(now: fleet.now).resolved.map(\.key) == ["verification-failed/\(agent)/restore-drill"])

        // Off-site: none within 8 days of enrollment (the default policy pushes weekly); a push resolves it.
        let later = t0 + 8 * 86_400 + 60
        fleet.now = later
        try ControllerHarnessHeartbeat.send(fleet, at: later)
        try fleet.backup([BackupItemReport(account: "alice", kind: "files", succeeded: true)])
        #expect(try keys(at: later) == ["offsite-overdue/\(agent)"])
        try fleet.job(.offsitePush, succeeded: true)
        #expect(try keys(at: later).isEmpty)
        // With off-site pushes switched off for the fleet there is nothing to be overdue.
        _ = try ScheduleService(store: try SQLiteScheduleStore(database: fleet.controller.store.database))
            .update(.fleet, with: PolicyOverride(timings: ["offsite-push": .off]), now: later)
        fleet.now = later + 9 * 86_400
        try ControllerHarnessHeartbeat.send(fleet, at: fleet.now)
        try fleet.backup([BackupItemReport(account: "alice", kind: "files", succeeded: true)])
        #expect(try keys(at: later + 9 * 86_400).isEmpty)

        // A removed agent's alerts resolve; a freshly started controller evaluates nothing for 3 intervals.
        #expect(try keys(at: later + 9 * 86_400 + 3600) == ["agent-stale/\(agent)"])
        let started = try AlertService.open(store: fleet.controller.store, startedAt: fleet.now, controllerName: "x", clock: { 0 })
        #expect(try started.evaluate(now: fleet.now + 60).isEmpty, "grace after a start: every agent looks stale after an outage")
        #expect(try started.evaluate(now: fleet.now + 15 * 60 + 1).fired.map(\.key) == ["agent-stale/\(agent)"])
        #expect(try fleet.controller.store.removeAgent(agent, now: fleet.now + 16 * 60))
        #expect(try started.evaluate(now: fleet.now + 17 * 60).resolved.map(\.key) == ["agent-stale/\(agent)"])
    }

    /// A delivery that keeps failing backs off (30 s doubling, at most an hour) and is given up after 12 attempts;
    /// a removed channel's deliveries are dropped.
    @Test func failingDeliveriesBackOffAndAreGivenUp() throws {
        // One attempt per delivery, so the queue's own backoff is what is measured.
        let fleet = try AlertHarness(makeSender: { channel, name in
            WebhookSender(url: channel.settings.url, secret: channel.secret ?? "", controller: name, retry: .none)
        })
        // Nothing listens on this port.
        try fleet.addWebhook("down", url: "http://127.0.0.1:9/hook", secret: "0123456789abcdef")
        try fleet.job(.backup, succeeded: false)
        #expect(try fleet.service.evaluate(now: fleet.now).fired.count == 1)
        var waits: [Int64] = []
        for _ in 1...12 {
            let due = try fleet.service.alerts.dueDeliveries(now: Int64.max / 2, limit: 5)
            guard let delivery = due.first else { break }
            fleet.now = max(fleet.now, delivery.nextAttemptAt)
            #expect(fleet.service.deliverDue(now: fleet.now, retryJitter: { 1 }) == 0)
            if let next = try fleet.service.alerts.deliveries(channel: "down", limit: 1).first, next.failedAt == nil {
                waits.append(next.nextAttemptAt - fleet.now)
            }
        }
        #expect(waits == [30, 60, 120, 240, 480, 960, 1920, 3600, 3600, 3600, 3600])
        let last = try #require(try fleet.service.alerts.deliveries(channel: "down", limit: 1).first)
        #expect(last.failedAt != nil && last.attempts == 12 && last.lastError?.contains("could not connect") == true, "\(last)")

        try fleet.addWebhook("gone", url: "http://127.0.0.1:9/hook", secret: "0123456789abcdef")
        try fleet.job(.backup, succeeded: true)
        #expect(try fleet.service.evaluate(now: fleet.now).resolved.count == 1)
        #expect(try fleet.service.alerts.removeChannel("gone", now: fleet.now))
        #expect(try fleet.service.alerts.deliveries(channel: "gone", limit: 5).allSatisfy { $0.failedAt != nil && $0.lastError == "channel removed" })
    }

    /// Mail built from agent data cannot add headers, and non-ASCII subjects are encoded.
    @Test func mailFromAgentDataCannotInjectHeaders() throws {
        let message = MailMessage.text(from: "a@b.example", to: ["c@d.example"], subject: "host evil\r\nBcc: victim@x.example café",
                                       body: "line\r\n.\r\nBcc: x\u{1B}[31m", messageID: "1@x")
        let text = String(decoding: message.data, as: UTF8.self)
        let head = text.components(separatedBy: "\r\n\r\n").first ?? ""
        #expect(!head.contains("\r\nBcc:"), "\(head)")
        #expect(head.contains("Subject: =?UTF-8?B?"))
        #expect(!text.contains("\u{1B}"))
        #expect(!SMTPClient.isValidAddress("a@b.example>\r\nRCPT TO:<x@y.example"))
        #expect(!SMTPClient.isValidAddress("no-at-sign") && SMTPClient.isValidAddress("ops+alerts@example.com"))
    }
}

/// Sends a signed heartbeat through the harness's router, so the agent counts as seen at `time`.
enum ControllerHarnessHeartbeat {
    static func send(_ fleet: AlertHarness, at time: Int64) throws {
        let harness = fleet.controller, key = fleet.key
        let saved = harness.clock.now
        harness.clock.now = time
        defer { harness.clock.now = saved }
        let body = Array(try JSONEncoder().encode(HeartbeatRequest(facts: ["hostname": "web1"], problems: [:])))
        let response = harness.send(APIPath.heartbeat, body: body, headers: try harness.heartbeatHeaders(key: key, body: body, at: time))
        guard response.status == 200 else { throw TestFailure("heartbeat: \(response.status) \(String(decoding: response.body, as: UTF8.self))") }
    }
}

/// `report`: per agent, the last successful backup of each kind with its age, what is overdue, off-site, the last
/// verification, recent failures and the alerts that are firing.
struct BackupReportTests {
    @Test func reportShowsBackupsAgesOverdueVerificationFailuresAndAlerts() throws {
        let fleet = try AlertHarness()
        let t0 = fleet.enrolledAt
        try fleet.backup([BackupItemReport(account: "alice", kind: "files", succeeded: true),
                          BackupItemReport(account: "alice", kind: "email", succeeded: true),
                          BackupItemReport(account: "bob", kind: "files", succeeded: true)])
        fleet.now = t0 + 20 * 3600
        try fleet.backup([BackupItemReport(account: "alice", kind: "files", succeeded: true),
                          BackupItemReport(account: "alice", kind: "email", succeeded: true),
                          BackupItemReport(account: "bob", kind: "files", succeeded: false, error: "disk full")])
        fleet.now = t0 + 21 * 3600
        try fleet.job(.verify, succeeded: true)
        fleet.now = t0 + 22 * 3600
        try fleet.job(.verify, succeeded: false, error: "pack 3f2a damaged")
        try fleet.job(.restore, succeeded: true, parameters: JobParameters(drill: true, drillIndex: 0))
        try fleet.job(.offsitePush, succeeded: true)
        let now = t0 + 27 * 3600
        fleet.now = now
        try fleet.service.evaluate(now: now)

        let rows = try BackupReport.add(to: try FleetReport.rows(store: fleet.controller.store, now: now), service: fleet.service, now: now)
        let report = try #require(rows.first?.backup)
        let files = try #require(report.kinds.first { $0.kind == "files" })
        #expect(files.accounts == 2 && files.lastSuccess?.ageSeconds == 7 * 3600 && files.oldestAccountSuccess?.ageSeconds == 27 * 3600)
        #expect(files.overdueAccounts == ["bob"])
        let email = report.kinds.first { $0.kind == "email" }
        #expect(email?.lastSuccess?.ageSeconds == Int64(7 * 3600))
        #expect(report.overdue == ["bob/files"])
        #expect(report.accounts.first { $0.account == "bob" }?.lastError == "disk full")
        #expect(report.lastOffsitePush?.ageSeconds == Int64(5 * 3600))
        #expect(report.verification.lastVerified?.ageSeconds == Int64(6 * 3600))
        #expect(report.verification.lastRunSucceeded == false && report.verification.lastError == "pack 3f2a damaged")
        #expect(report.verification.lastTestRestore?.ageSeconds == Int64(5 * 3600))
        // Newest first: the verify, and the backup run in which bob's files failed (a run with a failed item fails).
        #expect(report.recentFailures.map(\.kind) == ["verify", "backup"] && report.recentFailures.first?.error == "pack 3f2a damaged", "\(report.recentFailures)")
        #expect(Set(report.alerts.map(\.condition)) == ["backup-overdue", "verification-failed", "job-failed"])

        let text = FleetReport.table(rows) + "\n" + BackupReport.text(rows)
        #expect(text.contains("last backup:      email 7 h ago; files 7 h ago (2 accounts, oldest 27 h)"), "\(text)")
        #expect(text.contains("OVERDUE:          bob/files"))
        #expect(text.contains("last verified:    6 h ago"))
        #expect(text.contains("the latest verify FAILED 5 h ago: pack 3f2a damaged"))
        #expect(text.contains("ALERT:            backup-overdue: backup overdue on web1: account bob, files"))
        // The JSON form carries the same.
        let json = String(decoding: try JSONEncoder().encode(rows), as: UTF8.self)
        #expect(json.contains("\"lastVerified\"") && json.contains("\"overdue\":[\"bob\\/files\"]"))
    }
}
