import Foundation

/// One hosting account and where its data lives.
public struct HostingAccount: Sendable, Codable, Equatable {
    public var user: String
    public var home: String
    /// The mail directory inside the home.
    public var mailDirectory: String { home + "/mail" }
}

/// Finds the hosting accounts of a server, reading under `root`:
/// - cPanel: one file per account in `var/cpanel/users/`; the home is its `HOMEDIR=` line or `home/USER`.
/// - Plesk: one directory per subscription in `var/www/vhosts/` (system directories skipped).
/// - Otherwise: the `[accounts]` section of the config (user = home).
public enum HostingAccounts {
    public static func discover(root: String, configured: [String: String]) throws -> [HostingAccount] {
        if !configured.isEmpty {
            return try configured.sorted { $0.key < $1.key }.map { user, home in
                try validateName(user, source: "config [accounts]")
                return HostingAccount(user: user, home: join(root, home))
            }
        }
        let cpanel = join(root, "var/cpanel/users")
        if let users = try? FileManager.default.contentsOfDirectory(atPath: cpanel) {
            return try users.sorted().filter { !$0.hasPrefix(".") && $0 != "system" }.map { user in
                try validateName(user, source: cpanel)
                let text = (try? String(contentsOfFile: cpanel + "/" + user, encoding: .utf8)) ?? ""
                let homeLine = text.split(separator: "\n").first { $0.hasPrefix("HOMEDIR=") }
                let home = homeLine.map { join(root, String($0.dropFirst("HOMEDIR=".count))) } ?? join(root, "home/" + user)
                return HostingAccount(user: user, home: home)
            }
        }
        let vhosts = join(root, "var/www/vhosts")
        if let domains = try? FileManager.default.contentsOfDirectory(atPath: vhosts) {
            let system: Set<String> = ["system", "default", "chroot", "fs", "fs-passwd", ".skel"]
            return try domains.sorted().filter { !system.contains($0) && !$0.hasPrefix(".") }.map { domain in
                try validateName(domain, source: vhosts)
                return HostingAccount(user: domain, home: vhosts + "/" + domain)
            }
        }
        throw AgentError("no hosting accounts found under \(root): no var/cpanel/users, no var/www/vhosts, and no [accounts] in the config")
    }

    /// Account names become tags, paths and database prefixes: refuse anything that could escape or confuse.
    public static func validateName(_ name: String, source: String) throws {
        let allowed = name.unicodeScalars.allSatisfy { CharacterSet.alphanumerics.contains($0) || "._-".unicodeScalars.contains($0) }
        guard !name.isEmpty, name.count <= 128, allowed, !name.hasPrefix("-"), !name.hasPrefix("."), !name.contains("..") else {
            throw AgentError("refusing hosting account name \(name.debugDescription) from \(source): only letters, digits, '.', '_' and '-' are allowed, not first")
        }
    }

    static func join(_ root: String, _ path: String) -> String {
        let trimmedRoot = root.hasSuffix("/") ? String(root.dropLast()) : root
        return trimmedRoot + "/" + (path.hasPrefix("/") ? String(path.dropFirst()) : path)
    }
}
