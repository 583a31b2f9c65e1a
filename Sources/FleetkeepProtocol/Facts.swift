/// What an agent reports about its server. On the wire the facts are a flat string map, so the controller can check
/// every field name against its data inventory before storing anything.
public struct AgentFacts: Codable, Sendable, Equatable {
    public var hostname: String
    public var osID: String
    public var osName: String
    public var osVersion: String
    public var kernelRelease: String
    public var kernelVersion: String
    public var panel: String
    public var panelVersion: String
    public var agentVersion: String
    public var agentTier: String
    public var primaryIP: String
    /// Why a fact is "unknown", keyed by the fact's name.
    public var problems: [String: String]

    public static let unknown = "unknown"

    public init(hostname: String = unknown, osID: String = unknown, osName: String = unknown, osVersion: String = unknown,
                kernelRelease: String = unknown, kernelVersion: String = unknown, panel: String = "none",
                panelVersion: String = "", agentVersion: String = FleetkeepVersion.agent, agentTier: String = "standard",
                primaryIP: String = unknown, problems: [String: String] = [:]) {
        self.hostname = hostname
        self.osID = osID
        self.osName = osName
        self.osVersion = osVersion
        self.kernelRelease = kernelRelease
        self.kernelVersion = kernelVersion
        self.panel = panel
        self.panelVersion = panelVersion
        self.agentVersion = agentVersion
        self.agentTier = agentTier
        self.primaryIP = primaryIP
        self.problems = problems
    }

    /// The flat wire form: every fact by name.
    public var fields: [String: String] {
        ["hostname": hostname, "osID": osID, "osName": osName, "osVersion": osVersion, "kernelRelease": kernelRelease,
         "kernelVersion": kernelVersion, "panel": panel, "panelVersion": panelVersion, "agentVersion": agentVersion,
         "agentTier": agentTier, "primaryIP": primaryIP]
    }

    /// Rebuilds facts from the wire form; missing fields read as "unknown".
    public init(fields: [String: String], problems: [String: String] = [:]) {
        self.init(hostname: fields["hostname"] ?? Self.unknown, osID: fields["osID"] ?? Self.unknown,
                  osName: fields["osName"] ?? Self.unknown, osVersion: fields["osVersion"] ?? Self.unknown,
                  kernelRelease: fields["kernelRelease"] ?? Self.unknown, kernelVersion: fields["kernelVersion"] ?? Self.unknown,
                  panel: fields["panel"] ?? Self.unknown, panelVersion: fields["panelVersion"] ?? "",
                  agentVersion: fields["agentVersion"] ?? Self.unknown, agentTier: fields["agentTier"] ?? Self.unknown,
                  primaryIP: fields["primaryIP"] ?? Self.unknown, problems: problems)
    }
}

/// Versions compiled into the programs.
public enum FleetkeepVersion {
    public static let agent = "0.1.0"
    public static let controller = "0.1.0"
    public static let protocolVersion = 1
}
