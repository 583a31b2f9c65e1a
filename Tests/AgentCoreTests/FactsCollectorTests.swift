@testable import AgentCore
import FleetkeepProtocol
import Foundation
import Testing
import TestSupport

struct FactsCollectorTests {
    @Test(arguments: [("cloudlinux8", "cloudlinux", "cpanel"), ("almalinux8", "almalinux", "plesk"),
                      ("ubuntu22", "ubuntu", "none"), ("debian12", "debian", "cpanel")])
    func readsFixtureServers(os: String, expectedID: String, panel: String) throws {
        let root = TemporaryDirectory(prefix: "fk-facts")
        try HostingFixtureTool.create(root.path + "/srv", accounts: 1, sizeMB: 1, panel: panel, os: os)
        let facts = FactsCollector(root: root.path + "/srv").collect()
        #expect(facts.osID == expectedID)
        #expect(facts.kernelRelease == (try String(contentsOfFile: root.path + "/srv/proc/sys/kernel/osrelease", encoding: .utf8)).trimmingCharacters(in: .whitespacesAndNewlines))
        #expect(facts.kernelVersion.hasPrefix("#"))
        #expect(facts.panel == panel)
        if panel != "none" { #expect(facts.panelVersion.first?.isNumber == true) }
        #expect(facts.problems.isEmpty, "unexpected problems: \(facts.problems)")
    }

    @Test func distributionsThatLookAlikeAreToldApart() {
        let cases: [String: String] = ["ID=rocky\nID_LIKE=\"rhel centos fedora\"": "rocky",
                                       "ID=\"centos\"": "centos", "ID=rhel\nNAME=\"Red Hat Enterprise Linux\"": "rhel",
                                       "ID=almalinux": "almalinux", "NAME=\"CloudLinux\"": "cloudlinux", "ID=ubuntu": "ubuntu"]
        for (text, expected) in cases {
            #expect(FactsCollector.distribution(FactsCollector.parseOSRelease(text)) == expected, "\(text)")
        }
    }

    @Test func missingAndOddFilesGiveUnknownWithReasons() throws {
        let root = TemporaryDirectory(prefix: "fk-facts-odd")
        try FileManager.default.createDirectory(atPath: root.path + "/etc", withIntermediateDirectories: true)
        try FileManager.default.createDirectory(atPath: root.path + "/proc/sys/kernel", withIntermediateDirectories: true)
        try Data([0xff, 0x00, 0xfe]).write(to: URL(fileURLWithPath: root.path + "/etc/os-release"))
        try Data(count: 100_000).write(to: URL(fileURLWithPath: root.path + "/proc/sys/kernel/version"))
        let facts = FactsCollector(root: root.path).collect()
        #expect(facts.osID == "unknown")
        #expect(facts.problems["osID"]?.contains("not UTF-8") == true)
        #expect(facts.kernelRelease == "unknown")
        #expect(facts.problems["kernelRelease"]?.contains("missing") == true)
        #expect(facts.problems["kernelVersion"]?.contains("larger than") == true)
        #expect(facts.panel == "none")
    }

    @Test func directAdminVersionComesFromItsConfFile() throws {
        let root = TemporaryDirectory(prefix: "fk-facts-da")
        try FileManager.default.createDirectory(atPath: root.path + "/usr/local/directadmin/conf", withIntermediateDirectories: true)
        try Data("port=2222\nversion=1.662\n".utf8).write(to: URL(fileURLWithPath: root.path + "/usr/local/directadmin/conf/directadmin.conf"))
        let facts = FactsCollector(root: root.path).collect()
        #expect(facts.panel == "directadmin")
        #expect(facts.panelVersion == "1.662")
        try Data("port=2222\n".utf8).write(to: URL(fileURLWithPath: root.path + "/usr/local/directadmin/conf/directadmin.conf"))
        let versionless = FactsCollector(root: root.path).collect()
        #expect(versionless.panelVersion == "unknown")
        #expect(versionless.problems["panelVersion"]?.contains("version=") == true)
    }

    @Test func primaryAddressFollowsTheDefaultRoute() {
        let table = """
        Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT
        eth1\t0010A8C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0
        eth0\t00000000\t0100A8C0\t0003\t0\t0\t100\t00000000\t0\t0\t0
        """
        #expect(PrimaryAddress.defaultRouteInterface(table: table) == "eth0")
        #expect(PrimaryAddress.defaultRouteInterface(table: "Iface\tDestination\n") == nil)
        // On this machine: an address, and never the loopback one unless nothing else exists.
        let facts = FactsCollector(root: "/").collect()
        #expect(facts.primaryIP.split(separator: ".").count == 4)
        if facts.primaryIP == "127.0.0.1" { #expect(facts.problems["primaryIP"] != nil) }
    }
}

struct AgentStateTests {
    @Test func corruptOrMissingStateGivesClearErrors() throws {
        let directory = TemporaryDirectory(prefix: "fk-state")
        let state = AgentState(directory: directory.path)
        #expect(throws: AgentError.self) { try state.loadEnrollment() }
        try Data("{garbage".utf8).write(to: URL(fileURLWithPath: directory.appending("enrollment.json")))
        do {
            _ = try state.loadEnrollment()
            Issue.record("damaged enrollment accepted")
        } catch let error as AgentError {
            #expect(error.message.contains("enrollment.json is damaged"))
        }
        try Data("not a key".utf8).write(to: URL(fileURLWithPath: directory.appending("agent.key")))
        #expect(throws: AgentError.self) { try state.loadKey() }
    }

    @Test func privateFilesAreWrittenWithMode0600() throws {
        let directory = TemporaryDirectory(prefix: "fk-state")
        try PrivateFile.write(directory.appending("secret"), [1, 2, 3])
        let mode = try FileManager.default.attributesOfItem(atPath: directory.appending("secret"))[.posixPermissions] as? Int
        #expect(mode == 0o600)
        #expect(FileManager.default.contents(atPath: directory.appending("secret")) == Data([1, 2, 3]))
    }
}
