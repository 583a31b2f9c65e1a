/// One field the controller may store, with why, on what legal basis and for how long.
public struct DeclaredField: Sendable, Codable {
    public let name: String
    public let purpose: String
    public let legalBasis: String
    public let retention: String
    public let personal: Bool
}

/// The controller's data inventory: every field it stores about an agent is declared here, once.
/// Ingestion refuses any field that is not declared, so nothing is kept silently. `docs/PRIVACY.md` renders this list.
public enum DataInventory {
    static let licence = "validate the software and licence status"
    static let improve = "monitor and improve the product"
    static let whileActive = "while the service is active, then deleted after the configured period"

    public static let facts: [DeclaredField] = [
        DeclaredField(name: "hostname", purpose: licence, legalBasis: "legitimate interests", retention: whileActive, personal: true),
        DeclaredField(name: "primaryIP", purpose: licence, legalBasis: "legitimate interests", retention: whileActive, personal: true),
        DeclaredField(name: "osID", purpose: improve, legalBasis: "legitimate interests", retention: whileActive, personal: false),
        DeclaredField(name: "osName", purpose: improve, legalBasis: "legitimate interests", retention: whileActive, personal: false),
        DeclaredField(name: "osVersion", purpose: improve, legalBasis: "legitimate interests", retention: whileActive, personal: false),
        DeclaredField(name: "kernelRelease", purpose: improve, legalBasis: "legitimate interests", retention: whileActive, personal: false),
        DeclaredField(name: "kernelVersion", purpose: improve, legalBasis: "legitimate interests", retention: whileActive, personal: false),
        DeclaredField(name: "panel", purpose: licence, legalBasis: "legitimate interests", retention: whileActive, personal: false),
        DeclaredField(name: "panelVersion", purpose: licence, legalBasis: "legitimate interests", retention: whileActive, personal: false),
        DeclaredField(name: "agentVersion", purpose: licence, legalBasis: "legitimate interests", retention: whileActive, personal: false),
        DeclaredField(name: "agentTier", purpose: licence, legalBasis: "legitimate interests", retention: whileActive, personal: false),
    ]

    /// What the licence system stores besides facts (tables of `LicenceSchema`). Customer name and email live behind
    /// `CustomerStore` only, so encrypting them is a change to one type.
    public static let licensing: [DeclaredField] = [
        DeclaredField(name: "customer.name", purpose: licence, legalBasis: "contract", retention: whileActive, personal: true),
        DeclaredField(name: "customer.email", purpose: licence, legalBasis: "contract", retention: whileActive, personal: true),
        DeclaredField(name: "machine.machineIDHash", purpose: licence, legalBasis: "legitimate interests", retention: whileActive, personal: false),
        DeclaredField(name: "machine.rootFilesystemHash", purpose: licence, legalBasis: "legitimate interests", retention: whileActive, personal: false),
    ]

    public static let declaredFactNames: Set<String> = Set(facts.map(\.name))

    /// The longest value stored for one fact or problem; agents send short strings (an OS name, a kernel version).
    public static let longestValue = 1024

    /// Why a report of facts and problems must not be stored, or nil when every field is declared and every value
    /// fits. `problems` explain why a fact could not be read, so their keys must be declared fact names too.
    public static func violation(facts: [String: String], problems: [String: String]) -> String? {
        if let field = undeclared(facts.keys) { return "fact '\(field)' is not in the controller's data inventory; it was not stored" }
        if let field = undeclared(problems.keys) {
            return "problem key '\(field)' is not a fact in the controller's data inventory; nothing was stored"
        }
        for (kind, fields) in [("fact", facts), ("problem", problems)] {
            if let (name, _) = fields.filter({ $0.value.utf8.count > longestValue }).min(by: { $0.key < $1.key }) {
                return "\(kind) '\(name)' is longer than \(longestValue) bytes; nothing was stored"
            }
        }
        return nil
    }

    /// The first undeclared field name, if any, in sorted order so the error is stable.
    public static func undeclared(_ names: some Collection<String>) -> String? {
        names.filter { !declaredFactNames.contains($0) }.sorted().first
    }
}
