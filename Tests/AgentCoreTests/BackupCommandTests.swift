@testable import AgentCore
import BackupEngine
import Foundation
import Testing
import TestSupport

struct AgentConfigTests {
    @Test func parsesSectionsAndDefaults() throws {
        let config = try AgentConfig.parse("""
            # comment
            repository = /srv/backups
            key-file = /etc/fk.key
            [database]
            socket = /run/db.sock
            port = 3307
            [retention.email]
            keep-daily = 2
            [accounts]
            alice = /home/alice
            [offsite]
            target = sftp://b@127.0.0.1:2222/x
            keep-weekly = 6
            """, file: "agent.conf")
        #expect(config.repository == "/srv/backups")
        #expect(config.database.socket == "/run/db.sock" && config.database.port == 3307)
        #expect(config.retention[.email] == RetentionPolicy(keepDaily: 2))
        #expect(config.retention[.files] == RetentionPolicy(keepDaily: 30))
        #expect(config.retention[.databases] == RetentionPolicy(keepDaily: 30))
        #expect(config.accounts == ["alice": "/home/alice"])
        #expect(config.offsite.keepWeekly == 6 && config.offsite.kinds == [.files, .databases])
    }

    @Test func shippedDefaultConfigParsesToTheDocumentedDefaults() throws {
        let config = try AgentConfig.load(path: ProcessRunner.packageRoot + "/Agent/agent.conf")
        let defaults = AgentConfig()
        #expect(config.repository == defaults.repository && config.keyFile == defaults.keyFile)
        #expect(config.retention == defaults.retention)
        #expect(config.offsite.keepWeekly == 4 && config.offsite.kinds == [.files, .databases])
        #expect(config.offsite.connections == defaults.offsite.connections)
    }

    @Test(arguments: [("bogus = 1", "agent.conf:1: unknown key 'bogus'"), ("[nope]", "unknown section [nope]"),
                      ("[database]\nport = many", "agent.conf:2: port must be a whole number"),
                      ("repository = relative/path", "must be an absolute path"), ("just words", "expected `key = value`"),
                      ("[accounts]\n../evil = /tmp", "refusing hosting account name")])
    func badConfigNamesFileAndLine(text: String, expected: String) {
        do {
            _ = try AgentConfig.parse(text, file: "agent.conf")
            Issue.record("accepted: \(text)")
        } catch {
            #expect("\(error)".contains(expected), "\(error)")
        }
    }
}

struct HostingAccountTests {
    @Test func discoversCPanelAccounts() throws {
        let root = TemporaryDirectory(prefix: "fk-accounts")
        try HostingFixtureTool.create(root.path, accounts: 3, sizeMB: 1, panel: "cpanel")
        let accounts = try HostingAccounts.discover(root: root.path, configured: [:])
        #expect(accounts.map(\.user) == ["user000", "user001", "user002"])
        #expect(accounts[0].home == root.path + "/home/user000")
    }

    @Test func discoversPleskSubscriptionsAndConfiguredAccounts() throws {
        let root = TemporaryDirectory(prefix: "fk-accounts")
        try FileManager.default.createDirectory(atPath: root.path + "/var/www/vhosts/example.com/httpdocs", withIntermediateDirectories: true)
        try FileManager.default.createDirectory(atPath: root.path + "/var/www/vhosts/system", withIntermediateDirectories: true)
        #expect(try HostingAccounts.discover(root: root.path, configured: [:]).map(\.user) == ["example.com"])
        #expect(try HostingAccounts.discover(root: root.path, configured: ["bob": "/srv/bob"]) == [HostingAccount(user: "bob", home: root.path + "/srv/bob")])
    }

    @Test func hostileAccountNamesAreRefused() throws {
        let root = TemporaryDirectory(prefix: "fk-accounts")
        try FileManager.default.createDirectory(atPath: root.path + "/var/cpanel/users", withIntermediateDirectories: true)
        try Data().write(to: URL(fileURLWithPath: root.path + "/var/cpanel/users/-rf"))
        #expect(throws: AgentError.self) { try HostingAccounts.discover(root: root.path, configured: [:]) }
        for name in ["..", "a/b", "", "-x", "a\0b", ".hidden"] {
            #expect(throws: AgentError.self) { try HostingAccounts.validateName(name, source: "test") }
        }
        #expect(throws: AgentError.self) { try HostingAccounts.discover(root: TemporaryDirectory().path, configured: [:]) }
    }
}

struct DatabaseBackupTests {
    @Test func dumpStreamsIntoRepositoryAndRestoresIdenticalRows() throws {
        let server = try MariaDBServer()
        let root = TemporaryDirectory(prefix: "fk-db")
        try HostingFixtureTool.create(root.path + "/srv", accounts: 1, sizeMB: 2, panel: "cpanel")
        try server.load(root.path + "/srv/databases/user000_wp.sql", into: "user000_wp")
        let checksum = "SELECT COUNT(*), MD5(GROUP_CONCAT(ID, post_title, post_content, post_date ORDER BY ID)) FROM wp_posts"
        let original = try server.sql(checksum, database: "user000_wp")

        var settings = AgentConfig.DatabaseSettings()
        settings.socket = server.socket
        let dumper = DatabaseDumper(settings: settings)
        #expect(try dumper.databases(of: "user000") == ["user000_wp"])
        #expect(try dumper.databases(of: "user00").isEmpty)

        let storage = LocalStorage(root: root.path + "/repo")
        let repository = try Repository.initialize(storage: storage, keySource: .keyFile(root.path + "/key"))
        let snapshot = try dumper.dump(database: "user000_wp") { descriptor, confirm in
            try repository.backup(stream: descriptor, name: "user000_wp.sql",
                                  options: BackupOptions(tags: ["account": "user000", "kind": "databases", "database": "user000_wp"], chunking: .streams,
                                                         beforeCommit: confirm))
        }
        #expect(snapshot.summary.bytesRead > 10_000)
        try dumper.load(into: "restored_wp") { try repository.restoreStream(snapshot, to: $0) }
        #expect(try server.sql(checksum, database: "restored_wp") == original)

        // A failing dump is an error that quotes the tool and records no snapshot.
        do {
            _ = try dumper.dump(database: "no_such_db") { descriptor, confirm in
                try repository.backup(stream: descriptor, name: "x.sql", options: BackupOptions(tags: ["kind": "databases", "database": "x"], beforeCommit: confirm))
            }
            Issue.record("a failed dump was accepted")
        } catch let error as AgentError {
            #expect(error.message.contains("no_such_db"))
            #expect(error.message.contains("no snapshot was recorded"))
        }
        #expect(try repository.snapshots().map(\.id) == [snapshot.id])
    }
}
