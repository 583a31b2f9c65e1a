import Crypto
import Foundation
import Testing
import TestSupport

/// The alert commands and the evaluation inside `serve`, with the real controller binary, a webhook receiver and an
/// SMTP server on loopback.
struct AlertEndToEndTests {
    @Test func serveFiresAndResolvesAStaleAgentAlertThroughTheCommandsChannels() throws {
        let fleet = try JobFleet()
        let smtp = try SMTPTestServer()
        // A generated secret is printed once, then only its fingerprint.
        let added = try fleet.controller.controller(["alerts", "channel", "add", "hook", "--webhook", "http://127.0.0.1:1/placeholder"])
        #expect(added.status == 0, "\(added.stderr)")
        let secret = try #require(added.stdout.firstMatch(of: /shown only now[^:]*: ([A-Za-z0-9_-]{43})/).map { String($0.1) }, "\(added.stdout)")
        #expect(try fleet.controller.controller(["alerts", "channel", "remove", "hook"]).status == 0)
        let receiver = try WebhookTestReceiver(secret: secret)
        let secretFile = fleet.scratch.appending("webhook.secret")
        try Data((secret + "\n").utf8).write(to: URL(fileURLWithPath: secretFile))
        #expect(try fleet.controller.controller(["alerts", "channel", "add", "hook", "--webhook", receiver.url, "--secret-file", secretFile]).status == 0)
        let mail = try fleet.controller.controller(["alerts", "channel", "add", "mail", "--smtp", "smtp://127.0.0.1:\(smtp.port)",
                                                    "--from", "fleetkeep@ctl.test", "--to", "ops@example.com,oncall@example.com"])
        #expect(mail.status == 0, "\(mail.stderr)")
        let listed = try fleet.controller.controller(["alerts", "channel", "list"])
        #expect(listed.stdout.contains("hook  webhook  \(receiver.url)  secret sha256:") && !listed.stdout.contains(secret), "\(listed.stdout)")
        // Refusals name the problem.
        let bad = try fleet.controller.controller(["alerts", "channel", "add", "x", "--smtp", "smtp://u:p@mail.example", "--from", "a@b.example", "--to", "c@d.example"])
        #expect(bad.status == 2 && bad.stderr.contains("no user name or password in the SMTP URL"), "\(bad.stderr)")
        let badTo = try fleet.controller.controller(["alerts", "channel", "add", "x", "--smtp", "smtp://mail.example", "--from", "a@b.example", "--to", "c@d.example>\r\nRCPT"])
        #expect(badTo.status == 2)

        // `alerts test` goes out at once through the named channel.
        let test = try fleet.controller.controller(["alerts", "test", "--channel", "mail"])
        #expect(test.status == 0 && test.stdout.contains("delivered"), "\(test.stdout) \(test.stderr)")
        #expect(eventuallyTrue(10) { smtp.messages.count == 1 })
        #expect(SMTPTestServer.header("X-Test-Rcpt-To", in: smtp.messages.first ?? "") == "ops@example.com,oncall@example.com")
        let failedTest = try fleet.controller.controller(["alerts", "channel", "add", "down", "--webhook", "http://127.0.0.1:1/x", "--secret-file", secretFile])
        #expect(failedTest.status == 0)
        let down = try fleet.controller.controller(["alerts", "test", "--channel", "down"])
        #expect(down.status == 1 && down.stderr.contains("could not connect"), "\(down.stderr)")
        #expect(try fleet.controller.controller(["alerts", "channel", "remove", "down"]).status == 0)

        // The enrolled agent does not run: with 2 s heartbeats it is stale after 6 s, and `serve` (evaluating every
        // 30 s after a grace of 3 intervals) fires once through both channels.
        #expect(eventuallyTrue(60) { receiver.requests.contains { ($0["body"] as? String)?.contains("\"agent-stale\"") == true } }, "\(fleet.controller.server.output)")
        let firing = try #require(receiver.requests.first)
        #expect(firing["valid"] as? Bool == true && firing["event"] as? String == "firing")
        #expect(eventuallyTrue(10) { smtp.messages.count == 2 })
        #expect(SMTPTestServer.header("Subject", in: smtp.messages.last ?? "")?.contains("FIRING: agent host1.fleet.example is stale") == true, "\(smtp.messages.last ?? "")")
        let list = try fleet.controller.controller(["alerts", "list"])
        #expect(list.stdout.contains("agent-stale") && list.stdout.contains("1 firing"), "\(list.stdout)")
        #expect(fleet.controller.server.output.contains("alert firing: agent"))

        // The agent starts beating: the next evaluation resolves it, once.
        try fleet.startAgent()
        #expect(eventuallyTrue(60) { receiver.requests.count >= 2 })
        Thread.sleep(forTimeInterval: 35)
        let requests = receiver.requests
        #expect(requests.count == 2, "one firing, one resolved: \(requests)")
        #expect(requests.last?["event"] as? String == "resolved" && requests.allSatisfy { $0["valid"] as? Bool == true })
        #expect(smtp.messages.count == 3)
        #expect(SMTPTestServer.header("Subject", in: smtp.messages.last ?? "")?.contains("RESOLVED: agent host1.fleet.example is stale") == true)
        let after = try fleet.controller.controller(["alerts", "list", "--all", "--json"])
        let alerts = try JSONSerialization.jsonObject(with: Data(after.stdout.utf8)) as? [[String: Any]]
        #expect(alerts?.count == 1 && alerts?.first?["resolvedAt"] as? Int64 != nil, "\(after.stdout)")
    }
}
