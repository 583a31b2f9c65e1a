import Crypto
import FleetkeepProtocol
import Foundation
import HTTPClient
import SQLite
import Testing
import TestSupport

/// A hosting server for the privacy tests: its own root (os-release, machine-id, host name) and state directory,
/// enrolled with the real agent binary.
struct PrivacyServer {
    let state: String
    let root: String
    let agentID: String

    init(_ controller: RunningController, in scratch: TemporaryDirectory, name: String, os: (name: String, version: String) = ("Debian GNU/Linux", "12"),
         hostname: String? = nil) throws {
        state = scratch.appending(name + "-state")
        root = scratch.appending(name + "-root")
        try FileManager.default.createDirectory(atPath: root + "/etc", withIntermediateDirectories: true)
        try "NAME=\"\(os.name)\"\nVERSION_ID=\"\(os.version)\"\nID=\(os.name.split(separator: " ").first?.lowercased() ?? "linux")\n"
            .write(toFile: root + "/etc/os-release", atomically: true, encoding: .utf8)
        try (Hex.encode(SecureRandom.bytes(16)) + "\n").write(toFile: root + "/etc/machine-id", atomically: true, encoding: .utf8)
        try ((hostname ?? name + ".hosting.example") + "\n").write(toFile: root + "/etc/hostname", atomically: true, encoding: .utf8)
        let enrolled = try agent(["enroll", try controller.token(), "--state", state, "--root", root])
        guard enrolled.status == 0, let id = enrolled.stdout.firstMatch(of: /enrolled as (fk-[0-9a-f]+)/)?.1 else {
            throw TestFailure("enroll failed: \(enrolled.stderr)")
        }
        agentID = String(id)
    }

    func activate(_ key: String) throws {
        let output = try agent(["licence", "activate", key, "--state", state, "--root", root])
        guard output.status == 0 else { throw TestFailure("licence activate failed: \(output.stdout) \(output.stderr)") }
    }
}

/// The privacy rules end to end: the real controller over loopback HTTPS, real agents.
struct PrivacyEndToEndTests {
    static var repository: String {
        URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent().path
    }

    /// Issues a licence and returns its key and id.
    static func issue(_ controller: RunningController, customer: String, email: String, maxServers: Int = 5) throws -> (key: String, id: String) {
        let output = try controller.controller(["licence", "issue", "--customer", customer, "--email", email, "--tier", "standard",
                                                "--max-servers", String(maxServers)])
        guard output.status == 0 else { throw TestFailure("licence issue failed: \(output.stderr)") }
        let key = output.stdout.trimmingCharacters(in: .whitespacesAndNewlines)
        return (key, String(key.dropFirst(3).prefix(5)))
    }

    static func json(_ output: ProcessOutput) throws -> Any {
        try JSONSerialization.jsonObject(with: Data(output.stdout.utf8))
    }

    static func customerID(_ controller: RunningController, licence: String) throws -> Int64 {
        let shown = try #require(try json(try controller.controller(["licence", "show", licence, "--json"])) as? [String: Any])
        return try #require(shown["customerID"] as? Int64)
    }

    /// The agent's primary address as it reports it (the live system's), if it is not a loopback address.
    static func primaryAddress() throws -> String? {
        let facts = try #require(try json(try agent(["facts", "--json"])) as? [String: Any])
        let address = facts["primaryIP"] as? String
        return address?.hasPrefix("127.") == false ? address : nil
    }

    /// Files whose raw bytes contain `needle`.
    static func filesContaining(_ needle: String, in paths: [String]) -> [String] {
        paths.filter { path in
            guard let data = FileManager.default.contents(atPath: path) else { return false }
            return data.range(of: Data(needle.utf8)) != nil
        }
    }

    static func databaseFiles(_ controller: RunningController) -> [String] {
        ["controller.db", "controller.db-wal", "controller.db-shm"].map { controller.data.appending($0) }
    }

    // MARK: Declaration

    /// An undeclared fact, `problems` key, value shape or telemetry counter is refused with a 400 naming it, and
    /// nothing from the request is stored. The generated docs/PRIVACY.md is current.
    @Test func undeclaredFieldsAndShapesAreRefusedAndNothingIsStored() throws {
        let controller = try RunningController()
        let scratch = TemporaryDirectory(prefix: "fk-e2e-privacy")
        let server = try PrivacyServer(controller, in: scratch, name: "web1")
        let licence = try Self.issue(controller, customer: "Declared Customer", email: "declared@customer.example")
        try server.activate(licence.key)
        let keyText = try String(contentsOfFile: server.state + "/agent.key", encoding: .utf8)
        let signer = SignedRequestEndToEndTests.Agent(id: server.agentID, key: try Ed25519PrivateKey(rawRepresentation: try #require(
            Base64URL.decode(keyText.trimmingCharacters(in: .whitespacesAndNewlines)))))
        let client = try controller.client()
        func post(_ path: String, _ body: String) throws -> (Int, String) {
            let bytes = Array(body.utf8)
            let response = try client.send(method: "POST", path: path, body: bytes, headers: try SignedRequestEndToEndTests.ed25519Headers(signer, path, bytes))
            return (response.status, String(decoding: response.body, as: UTF8.self))
        }
        let before = try controller.controller(["agents", "--json"]).stdout

        let cases: [(String, String, String)] = [
            (APIPath.heartbeat, #"{"facts":{"hostname":"web1","favouriteColour":"blue"},"problems":{}}"#, "favouriteColour"),
            (APIPath.heartbeat, #"{"facts":{"hostname":"web1"},"problems":{"shoeSize":"unreadable"}}"#, "shoeSize"),
            (APIPath.heartbeat, #"{"facts":{"hostname":"web1","primaryIP":"not an address"},"problems":{}}"#, "primaryIP"),
            (APIPath.heartbeat, #"{"facts":{"hostname":"web 1; DROP TABLE"},"problems":{}}"#, "hostname"),
            (APIPath.heartbeat, #"{"facts":{"hostname":"web1","osName":"Debian\u0007"},"problems":{}}"#, "osName"),
            (APIPath.telemetry, #"{"schema":1,"from":1,"to":2,"counters":{"backup.runs":1,"keystrokes":5}}"#, "keystrokes"),
            (APIPath.telemetry, #"{"schema":1,"from":1,"to":2,"counters":{"backup.runs":-4}}"#, "backup.runs"),
            (APIPath.telemetry, #"{"schema":1,"from":1,"to":2,"counters":{"backup.runs":1},"email":"x@y.example"}"#, "email"),
        ]
        for (path, body, field) in cases {
            let (status, text) = try post(path, body)
            #expect(status == 400, "\(path) \(body): \(status) \(text)")
            #expect(text.contains(field), "the error names '\(field)': \(text)")
        }
        #expect(try controller.controller(["agents", "--json"]).stdout == before, "nothing from a refused heartbeat was stored")
        #expect((try Self.json(try controller.controller(["privacy", "telemetry", "--json"])) as? [Any])?.isEmpty == true, "nothing from a refused upload was stored")
        // The controller's log names the refusals with the address cut down.
        #expect(controller.server.output.contains("refused") && controller.server.output.contains("127.0.0.0/24"), "\(controller.server.output)")

        // A declared upload without the customer's consent is refused too (403); with consent it is stored.
        let declared = #"{"counters":{"backup.runs":2},"from":1,"schema":1,"to":2}"#
        let (withoutConsent, refusal) = try post(APIPath.telemetry, declared)
        #expect(withoutConsent == 403 && refusal.contains("consent"), "\(refusal)")
        #expect(try controller.controller(["privacy", "consent", "--licence", licence.id, "--granted", "--by", "Dana Declared"]).status == 0)
        let (status, text) = try post(APIPath.telemetry, declared)
        #expect(status == 200, "\(text)")
        let stored = try #require(try Self.json(try controller.controller(["privacy", "telemetry", "--json"])) as? [[String: Any]])
        #expect(stored.count == 1 && stored.first?["body"] as? String == declared)

        // The inventory command and the generated document agree.
        let markdown = try controller.controller(["privacy", "inventory", "--markdown"])
        let document = try String(contentsOfFile: Self.repository + "/docs/PRIVACY.md", encoding: .utf8)
        #expect(markdown.stdout == document, "docs/PRIVACY.md is stale: run `fleetkeep-controller privacy inventory --markdown > docs/PRIVACY.md`")
        let inventory = try #require(try Self.json(try controller.controller(["privacy", "inventory", "--json"])) as? [[String: Any]])
        let fields = inventory.flatMap { ($0["fields"] as? [[String: Any]]) ?? [] }
        #expect(fields.contains { $0["name"] as? String == "customer.email" && $0["category"] as? String == "personal" })
        #expect(fields.allSatisfy { ($0["purpose"] as? String)?.isEmpty == false && ($0["legalBasis"] as? String)?.isEmpty == false
            && ($0["retention"] as? String)?.isEmpty == false })
    }

    // MARK: Storage

    /// A known customer's name, email and the server's full address appear nowhere in the raw database, WAL or log
    /// files: personal fields are sealed, addresses are cut to /24 except inside the encrypted activation record.
    @Test func rawDatabaseWALAndLogsHoldNoNameEmailOrFullAddress() throws {
        let controller = try RunningController(heartbeatInterval: "1s")
        let scratch = TemporaryDirectory(prefix: "fk-e2e-privacy")
        let name = "Ottoline Quarrington-Vex", email = "ottoline.qv@quarrington.example"
        let server = try PrivacyServer(controller, in: scratch, name: "web1", hostname: "web1.quarrington.example")
        let licence = try Self.issue(controller, customer: name, email: email)
        try server.activate(licence.key)
        let daemon = try BackgroundProcess(RunningController.bin + "/fleetkeep-agent", ["run", "--state", server.state, "--root", server.root, "--interval", "1s"])
        try daemon.waitForOutput { $0.components(separatedBy: "heartbeat ok").count > 3 }
        daemon.stop()
        Thread.sleep(forTimeInterval: 1.5)   // the batched heartbeat write
        // Operator reads go through the same decryption (and are audited).
        let shown = try controller.controller(["licence", "show", licence.id])
        #expect(shown.stdout.contains(name) && shown.stdout.contains(email), "\(shown.stdout)")
        #expect(try controller.controller(["agents"]).stdout.contains("web1.quarrington.example"))

        let address = try Self.primaryAddress()
        let agents = try #require(try Self.json(try controller.controller(["agents", "--json"])) as? [[String: Any]])
        let facts = try #require(agents.first?["facts"] as? [String: String])
        let stored = try #require(facts["primaryIP"])
        #expect(stored.hasSuffix("/24"), "the stored address is cut to its /24: \(stored)")
        if let address { #expect(stored != address && !stored.contains(address)) }
        // The full addresses are in the encrypted activation record only: the export opens it.
        let export = try controller.controller(["privacy", "export", "--customer", String(try Self.customerID(controller, licence: licence.id))])
        #expect(export.stdout.contains("\"requestAddress\" : \"127.0.0.1\""), "\(export.stdout)")
        if let address { #expect(export.stdout.contains("\"serverAddress\" : \"\(address)\"")) }

        let needles = [name, email, "web1.quarrington.example"] + (address.map { [$0] } ?? [])
        let running = Self.databaseFiles(controller) + [controller.server.logPath, daemon.logPath]
        for needle in needles {
            #expect(Self.filesContaining(needle, in: running) == [], "'\(needle)' found in clear while the controller runs")
        }
        #expect(controller.server.output.contains("from 127.0.0.0/24"), "the controller logs the cut-down address: \(controller.server.output)")
        #expect(controller.server.stop() == 0)
        for needle in needles {
            #expect(Self.filesContaining(needle, in: Self.databaseFiles(controller) + [controller.server.logPath]) == [], "'\(needle)' found in clear after stop")
        }
        let keyMode = try FileManager.default.attributesOfItem(atPath: controller.data.appending("privacy.key"))[.posixPermissions] as? Int
        #expect(keyMode == 0o600)
        // The search can fail: the customer's name is in the database when it is stored in clear.
        #expect(Self.filesContaining("standard", in: [controller.data.appending("controller.db")]) != [], "the search sees clear text")
    }

    // MARK: Audit

    /// Reads of personal data are logged; `privacy audit --verify` checks the chain and names an edited row.
    @Test func auditChainRecordsReadsAndDetectsAnEditedRow() throws {
        let controller = try RunningController()
        let licence = try Self.issue(controller, customer: "Audited Customer", email: "audited@customer.example")
        #expect(try controller.controller(["licence", "show", licence.id, "--reason", "ticket 4711"]).status == 0)
        #expect(try controller.controller(["licence", "list"]).status == 0)
        let customer = try Self.customerID(controller, licence: licence.id)
        #expect(try controller.controller(["privacy", "export", "--customer", String(customer), "--reason", "subject access request"]).status == 0)
        #expect(try controller.controller(["privacy", "breach-report", "--since", "2026-01-01"]).status == 0)
        let listing = try #require(try Self.json(try controller.controller(["privacy", "audit", "--verify", "--json"])) as? [String: Any])
        let entries = try #require(listing["entries"] as? [[String: Any]])
        let actions = entries.compactMap { $0["action"] as? String }
        #expect(actions.contains("licence show") && actions.contains("licence list") && actions.contains("export") && actions.contains("breach-report"), "\(actions)")
        #expect(entries.contains { $0["reason"] as? String == "ticket 4711" && $0["subject"] as? String == "customer \(customer)" })
        #expect(listing["verified"] as? Bool == true)
        #expect(try controller.controller(["privacy", "audit", "--since", "2000-01-01"]).stdout.contains("ticket 4711"))

        // Someone with write access to the database changes who read the data.
        let database = try Database(path: controller.data.appending("controller.db"))
        try database.run("UPDATE audit_log SET actor = 'nobody' WHERE id = 2")
        try database.close()
        let verify = try controller.controller(["privacy", "audit", "--verify"])
        #expect(verify.status == 1)
        #expect(verify.stdout.contains("BROKEN at entry 2"), "\(verify.stdout)")
    }

    // MARK: Consent, opt-out and preview

    /// A controller, an agent daemon running jobs, a licence for its customer.
    final class TelemetryFleet {
        let fleet: JobFleet
        let licenceID: String
        var controllerLog: String { fleet.controller.server.output }
        var uploadsReceived: Int { controllerLog.components(separatedBy: "telemetry upload from agent").count - 1 }

        init() throws {
            fleet = try JobFleet()
            let root = fleet.scratch.appending("root")
            try (Hex.encode(SecureRandom.bytes(16)) + "\n").write(toFile: root + "/etc/machine-id", atomically: true, encoding: .utf8)
            let licence = try PrivacyEndToEndTests.issue(fleet.controller, customer: "Telemetry Customer", email: "telemetry@customer.example")
            licenceID = licence.id
            let activated = try agent(["licence", "activate", licence.key, "--state", fleet.statePath, "--root", root])
            guard activated.status == 0 else { throw TestFailure("activate: \(activated.stderr)") }
        }

        func telemetry(_ arguments: [String], environment: [String: String] = [:]) throws -> ProcessOutput {
            try ProcessRunner.run(RunningController.bin + "/fleetkeep-agent", ["telemetry"] + arguments + ["--state", fleet.statePath, "--config", fleet.configPath],
                                  environment: environment)
        }

        func status() throws -> [String: Any] {
            try #require(try JSONSerialization.jsonObject(with: Data(try telemetry(["status", "--json"]).stdout.utf8)) as? [String: Any])
        }

        func consent(_ granted: Bool) throws {
            let output = try fleet.controller.controller(["privacy", "consent", "--licence", licenceID, granted ? "--granted" : "--withdrawn", "--by", "Tess Telemetry"])
            guard output.status == 0 else { throw TestFailure("consent: \(output.stderr)") }
        }

        func startDaemon(interval: String = "1s", environment: [String: String] = [:]) throws -> BackgroundProcess {
            let daemon = try BackgroundProcess(RunningController.bin + "/fleetkeep-agent",
                                               ["run", "--state", fleet.statePath, "--config", fleet.configPath, "--interval", interval],
                                               environment: environment)
            try daemon.waitForOutput { $0.contains("heartbeat ok") }
            fleet.daemon = daemon
            return daemon
        }

        /// Runs one backup job through the daemon and waits for its result.
        func runJob() throws {
            let id = try fleet.queue(["--kind", "backup"])
            try fleet.wait(for: id, states: ["succeeded", "failed"])
        }

        /// Waits until the daemon has answered `count` more heartbeats.
        func heartbeats(_ daemon: BackgroundProcess, _ count: Int) throws {
            let seen = daemon.output.components(separatedBy: "heartbeat ok").count
            try daemon.waitForOutput(timeout: 30) { $0.components(separatedBy: "heartbeat ok").count >= seen + count }
        }

        func waitForConsent(_ granted: Bool) throws {
            let deadline = Date().addingTimeInterval(20)
            while Date() < deadline {
                if try status()["consent"] as? Bool == granted { return }
                Thread.sleep(forTimeInterval: 0.2)
            }
            throw TestFailure("the agent never learned consent = \(granted)")
        }
    }

    /// Without consent nothing is uploaded; after consent, uploads happen; after withdrawal they stop. With
    /// DO_NOT_TRACK=1 or `telemetry = off` there are zero upload requests even with consent. Checked against what the
    /// controller received (its log names every telemetry request, stored or refused).
    @Test func uploadsFollowConsentAndOptOutStopsEveryRequest() throws {
        let fleet = try TelemetryFleet()
        #expect(try fleet.telemetry(["on"]).status == 0)
        var daemon = try fleet.startDaemon()

        // No consent: counters stay local, no request reaches the controller.
        try fleet.runJob()
        try fleet.heartbeats(daemon, 3)
        #expect(fleet.uploadsReceived == 0, "\(fleet.controllerLog)")
        let local = try fleet.status()
        #expect(((local["local"] as? [String: Any])?["counters"] as? [String: Any])?["backup.runs"] as? Int == 1, "\(local)")
        #expect(local["pending"] == nil || local["pending"] is NSNull, "nothing queued for upload without consent: \(local)")

        // Consent: the next job's counters are uploaded.
        try fleet.consent(true)
        try fleet.waitForConsent(true)
        try fleet.runJob()
        try daemon.waitForOutput(timeout: 30) { $0.contains("telemetry uploaded") }
        #expect(fleet.uploadsReceived == 1, "\(fleet.controllerLog)")
        let records = try #require(try JSONSerialization.jsonObject(with: Data(try fleet.fleet.controller.controller(["privacy", "telemetry", "--json"]).stdout.utf8)) as? [[String: Any]])
        #expect(records.count == 1 && (records.first?["body"] as? String)?.contains("\"backup.runs\":1") == true, "\(records)")

        // Withdrawn: no more uploads, and what was queued is dropped.
        try fleet.consent(false)
        try fleet.waitForConsent(false)
        try fleet.runJob()
        try fleet.heartbeats(daemon, 3)
        #expect(fleet.uploadsReceived == 1, "\(fleet.controllerLog)")

        // Consent again, but DO_NOT_TRACK=1: zero requests.
        try fleet.consent(true)
        try fleet.waitForConsent(true)
        daemon.stop()
        daemon = try fleet.startDaemon(environment: ["DO_NOT_TRACK": "1"])
        try fleet.runJob()
        try fleet.heartbeats(daemon, 3)
        #expect(fleet.uploadsReceived == 1, "DO_NOT_TRACK=1: \(fleet.controllerLog)")
        #expect(try fleet.telemetry(["preview"], environment: ["DO_NOT_TRACK": "1"]).stderr.contains("DO_NOT_TRACK"))

        // telemetry = off in agent.conf: zero requests as well.
        daemon.stop()
        let config = try String(contentsOfFile: fleet.fleet.configPath, encoding: .utf8)
        try ("telemetry = off\n" + config).write(toFile: fleet.fleet.configPath, atomically: true, encoding: .utf8)
        daemon = try fleet.startDaemon()
        try fleet.runJob()
        try fleet.heartbeats(daemon, 3)
        #expect(fleet.uploadsReceived == 1, "telemetry = off: \(fleet.controllerLog)")
        daemon.stop()
        let records2 = try #require(try JSONSerialization.jsonObject(with: Data(try fleet.fleet.controller.controller(["privacy", "telemetry", "--json"]).stdout.utf8)) as? [Any])
        #expect(records2.count == 1)
    }

    /// `telemetry preview --json` prints exactly the bytes the controller then receives.
    @Test func previewEqualsWhatTheControllerReceived() throws {
        let fleet = try TelemetryFleet()
        #expect(try fleet.telemetry(["on"]).status == 0)
        try fleet.consent(true)
        // A long interval: after the first heartbeat (which reports consent) the job's counters wait for the next.
        var daemon = try fleet.startDaemon(interval: "10m")
        try fleet.waitForConsent(true)
        try fleet.runJob()
        daemon.stop()
        let preview = try fleet.telemetry(["preview", "--json"])
        #expect(preview.status == 0 && preview.stdout.hasPrefix("{\"counters\":{"), "\(preview.stdout) \(preview.stderr)")
        #expect(!preview.stdout.hasSuffix("\n"))
        daemon = try fleet.startDaemon()
        try daemon.waitForOutput(timeout: 30) { $0.contains("telemetry uploaded") }
        daemon.stop()
        let records = try #require(try JSONSerialization.jsonObject(with: Data(try fleet.fleet.controller.controller(["privacy", "telemetry", "--json"]).stdout.utf8)) as? [[String: Any]])
        #expect(records.count == 1)
        #expect(records.first?["body"] as? String == preview.stdout, "received \(records.first?["body"] ?? "nothing"), previewed \(preview.stdout)")
        // After the upload nothing is queued any more.
        #expect(try fleet.telemetry(["preview", "--json"]).stdout.isEmpty)
    }

    // MARK: Rights

    /// Export, rectify and erase; then the database file is restored from a copy made before the erasure, and the
    /// controller erases the customer again at start (the ledger lives outside the database).
    @Test func exportRectifyEraseAndTheLedgerOutlivesARestoredDatabase() throws {
        let controller = try RunningController()
        let scratch = TemporaryDirectory(prefix: "fk-e2e-privacy")
        let name = "Bartholomew Erasable", email = "bart@erasable.example"
        let server = try PrivacyServer(controller, in: scratch, name: "web1", hostname: "web1.erasable.example")
        let licence = try Self.issue(controller, customer: name, email: email)
        try server.activate(licence.key)
        let other = try Self.issue(controller, customer: "Kept Customer", email: "kept@customer.example")
        #expect(try controller.controller(["privacy", "consent", "--licence", licence.id, "--granted", "--by", "Bart himself"]).status == 0)
        let customer = try Self.customerID(controller, licence: licence.id)

        let exportPath = scratch.appending("export.json")
        #expect(try controller.controller(["privacy", "export", "--customer", String(customer), "--out", exportPath]).status == 0)
        #expect(try FileManager.default.attributesOfItem(atPath: exportPath)[.posixPermissions] as? Int == 0o600)
        let export = try #require(try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: exportPath))) as? [String: Any])
        let person = try #require((export["customer"] as? [String: Any])?["customer"] as? [String: Any])
        #expect(person["name"] as? String == name && person["email"] as? String == email)
        let licences = try #require(export["licences"] as? [[String: Any]])
        #expect(licences.map { $0["id"] as? String } == [licence.id], "only this customer's licences")
        #expect(((licences.first?["consent"] as? [[String: Any]])?.first?["by"] as? String) == "Bart himself")
        #expect((licences.first?["activations"] as? [[String: Any]])?.count == 1)
        let servers = try #require(export["servers"] as? [[String: Any]])
        #expect(servers.first?["hostname"] as? String == "web1.erasable.example" && servers.first?["agentID"] as? String == server.agentID)
        #expect(((export["auditEntries"] as? [[String: Any]]) ?? []).contains { $0["action"] as? String == "export" })

        // Rectify.
        #expect(try controller.controller(["privacy", "rectify", "--customer", String(customer), "--email", "bart@new.example"]).status == 0)
        #expect(try controller.controller(["licence", "show", licence.id]).stdout.contains("bart@new.example"))
        #expect(try controller.controller(["privacy", "rectify", "--customer", String(customer), "--email", "not an email"]).status == 2)

        // A copy of the database from before the erasure (the controller stopped, so the file is complete).
        #expect(controller.server.stop() == 0)
        let backup = scratch.appending("controller.db.backup")
        try FileManager.default.copyItem(atPath: controller.data.appending("controller.db"), toPath: backup)
        var serving = try BackgroundProcess(RunningController.bin + "/fleetkeep-controller",
                                            ["serve", "--data", controller.data.path, "--listen", "127.0.0.1:\(controller.port)"])
        try serving.waitForOutput { $0.contains("listening on") }

        #expect(try controller.controller(["privacy", "erase", "--customer", String(customer)]).status == 0)
        let erased = try #require(try Self.json(try controller.controller(["privacy", "export", "--customer", String(customer)])) as? [String: Any])
        #expect((erased["customer"] as? [String: Any])?["erasedAt"] is Int64)
        #expect((erased["customer"] as? [String: Any])?["customer"] == nil)
        #expect(try controller.controller(["licence", "show", licence.id]).stdout.contains("(erased)"))
        #expect(try controller.controller(["licence", "show", other.id]).stdout.contains("Kept Customer"), "other customers are untouched")
        // Its agent was removed: the next heartbeat is refused, so nothing personal comes back.
        #expect(try controller.controller(["agents", "--json"]).stdout.contains("\"removed\" : true"))
        serving.stop()
        for needle in [name, "bart@new.example", email, "web1.erasable.example"] {
            #expect(Self.filesContaining(needle, in: Self.databaseFiles(controller)) == [], "'\(needle)' left in the database after erasure")
        }
        let ledger = try String(contentsOfFile: controller.data.appending("erasure.ledger"), encoding: .utf8)
        // One line, "<keyed hash> <time>": neither field is the customer's number. (Searching the text for "<number> "
        // failed whenever the hex hash happened to end in that digit.)
        let fields = ledger.split(separator: "\n").first.map { $0.split(separator: " ").map(String.init) } ?? []
        #expect(ledger.split(separator: "\n").count == 1 && !ledger.contains(name))
        #expect(fields.count == 2 && fields[0].count == 64 && fields[0].allSatisfy(\.isHexDigit) && !fields.contains(String(customer)),
                "the ledger line should be a keyed hash and a time: \(ledger)")

        // Restore the old database file: at start the ledger erases the customer again.
        for suffix in ["", "-wal", "-shm"] { try? FileManager.default.removeItem(atPath: controller.data.appending("controller.db" + suffix)) }
        try FileManager.default.copyItem(atPath: backup, toPath: controller.data.appending("controller.db"))
        #expect(Self.filesContaining(name, in: [controller.data.appending("controller.db")]) == [], "the copy holds the name sealed, not in clear")
        serving = try BackgroundProcess(RunningController.bin + "/fleetkeep-controller",
                                        ["serve", "--data", controller.data.path, "--listen", "127.0.0.1:\(controller.port)"])
        try serving.waitForOutput { $0.contains("listening on") }
        let restored = try #require(try Self.json(try controller.controller(["privacy", "export", "--customer", String(customer)])) as? [String: Any])
        #expect((restored["customer"] as? [String: Any])?["customer"] == nil, "the restored copy did not bring the customer back: \(restored)")
        #expect(((restored["servers"] as? [[String: Any]]) ?? []).allSatisfy { $0["hostname"] == nil })
        let audit = try controller.controller(["privacy", "audit"]).stdout
        #expect(audit.contains("erasure ledger re-applied"), "\(audit)")
        #expect(try controller.controller(["licence", "show", other.id]).stdout.contains("Kept Customer"))
        serving.stop()
    }

    // MARK: Retention

    /// The purge deletes by the declared retention, at the controller's clock (moved with FLEETKEEP_CLOCK_OFFSET).
    @Test func purgeFollowsTheRetentionAtAnInjectedClock() throws {
        let controller = try RunningController()
        let scratch = TemporaryDirectory(prefix: "fk-e2e-privacy")
        let ended = try Self.issue(controller, customer: "Former Customer", email: "former@customer.example")
        let active = try Self.issue(controller, customer: "Current Customer", email: "current@customer.example")
        #expect(try controller.controller(["licence", "revoke", ended.id]).status == 0)
        let removed = try PrivacyServer(controller, in: scratch, name: "old")
        #expect(try controller.controller(["agents", "remove", removed.agentID]).status == 0)
        func purge(days: Int64, dryRun: Bool) throws -> [String: Any] {
            let output = try ProcessRunner.run(RunningController.bin + "/fleetkeep-controller",
                                               ["privacy", "purge", "--json", "--data", controller.data.path] + (dryRun ? ["--dry-run"] : []),
                                               environment: [FleetkeepClock.offsetVariable: String(days * 86400)])
            return try #require(try JSONSerialization.jsonObject(with: Data(output.stdout.utf8)) as? [String: Any], "\(output.stderr)")
        }
        let endedCustomer = try Self.customerID(controller, licence: ended.id)
        let early = try purge(days: 89, dryRun: true)
        #expect((early["customersErased"] as? [Int64]) == [] && (early["agentsCleared"] as? [String]) == [], "\(early)")
        let due = try purge(days: 91, dryRun: true)
        #expect((due["customersErased"] as? [Int64]) == [endedCustomer], "\(due)")
        #expect((due["agentsCleared"] as? [String]) == [removed.agentID], "\(due)")
        #expect(try controller.controller(["licence", "show", ended.id]).stdout.contains("Former Customer"), "a dry run deletes nothing")
        let done = try purge(days: 91, dryRun: false)
        #expect((done["customersErased"] as? [Int64]) == [endedCustomer])
        #expect(try controller.controller(["licence", "show", ended.id]).stdout.contains("(erased)"))
        #expect(try controller.controller(["licence", "show", active.id]).stdout.contains("Current Customer"), "an active licence keeps its customer")
        let agents = try #require(try Self.json(try controller.controller(["agents", "--json"])) as? [[String: Any]])
        #expect((agents.first { $0["agentID"] as? String == removed.agentID }?["facts"] as? [String: String]) == [:])
        #expect((try purge(days: 92, dryRun: false)["customersErased"] as? [Int64]) == [], "nothing twice")
        // Configurable: a 30-day retention purges the other one's removed agent data sooner.
        #expect(try controller.controller(["privacy", "retention", "--personal", "30d"]).stdout.contains("30 days"))
        #expect(try controller.controller(["privacy", "retention", "--personal", "1h"]).status == 2)
    }

    // MARK: Aggregates and breaches

    /// Cells with fewer than k customers are suppressed, and one more so that the total minus the published cells
    /// does not reveal the suppressed one (the differencing case). No name, email or address appears.
    @Test func aggregateSuppressesSmallCellsAndTheirComplement() throws {
        let controller = try RunningController()
        let scratch = TemporaryDirectory(prefix: "fk-e2e-privacy")
        let customers = try ["Alpha", "Bravo", "Charlie", "Delta"].map { try Self.issue(controller, customer: "\($0) Hosting", email: "\($0.lowercased())@agg.example") }
        let debian = ("Debian GNU/Linux", "12"), alma = ("AlmaLinux", "8.10"), ubuntu = ("Ubuntu", "22.04")
        let layout: [(String, (String, String), Int)] = [("a1", debian, 0), ("a2", debian, 0), ("b1", debian, 1), ("c1", alma, 2), ("d1", ubuntu, 3), ("a3", ubuntu, 0)]
        for (name, os, owner) in layout {
            try PrivacyServer(controller, in: scratch, name: name, os: os).activate(customers[owner].key)
        }
        let output = try controller.controller(["report", "aggregate", "--k", "2", "--json"])
        let report = try #require(try Self.json(output) as? [String: Any], "\(output.stderr)")
        #expect(report["totalServers"] as? Int == 6)
        let os = try #require((report["dimensions"] as? [[String: Any]])?.first { $0["name"] as? String == "os" })
        let cells = (os["cells"] as? [[String: Any]]) ?? []
        #expect(cells.map { $0["value"] as? String } == ["Debian GNU/Linux 12"], "AlmaLinux (1 customer) and Ubuntu (its complement) suppressed: \(cells)")
        #expect(cells.first?["servers"] as? Int == 3)
        #expect(os["suppressedCells"] as? Int == 2 && os["suppressedServers"] as? Int == 3)
        // Without complementary suppression Ubuntu (2 servers, 2 customers) would be published and 6 - 3 - 2 = 1
        // would be AlmaLinux's count, one customer's.
        let text = try controller.controller(["report", "aggregate", "--k", "2"]).stdout
        for needle in ["@agg.example", "Hosting", "127.0.0.1", "AlmaLinux"] + ((try Self.primaryAddress()).map { [$0] } ?? []) {
            #expect(!output.stdout.contains(needle) && !text.contains(needle), "'\(needle)' in the aggregate report")
        }
        // With k larger than the number of customers, everything is suppressed, the total too.
        let all = try #require(try Self.json(try controller.controller(["report", "aggregate", "--k", "5", "--json"])) as? [String: Any])
        #expect(all["totalServers"] == nil || all["totalServers"] is NSNull)
        #expect(try controller.controller(["report", "aggregate", "--k", "1"]).status == 2)
    }

    /// The breach report lists the affected customers with contact details, and the deadline skips weekends.
    @Test func breachReportListsContactsWithADeadlineAcrossTheWeekend() throws {
        let controller = try RunningController()
        let licence = try Self.issue(controller, customer: "Breached Customer", email: "breached@customer.example")
        // Discovered on Friday 2 January 2026: 7 business days later is Tuesday 13 January.
        let friday = try #require(try Self.json(try controller.controller(["privacy", "breach-report", "--since", "2025-12-01", "--discovered", "2026-01-02", "--json"])) as? [String: Any])
        #expect(friday["deadline"] as? String == "2026-01-13", "\(friday)")
        let affected = try #require(friday["affected"] as? [[String: Any]])
        #expect(affected.count == 1 && affected.first?["email"] as? String == "breached@customer.example" && affected.first?["name"] as? String == "Breached Customer")
        #expect((affected.first?["licences"] as? [String]) == [licence.id])
        // Discovered on Wednesday 7 January: Friday 16 January.
        let wednesday = try #require(try Self.json(try controller.controller(["privacy", "breach-report", "--since", "2025-12-01", "--discovered", "2026-01-07T09:30:00Z", "--json"])) as? [String: Any])
        #expect(wednesday["deadline"] as? String == "2026-01-16")
        // Discovered on a Saturday: the count starts on Monday 5th, so Tuesday 13th as well.
        let saturday = try #require(try Self.json(try controller.controller(["privacy", "breach-report", "--since", "2025-12-01", "--discovered", "2026-01-03", "--json"])) as? [String: Any])
        #expect(saturday["deadline"] as? String == "2026-01-13")
        let bad = try controller.controller(["privacy", "breach-report", "--since", "1st of March"])
        #expect(bad.status == 2 && bad.stderr.contains("--since"), "\(bad.stderr)")
        #expect(try controller.controller(["privacy", "audit"]).stdout.contains("breach-report"))
    }
}
