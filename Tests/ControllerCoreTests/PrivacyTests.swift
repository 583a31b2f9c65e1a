import ControllerCore
import Crypto
import FleetkeepProtocol
import Foundation
import SQLite
import Testing
import TestSupport

/// The privacy rules over a real SQLite file and key file, with a clock the test moves.
struct PrivacyTests {
    /// Every column of every table, with all stores' migrations applied, is declared in the inventory, and every
    /// declared column exists: a new column without a declaration fails here.
    @Test func everyDatabaseColumnIsDeclaredInTheInventory() throws {
        let directory = TemporaryDirectory(prefix: "fk-privacy")
        let store = try ControllerStore(path: directory.appending("controller.db"))
        _ = try SQLiteJobStore(database: store.database)
        _ = try SQLiteScheduleStore(database: store.database)
        _ = try SQLiteAlertStore(database: store.database)
        _ = try SQLiteOperatorStore(database: store.database)
        var columns = Set<String>()
        for table in try store.database.query("SELECT name FROM sqlite_master WHERE type = 'table'").compactMap({ $0.string("name") }) {
            for column in try store.database.query("SELECT name FROM pragma_table_info(?)", [.text(table)]).compactMap({ $0.string("name") }) {
                columns.insert("\(table).\(column)")
            }
        }
        let declared = DataInventory.declaredColumns
        #expect(columns.subtracting(declared).sorted() == [], "columns stored but not declared in DataInventory")
        #expect(declared.subtracting(columns).sorted() == [], "declared columns that do not exist")
        #expect(DataInventory.allFields.allSatisfy { !$0.purpose.isEmpty && !$0.legalBasis.isEmpty && !$0.retention.isEmpty })
    }

    @Test func valuesAreCheckedAgainstTheirDeclaredShape() {
        #expect(DataInventory.violation(facts: ["primaryIP": "192.0.2.7", "hostname": "web1.example", "osID": "debian"], problems: [:]) == nil)
        #expect(DataInventory.violation(facts: ["primaryIP": "2001:db8::1", "hostname": "unknown"], problems: [:]) == nil)
        #expect(DataInventory.violation(facts: ["primaryIP": "192.0.2.300"], problems: [:])?.contains("primaryIP") == true)
        #expect(DataInventory.violation(facts: ["hostname": "a b"], problems: [:])?.contains("hostname") == true)
        #expect(DataInventory.violation(facts: ["osID": "Debian"], problems: [:])?.contains("osID") == true)
        #expect(DataInventory.violation(facts: ["osName": "x\u{1B}[31m"], problems: [:])?.contains("control") == true)
        #expect(DataInventory.violation(facts: [:], problems: ["osName": String(repeating: "x", count: 1025)])?.contains("longer") == true)
        #expect(DataInventory.violation(telemetry: TelemetryUpload(from: 1, to: 2, counters: ["backup.runs": 1, "offsite-push.bytes": 1 << 40])) == nil)
        #expect(DataInventory.violation(telemetry: TelemetryUpload(from: 1, to: 2, counters: ["backup.runs": 1 << 41]))?.contains("backup.runs") == true)
        #expect(DataInventory.violation(telemetry: TelemetryUpload(from: 3, to: 2, counters: ["backup.runs": 1]))?.contains("from") == true)
        #expect(DataInventory.violation(telemetry: TelemetryUpload(schema: 2, from: 1, to: 2, counters: ["backup.runs": 1]))?.contains("schema") == true)
        #expect(DataInventory.violation(telemetry: TelemetryUpload(from: 1, to: 2, counters: [:])) != nil)
    }

    @Test func addressesAreCutToTheirNetwork() {
        #expect(AddressPrivacy.truncate("192.0.2.77") == "192.0.2.0/24")
        #expect(AddressPrivacy.truncate("2001:db8:1:2:3:4:5:6") == "2001:db8:1::/48")
        #expect(AddressPrivacy.truncate("::1") == "::/48")
        #expect(AddressPrivacy.truncate("192.0.2") == nil)
        #expect(AddressPrivacy.truncate("fe80::1%eth0") == nil)
        #expect(AddressPrivacy.redacted("garbage") == "unknown")
    }

    /// A sealed field opens only as the field it was sealed for, and only with its key.
    @Test func sealedFieldsAreBoundToTheirFieldAndKey() throws {
        let directory = TemporaryDirectory(prefix: "fk-privacy")
        let store = try ControllerStore(path: directory.appending("controller.db"))
        let sealed = try store.keys.seal("Jane Roe", field: "customer.name")
        #expect(try store.keys.open(sealed, field: "customer.name") == "Jane Roe")
        #expect(throws: ControllerError.self) { _ = try store.keys.open(sealed, field: "customer.email") }
        // A key file that does not belong to the database is named at open, not turned into noise.
        try store.database.close()
        let keyPath = directory.appending("privacy.key")
        try FileManager.default.removeItem(atPath: keyPath)
        #expect(throws: ControllerError.self) { _ = try ControllerStore(path: directory.appending("controller.db")) }
        try Data((Base64URL.encode(SecureRandom.bytes(32)) + "\n").utf8).write(to: URL(fileURLWithPath: keyPath))
        chmod(keyPath, 0o600)
        let error = #expect(throws: ControllerError.self) { _ = try ControllerStore(path: directory.appending("controller.db")) }
        #expect(error?.message.contains("is not the key of") == true)
        chmod(keyPath, 0o644)
        let loose = #expect(throws: ControllerError.self) { _ = try ControllerStore(path: directory.appending("controller.db")) }
        #expect(loose?.message.contains("chmod 600") == true)
    }

    /// A controller from before encryption at rest: names, emails and host names in clear are sealed when it opens.
    @Test func plaintextFromAnOlderControllerIsSealedAtOpen() throws {
        let directory = TemporaryDirectory(prefix: "fk-privacy")
        let path = directory.appending("controller.db")
        do {
            let old = try Database(path: path)
            try old.migrate(ControllerStore.migrationsBeforePrivacy)
            try old.run("INSERT INTO customers (created_at, name, email) VALUES (1, 'Clear Name', 'clear@example.org')")
            try old.run("INSERT INTO agents (id, public_key, hostname, enrolled_at, facts) VALUES ('fk-1', x'00', 'clear-host.example', 1, '{\"hostname\":\"clear-host.example\",\"primaryIP\":\"198.51.100.23\"}')")
            try old.close()
        }
        let store = try ControllerStore(path: path)
        let agents = try store.agents()
        #expect(agents.first?.hostname == "clear-host.example" && agents.first?.facts["primaryIP"] == "198.51.100.0/24")
        let customer = try SQLiteLicenceStore(database: store.database, keys: store.keys).customer(1)
        #expect(customer == Customer(name: "Clear Name", email: "clear@example.org"))
        try store.database.close()
        for needle in ["Clear Name", "clear@example.org", "clear-host.example", "198.51.100.23"] {
            for file in ["controller.db", "controller.db-wal"] {
                let data = FileManager.default.contents(atPath: directory.appending(file)) ?? Data()
                #expect(data.range(of: Data(needle.utf8)) == nil, "'\(needle)' still in clear in \(file)")
            }
        }
    }

    /// The audit chain verifies, and breaks at a changed row, a removed row, and a changed link.
    @Test func auditChainBreaksAtAnEditedOrDeletedEntry() throws {
        let directory = TemporaryDirectory(prefix: "fk-privacy")
        let store = try ControllerStore(path: directory.appending("controller.db"))
        let privacy = PrivacyService(controllerStore: store, clock: { 1_800_000_000 })
        for index in 1...5 { try privacy.audit(Access(actor: "ops", reason: "case \(index)"), action: "licence show", subject: "customer \(index)") }
        #expect(try privacy.store.verifyAudit().broken == nil)
        #expect(try privacy.store.verifyAudit().entries == 5)
        try store.database.run("UPDATE audit_log SET reason = 'nothing to see' WHERE id = 3")
        #expect(try privacy.store.verifyAudit().broken?.id == 3)
        try store.database.run("UPDATE audit_log SET reason = 'case 3' WHERE id = 3")
        #expect(try privacy.store.verifyAudit().broken == nil)
        try store.database.run("DELETE FROM audit_log WHERE id = 2")
        #expect(try privacy.store.verifyAudit().broken?.id == 3)
    }

    /// Retention with an injected clock: personal data 90 days after the last licence ended, raw telemetry after
    /// 90 days (its monthly totals stay), expired tokens, removed agents' facts.
    @Test func purgeDeletesByTheDeclaredRetention() throws {
        let directory = TemporaryDirectory(prefix: "fk-privacy")
        let store = try ControllerStore(path: directory.appending("controller.db"))
        let clock = ControllerHarness.ClockBox()
        clock.now = 1_800_000_000
        let licences = LicenceService(store: SQLiteLicenceStore(database: store.database, keys: store.keys), signingKey: Ed25519PrivateKey(), clock: { clock.now })
        let privacy = PrivacyService(controllerStore: store, clock: { clock.now })
        let (licence, key) = try licences.issue(customer: Customer(name: "Tele Metric", email: "tm@example.org"), tier: "standard", maxServers: 1, expiresAt: nil)
        let agentID = "fk-telemetry-test"
        _ = try licences.activate(agentID: agentID, request: ActivationRequest(key: key.text, machine: MachineIdentity(machineID: "m", rootFilesystemUUID: "u", controllerPin: "p")))
        try privacy.setConsent(licenceID: licence.id, granted: true, by: "Tele Metric", source: "test")
        _ = try privacy.ingest(agentID: agentID, body: Array(#"{"counters":{"backup.runs":3},"from":1,"schema":1,"to":2}"#.utf8))
        _ = try store.createToken(expiresIn: 3600, now: Date(timeIntervalSince1970: TimeInterval(clock.now)))

        clock.now += 89 * 86400
        #expect(try privacy.purge(dryRun: false) == PurgeReport(dryRun: false))
        clock.now += 2 * 86400
        let report = try privacy.purge(dryRun: false)
        #expect(report.telemetryRecords == 1 && report.tokens == 1 && report.customersErased == [], "\(report)")
        #expect(try privacy.store.telemetry(agentIDs: nil).isEmpty)
        #expect(try privacy.store.telemetryTotals().map(\.total) == [3], "monthly totals are kept")

        // The licence is revoked: 90 days later the customer's personal data goes.
        _ = try licences.change(licence.id, to: .revoked)
        clock.now += 90 * 86400 - 1
        #expect(try privacy.purge(dryRun: true).customersErased == [])
        clock.now += 1
        #expect(try privacy.purge(dryRun: true).customersErased == [licence.customerID])
        #expect(try privacy.store.customerRecord(licence.customerID)?.customer != nil, "a dry run changes nothing")
        #expect(try privacy.purge(dryRun: false).customersErased == [licence.customerID])
        #expect(try privacy.store.customerRecord(licence.customerID)?.customer == nil)
        #expect(try privacy.purge(dryRun: false).customersErased == [])
        #expect(try ErasureLedger(databasePath: store.database.path).hashes().count == 1)
    }

    @Test func complementarySuppressionPreventsDifferencing() {
        func server(_ customer: String, _ os: String) -> AggregateReport.Server { .init(customer: customer, values: ["os": os]) }
        let servers = [server("a", "Debian 12"), server("a", "Debian 12"), server("b", "Debian 12"), server("c", "AlmaLinux 8"),
                       server("d", "Ubuntu 22.04"), server("a", "Ubuntu 22.04")]
        let report = AggregateReport.make(servers: servers, k: 2)
        let os = report.dimensions.first { $0.name == "os" }
        #expect(os?.cells == [AggregateReport.Cell(value: "Debian 12", servers: 3)])
        #expect(os?.suppressedCells == 2 && os?.suppressedServers == 3)
        // Two small cells suppress each other when together they reach k customers.
        let pair = AggregateReport.make(servers: [server("a", "X"), server("b", "X"), server("c", "Y"), server("d", "Z")], k: 2)
        #expect(pair.dimensions.first { $0.name == "os" }?.cells == [AggregateReport.Cell(value: "X", servers: 2)])
        // Addresses and emails never appear as values.
        #expect(AggregateReport.make(servers: [server("a", "ops@x.example"), server("b", "ops@x.example")], k: 2)
            .dimensions.first { $0.name == "os" }?.cells.first?.value == "(withheld)")
    }

    @Test func breachDeadlineCountsSevenBusinessDays() throws {
        func day(_ text: String) throws -> Date {
            let formatter = ISO8601DateFormatter()
            formatter.formatOptions = [.withFullDate]
            return try #require(formatter.date(from: text))
        }
        func deadline(_ text: String) throws -> String {
            let formatter = ISO8601DateFormatter()
            formatter.formatOptions = [.withFullDate]
            return formatter.string(from: BreachReport.deadline(discovered: try day(text)))
        }
        #expect(try deadline("2026-01-02") == "2026-01-13")   // Friday → Tuesday, two weekends
        #expect(try deadline("2026-01-05") == "2026-01-14")   // Monday → Wednesday next week
        #expect(try deadline("2026-01-03") == "2026-01-13")   // Saturday
        #expect(try deadline("2026-01-04") == "2026-01-13")   // Sunday
    }
}
