import Foundation

/// Counts of servers for outside use. A cell with fewer than k distinct customers is suppressed; then, per
/// dimension, more cells are suppressed (the smallest first) until the suppressed cells together hold at least k
/// customers and are at least two: the published total minus the published cells only ever reveals a group that
/// is itself at least k customers large (no differencing). Values that look like an address or an email are never
/// shown. Agents without a licence count together as one customer (their owner is unknown), which only suppresses more.
public struct AggregateReport: Codable, Sendable, Equatable {
    public struct Cell: Codable, Sendable, Equatable {
        public var value: String
        public var servers: Int
        public init(value: String, servers: Int) {
            self.value = value
            self.servers = servers
        }
    }
    public struct Dimension: Codable, Sendable, Equatable {
        public var name: String
        public var cells: [Cell]
        /// Cells left out, and the servers in them together (the total minus the published cells).
        public var suppressedCells: Int
        public var suppressedServers: Int
    }
    public var k: Int
    /// Nil when the whole fleet has fewer than k customers: then every cell is suppressed too.
    public var totalServers: Int?
    public var dimensions: [Dimension]

    public static let dimensionNames = ["os", "kernel", "panel", "tier", "agentVersion"]

    /// One server as the report counts it: its customer (an opaque key) and its value in each dimension.
    public struct Server: Sendable {
        public var customer: String
        public var values: [String: String]
        public init(customer: String, values: [String: String]) {
            self.customer = customer
            self.values = values
        }
    }

    public static func make(servers: [Server], k: Int) -> AggregateReport {
        let customers = Set(servers.map(\.customer))
        guard customers.count >= k else {
            return AggregateReport(k: k, totalServers: nil, dimensions: dimensionNames.map { name in
                let values = Set(servers.compactMap { $0.values[name] })
                return Dimension(name: name, cells: [], suppressedCells: values.count, suppressedServers: servers.count)
            })
        }
        let dimensions = dimensionNames.map { name -> Dimension in
            var servers_: [String: Int] = [:]
            var owners: [String: Set<String>] = [:]
            for server in servers {
                let value = server.values[name] ?? "unknown"
                servers_[value, default: 0] += 1
                owners[value, default: []].insert(server.customer)
            }
            var suppressed = Set(owners.filter { $0.value.count < k }.map(\.key))
            func unionSize() -> Int { suppressed.reduce(into: Set<String>()) { $0.formUnion(owners[$1] ?? []) }.count }
            while !suppressed.isEmpty && (suppressed.count < 2 || unionSize() < k) {
                // The smallest published cell goes next: it gives the least information away.
                guard let next = servers_.keys.filter({ !suppressed.contains($0) }).min(by: { (servers_[$0] ?? 0, $0) < (servers_[$1] ?? 0, $1) }) else { break }
                suppressed.insert(next)
            }
            let cells = servers_.filter { !suppressed.contains($0.key) }
                .map { Cell(value: Self.publishable($0.key), servers: $0.value) }
                .sorted { ($1.servers, $0.value) < ($0.servers, $1.value) }
            return Dimension(name: name, cells: cells, suppressedCells: suppressed.count,
                             suppressedServers: suppressed.reduce(0) { $0 + (servers_[$1] ?? 0) })
        }
        return AggregateReport(k: k, totalServers: servers.count, dimensions: dimensions)
    }

    /// A value that looks like an address or an email is withheld (a fact is declared as an OS name, not checked
    /// for meaning).
    static func publishable(_ value: String) -> String {
        if value.contains("@") || AddressPrivacy.isAddress(value) || AddressPrivacy.isAddress(value.split(separator: "/").first.map(String.init) ?? "") {
            return "(withheld)"
        }
        return value
    }

    /// The servers of the fleet, as counted: active agents only.
    public static func servers(_ agents: [AgentPrivacyView]) -> [Server] {
        agents.filter { $0.removedAt == nil }.map { agent in
            let facts = agent.facts
            let panel = facts["panel"] ?? "unknown"
            let values = [
                "os": [facts["osName"], facts["osVersion"]].compactMap { $0 }.joined(separator: " "),
                "kernel": facts["kernelRelease"] ?? "unknown",
                "panel": panel == "none" ? "none" : "\(panel) \(facts["panelVersion"] ?? "")".trimmingCharacters(in: .whitespaces),
                "tier": agent.tier ?? "unlicensed",
                "agentVersion": facts["agentVersion"] ?? "unknown",
            ]
            return Server(customer: agent.customerID.map { "customer \($0)" } ?? "unlicensed", values: values)
        }
    }

    public var table: String {
        var lines = ["servers by dimension, cells with fewer than \(k) customers suppressed (with complementary suppression)"]
        lines.append("total servers: \(totalServers.map(String.init) ?? "suppressed (fewer than \(k) customers in all)")")
        for dimension in dimensions {
            lines.append("\(dimension.name):")
            for cell in dimension.cells { lines.append("  \(cell.servers)\t\(cell.value)") }
            if dimension.suppressedCells > 0 {
                lines.append("  \(totalServers == nil ? "-" : String(dimension.suppressedServers))\t(\(dimension.suppressedCells) cells suppressed)")
            }
        }
        return lines.joined(separator: "\n")
    }
}

/// Who must be notified of a breach, how to reach them, and by when: 7 business days after discovery.
public struct BreachReport: Codable, Sendable {
    public struct Affected: Codable, Sendable {
        public var customerID: Int64
        public var name: String?
        public var email: String?
        public var licences: [String]
        public var servers: Int
        /// Set when the customer was erased after the breach began: no contact details are held any more.
        public var erasedAt: Int64?
    }
    public var since: String
    public var discovered: String
    /// The last day to notify (UTC), 7 business days after discovery (Saturdays and Sundays skipped).
    public var deadline: String
    public var businessDays: Int
    public var affected: [Affected]

    public static let businessDays = 7

    /// The day `businessDays` weekdays after the day of `discovered` (UTC): a discovery on Friday 2 January 2026
    /// gives Tuesday 13 January. Public holidays are not known to the controller and are not skipped.
    public static func deadline(discovered: Date, businessDays: Int = businessDays) -> Date {
        var calendar = Calendar(identifier: .gregorian)
        calendar.timeZone = TimeZone(identifier: "UTC") ?? calendar.timeZone
        var day = calendar.startOfDay(for: discovered)
        var counted = 0
        while counted < businessDays {
            guard let next = calendar.date(byAdding: .day, value: 1, to: day) else { break }
            day = next
            if !calendar.isDateInWeekend(day) { counted += 1 }
        }
        return day
    }

    static func dayText(_ date: Date) -> String {
        let formatter = ISO8601DateFormatter()
        formatter.formatOptions = [.withFullDate]
        return formatter.string(from: date)
    }

    public var table: String {
        var lines = ["breach since \(since), discovered \(discovered): notify by \(deadline) (\(businessDays) business days, weekends skipped)",
                     "\(affected.count) customers affected"]
        for customer in affected {
            let contact = customer.erasedAt != nil ? "(erased; no contact details held)" : "\(customer.name ?? "?") <\(customer.email ?? "?")>"
            lines.append("  customer \(customer.customerID)  \(contact)  licences \(customer.licences.joined(separator: ","))  servers \(customer.servers)")
        }
        return lines.joined(separator: "\n")
    }
}

extension PrivacyService {
    /// The aggregate report over the fleet's active agents.
    public func aggregate(k: Int) throws -> AggregateReport {
        guard (2...1_000_000).contains(k) else { throw PrivacyError.invalidInput("--k must be a whole number from 2 to 1000000") }
        return AggregateReport.make(servers: AggregateReport.servers(try store.agents()), k: k)
    }

    /// The customers whose personal data was held at any time since `since`, with contact details (a read of
    /// personal data: audited), and the notification deadline.
    public func breachReport(since: Date, discovered: Date, access: Access) throws -> BreachReport {
        guard since <= discovered else { throw PrivacyError.invalidInput("--since must not be after --discovered") }
        try audit(access, action: "breach-report", subject: "all customers")
        let sinceSeconds = Int64(since.timeIntervalSince1970)
        let agents = try store.agents()
        var affected: [BreachReport.Affected] = []
        for record in try store.customerRecords() {
            if let erased = record.erasedAt, erased < sinceSeconds { continue }
            let owned = try store.licences(customerID: record.id).map(\.id)
            affected.append(BreachReport.Affected(customerID: record.id, name: record.customer?.name, email: record.customer?.email,
                                                  licences: owned, servers: agents.filter { $0.customerID == record.id && $0.removedAt == nil }.count,
                                                  erasedAt: record.erasedAt))
        }
        return BreachReport(since: BreachReport.dayText(since), discovered: BreachReport.dayText(discovered),
                            deadline: BreachReport.dayText(BreachReport.deadline(discovered: discovered)),
                            businessDays: BreachReport.businessDays, affected: affected)
    }
}
