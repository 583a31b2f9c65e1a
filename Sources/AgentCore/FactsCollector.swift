import FleetkeepProtocol
import Foundation

/// Reads the server's facts from files under a root directory (`/` in production, a fixture tree in tests).
/// A missing or odd file yields "unknown" and a reason; it never stops the agent.
public struct FactsCollector: Sendable {
    public let root: String
    public let tier: String

    public init(root: String = "/", tier: String = "standard") {
        self.root = root
        self.tier = tier
    }

    public func collect() -> AgentFacts {
        var facts = AgentFacts(agentTier: tier)
        var problems: [String: String] = [:]

        facts.hostname = readLine("etc/hostname") ?? ProcessInfo.processInfo.hostName

        switch readFile("etc/os-release") {
        case .success(let text):
            let release = Self.parseOSRelease(text)
            facts.osID = Self.distribution(release)
            facts.osName = release["NAME"] ?? AgentFacts.unknown
            facts.osVersion = release["VERSION_ID"] ?? release["VERSION"] ?? AgentFacts.unknown
            if release["ID"] == nil { problems["osID"] = "etc/os-release has no ID= line" }
        case .failure(let reason):
            problems["osID"] = reason.message
        }

        switch readFile("proc/sys/kernel/osrelease") {
        case .success(let text): facts.kernelRelease = Self.singleLine(text) ?? AgentFacts.unknown
        case .failure(let reason): problems["kernelRelease"] = reason.message
        }
        switch readFile("proc/sys/kernel/version") {
        case .success(let text): facts.kernelVersion = Self.singleLine(text) ?? AgentFacts.unknown
        case .failure(let reason): problems["kernelVersion"] = reason.message
        }

        (facts.panel, facts.panelVersion) = detectPanel(&problems)
        if let address = PrimaryAddress.ipv4() {
            facts.primaryIP = address
        } else {
            facts.primaryIP = "127.0.0.1"
            problems["primaryIP"] = "no non-loopback IPv4 address is configured; reporting loopback"
        }
        facts.problems = problems
        return facts
    }

    /// cPanel and Plesk keep their version in one file; DirectAdmin's is in its conf file as `version=`.
    private func detectPanel(_ problems: inout [String: String]) -> (String, String) {
        let candidates: [(String, String)] = [("cpanel", "usr/local/cpanel/version"), ("plesk", "usr/local/psa/version")]
        for (panel, path) in candidates where FileManager.default.fileExists(atPath: absolute(path)) {
            switch readFile(path) {
            case .success(let text):
                // Plesk writes e.g. "18.0.61 Debian 12.0 1800240515.10"; the version is the first word.
                if let version = Self.singleLine(text)?.split(separator: " ").first { return (panel, String(version)) }
                problems["panelVersion"] = "\(path) is empty"
            case .failure(let reason):
                problems["panelVersion"] = reason.message
            }
            return (panel, AgentFacts.unknown)
        }
        let directAdmin = "usr/local/directadmin/conf/directadmin.conf"
        if FileManager.default.fileExists(atPath: absolute(directAdmin)) {
            if case .success(let text) = readFile(directAdmin),
               let line = text.split(separator: "\n").first(where: { $0.hasPrefix("version=") }) {
                return ("directadmin", String(line.dropFirst("version=".count)))
            }
            problems["panelVersion"] = "\(directAdmin) has no version= line"
            return ("directadmin", AgentFacts.unknown)
        }
        return ("none", "")
    }

    struct Reason: Error { let message: String }

    private func absolute(_ relative: String) -> String {
        (root.hasSuffix("/") ? root : root + "/") + relative
    }

    /// Reads a small text file, refusing huge or binary content.
    private func readFile(_ relative: String) -> Result<String, Reason> {
        let path = absolute(relative)
        guard let handle = FileHandle(forReadingAtPath: path) else {
            return .failure(Reason(message: "\(path) is missing or unreadable"))
        }
        defer { try? handle.close() }
        let data = (try? handle.read(upToCount: 65_537)) ?? Data()
        if data.count > 65_536 { return .failure(Reason(message: "\(path) is larger than 64 KiB; not a facts file")) }
        guard let text = String(data: data, encoding: .utf8), !text.contains("\0") else {
            return .failure(Reason(message: "\(path) is not UTF-8 text"))
        }
        return .success(text)
    }

    private func readLine(_ relative: String) -> String? {
        if case .success(let text) = readFile(relative) { return Self.singleLine(text) }
        return nil
    }

    static func singleLine(_ text: String) -> String? {
        let line = text.split(separator: "\n").first.map { $0.trimmingCharacters(in: .whitespaces) }
        return (line?.isEmpty ?? true) ? nil : line
    }

    static func parseOSRelease(_ text: String) -> [String: String] {
        var values: [String: String] = [:]
        for line in text.split(separator: "\n") {
            guard let equals = line.firstIndex(of: "="), !line.hasPrefix("#") else { continue }
            let key = line[..<equals].trimmingCharacters(in: .whitespaces)
            var value = line[line.index(after: equals)...].trimmingCharacters(in: .whitespaces)
            if value.count >= 2, let first = value.first, first == "\"" || first == "'", value.last == first {
                value = String(value.dropFirst().dropLast())
            }
            values[key] = value
        }
        return values
    }

    /// The distribution, told apart by ID (CloudLinux, AlmaLinux, Rocky, CentOS and RHEL all say ID_LIKE=rhel).
    static func distribution(_ release: [String: String]) -> String {
        let known = ["cloudlinux", "almalinux", "rocky", "centos", "rhel", "ubuntu", "debian"]
        let id = (release["ID"] ?? "").lowercased()
        if known.contains(id) { return id }
        if let name = release["NAME"]?.lowercased() {
            if name.contains("cloudlinux") { return "cloudlinux" }
            if name.contains("red hat") { return "rhel" }
            if let match = known.first(where: { name.contains($0) }) { return match }
        }
        return id.isEmpty ? AgentFacts.unknown : id
    }
}

/// Finds the server's primary IPv4 address: the address of the interface holding the default route
/// (`/proc/net/route`), else the first up, non-loopback interface address. Network state is live, so this reads the
/// running system even when facts come from a fixture root.
enum PrimaryAddress {
    static func ipv4() -> String? {
        let addresses = interfaceAddresses()
        if let interface = defaultRouteInterface(), let address = addresses.first(where: { $0.interface == interface }) {
            return address.address
        }
        return addresses.first?.address
    }

    /// The interface of the first default route (destination 00000000) in /proc/net/route.
    static func defaultRouteInterface(table: String? = nil) -> String? {
        let text: String
        if let table { text = table } else {
            guard let handle = FileHandle(forReadingAtPath: "/proc/net/route"), let data = try? handle.readToEnd() else { return nil }
            try? handle.close()
            text = String(decoding: data, as: UTF8.self)
        }
        for line in text.split(separator: "\n").dropFirst() {
            let fields = line.split(whereSeparator: { $0 == " " || $0 == "\t" })
            if fields.count >= 2, fields[1] == "00000000" { return String(fields[0]) }
        }
        return nil
    }

    /// Up, non-loopback IPv4 addresses in interface order.
    static func interfaceAddresses() -> [(interface: String, address: String)] {
        var list: UnsafeMutablePointer<ifaddrs>?
        guard getifaddrs(&list) == 0, let first = list else { return [] }
        defer { freeifaddrs(list) }
        var found: [(interface: String, address: String)] = []
        var cursor: UnsafeMutablePointer<ifaddrs>? = first
        while let entry = cursor {
            defer { cursor = entry.pointee.ifa_next }
            guard let address = entry.pointee.ifa_addr, address.pointee.sa_family == UInt16(AF_INET),
                  entry.pointee.ifa_flags & UInt32(IFF_LOOPBACK) == 0, entry.pointee.ifa_flags & UInt32(IFF_UP) != 0 else { continue }
            var buffer = [CChar](repeating: 0, count: Int(INET_ADDRSTRLEN))
            let text = address.withMemoryRebound(to: sockaddr_in.self, capacity: 1) { socketAddress -> String? in
                var inAddress = socketAddress.pointee.sin_addr
                guard inet_ntop(AF_INET, &inAddress, &buffer, socklen_t(buffer.count)) != nil else { return nil }
                return String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
            }
            if let text { found.append((String(cString: entry.pointee.ifa_name), text)) }
        }
        return found
    }
}
