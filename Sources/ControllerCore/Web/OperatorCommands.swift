import CommandLineSupport
import Foundation

extension ControllerPaths {
    /// The bearer token /metrics accepts (0600; see `MetricsAccess`).
    public var metricsToken: String { directory + "/" + MetricsAccess.fileName }
}

/// `fleetkeep-controller operator ...` and `metrics token`: the dashboard's accounts and the scrape token.
public enum OperatorCommands {
    public static let usage = """
      operator add NAME --role admin|viewer [--expires 24h] [--url URL]   create a dashboard operator; prints a one-time link to set its password
      operator list [--json]                             operators, roles, whether a password is set, last sign-in
      operator reset NAME [--expires 24h] [--url URL]    clear the password, end its sessions, print a new link
      operator remove NAME                               delete the operator and end its sessions
      metrics token                                      write a new bearer token for /metrics to DATA/metrics.token (0600)
    """

    public static func operatorCommand(_ raw: [String]) throws -> Int32 {
        let arguments = try Arguments(raw, options: ["data", "role", "expires", "url"], flags: ["json"])
        let (store, _) = try ControllerSetup.open(paths: ControllerCommands.paths(arguments))
        let service = OperatorService(store: try SQLiteOperatorStore(database: store.database))
        /// The URL browsers reach the dashboard at, checked before anything is changed.
        func dashboardURL() throws -> String {
            guard let base = try arguments.value("url") ?? store.setting("url") else {
                throw ControllerError("no controller URL known yet: start `fleetkeep-controller serve` once, or pass --url https://HOST:PORT")
            }
            let trimmed = base.hasSuffix("/") ? String(base.dropLast()) : base
            guard let url = URL(string: trimmed), ["https", "http"].contains(url.scheme ?? ""), url.host != nil else {
                throw UsageError("--url '\(base.prefix(200))' must be an http(s) URL such as https://ctl.example:8443")
            }
            return trimmed
        }
        func link(_ base: String, _ secret: String) -> String { base + HTML.url("/setup", [("token", secret)]) }
        func lifetime() throws -> Int64? {
            try arguments.value("expires").map { try Arguments.parseDuration($0, option: "expires", maximum: 30 * 86_400) }
        }
        do {
            switch arguments.positionals.first {
            case "add":
                let name = try arguments.positional(1, "NAME")
                try arguments.expectPositionals(atMost: 2)
                guard let roleText = arguments.value("role") else { throw UsageError("operator add needs --role admin or --role viewer") }
                guard let role = OperatorRole(rawValue: roleText) else { throw UsageError("--role '\(roleText.prefix(20))' must be admin or viewer") }
                let expires = try lifetime()
                let base = try dashboardURL()
                let secret = try service.add(name: name, role: role, linkSeconds: expires)
                print("operator \(name) (\(role.rawValue)) created; open this link once to set the password (valid \((expires ?? OperatorPolicy().setupLinkSeconds) / 3600) h):")
                print(link(base, secret))
            case "reset":
                let name = try arguments.positional(1, "NAME")
                try arguments.expectPositionals(atMost: 2)
                let base = try dashboardURL()
                let secret = try service.reset(name: name, linkSeconds: try lifetime())
                print("operator \(name): password cleared and every session ended; open this link once to set a new password:")
                print(link(base, secret))
            case "remove":
                let name = try arguments.positional(1, "NAME")
                try arguments.expectPositionals(atMost: 2)
                try service.remove(name: name)
                print("operator \(name) removed; its sessions are over")
            case "list":
                try arguments.expectPositionals(atMost: 1)
                let operators = try service.list()
                if arguments.flag("json") {
                    struct Listed: Encodable { let name: String; let role: String; let passwordSet: Bool; let createdAt: Int64; let lastLoginAt: Int64? }
                    print(try ControllerCommands.jsonText(operators.map {
                        Listed(name: $0.name, role: $0.role.rawValue, passwordSet: $0.password != nil, createdAt: $0.createdAt, lastLoginAt: $0.lastLoginAt)
                    }))
                } else {
                    for record in operators {
                        let state = record.password != nil ? "password set" : "waiting for its password link"
                        print("\(record.name)  \(record.role.rawValue)  \(state)  last sign-in \(record.lastLoginAt.map { DisplayFormat.time($0) } ?? "never")")
                    }
                    print("\(operators.count) operators")
                }
            default:
                throw UsageError("expected `operator add|list|reset|remove`")
            }
        } catch let error as DashboardError {
            throw ControllerError(error.description)
        }
        return 0
    }

    public static func metrics(_ raw: [String]) throws -> Int32 {
        let arguments = try Arguments(raw, options: ["data"])
        guard arguments.positionals == ["token"] else { throw UsageError("expected `metrics token`") }
        let paths = ControllerCommands.paths(arguments)
        _ = try ControllerSetup.open(paths: paths)
        let token = try MetricsAccess.create(path: paths.metricsToken)
        print("wrote a new /metrics bearer token to \(paths.metricsToken) (0600); restart `fleetkeep-controller serve` to use it")
        print(token)
        return 0
    }
}
