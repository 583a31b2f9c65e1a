import AgentCore
import CommandLineSupport

/// `--help` for every command of fleetkeep-agent. Options are described once, in `options`, and named by each entry.
enum AgentHelp {
    static let repository = ["--config", "--repo", "--key-file", "--root"]

    static let options: [String: (argument: String, text: String)] = [
        "--state": ("DIR", "agent identity, enrollment and licence lease (default \(AgentState.defaultDirectory))"),
        "--root": ("DIR", "server root: facts, accounts and machine id are read under it (default / or the config's root)"),
        "--json": ("", "print JSON instead of text"),
        "--config": ("FILE", "agent configuration (default \(AgentConfig.defaultPath); a missing default file means all defaults)"),
        "--repo": ("DIR", "local repository (default: the config's repository, /var/backups/fleetkeep)"),
        "--key-file": ("FILE", "repository key file, 0600 (default: the config's key-file, /etc/fleetkeep/repository.key)"),
        "--interval": ("DURATION", "heartbeat interval, e.g. 30s, 5m (default: what the controller asks, 5m unless set there)"),
        
        "--tier": ("NAME", "product tier reported with the facts (default standard)"),
        "--offline-grace": ("DURATION", "how long the controller may be unreachable before the last known schedule runs here (default 10m)"),
        "--no-jobs": ("", "heartbeats only: take no jobs from the controller and run no schedule (default: take jobs)"),
        "--account": ("USER", "only this hosting account; repeatable (default: every account)"),
        "--kind": ("KINDS", "files, databases, email, comma-separated (default: all three; off-site: the config's kinds)"),
        "--target": ("DIR", "where to restore; for off-site commands: sftp://user@host:port/path (default: the config's [offsite] target)"),
        "--all": ("", "every account's latest snapshots, each back in its place under the target (exit 3 when partly restored)"),
        "--path": ("P", "only this path inside the snapshot (default: all of it)"),
        "--database": ("DB", "only this database (default: every database of the account)"),
        "--into-database": ("NAME", "load the dump into this MariaDB database instead of writing a .sql file"),
        "--read-data": ("", "read every pack and authenticate every blob (default: check headers, sizes and reachability only)"),
        "--read-data-part": ("P/N", "read part P of N of the packs (0 <= P < N <= 366), e.g. 3/7 for a rotating weekly read"),
        "--dry-run": ("", "say what would be deleted, delete nothing"),
        "--host-key": ("SHA256:...", "the off-site server's host key fingerprint (default: the config's, or its known-hosts file)"),
        "--identity": ("FILE", "SSH private key for the off-site server (default: the config's identity, /etc/fleetkeep/offsite_ed25519)"),
        "--known-hosts": ("FILE", "known-hosts file for the off-site server (default /etc/fleetkeep/offsite_known_hosts)"),
        "--password-file": ("FILE", "SSH password file for the off-site server, when no key is used (default: none)"),
        "--keep-weekly": ("N", "weekly off-site snapshots kept by the push's prune (default: the config's keep-weekly, 4)"),
        "--to": ("DIR", "where an off-site restore writes (required for tree restores)"),
        "--load-databases": ("", "load restored databases into MariaDB instead of writing .sql files"),
    ]

    static let offsiteOptions = ["--config", "--repo", "--key-file", "--root", "--target", "--host-key", "--identity", "--known-hosts",
                                 "--password-file", "--state", "--json"]

    static let entries: [CommandHelp] = [
        CommandHelp("enroll", "join a controller with a single-use token: makes this agent's Ed25519 key and pins the controller's certificate",
                    usage: ["TOKEN [--state DIR] [--root DIR]"], options: ["--state", "--root"], example: "fk1.eyJ1Ijo... --state /var/lib/fleetkeep"),
        CommandHelp("facts", "print what the agent reports about this server; an unknown fact says why",
                    usage: ["[--root DIR] [--json]"], options: ["--root", "--json"], example: "--json"),
        CommandHelp("run", "the daemon: a heartbeat now and then every interval, the controller's jobs, and the last known schedule while it is away",
                    usage: ["[--state DIR] [--root DIR] [--config FILE] [--interval DURATION] [--offline-grace DURATION] [--no-jobs] [--tier NAME]"],
                    options: ["--state", "--root", "--config", "--interval", "--offline-grace", "--no-jobs", "--tier"], example: "--state /var/lib/fleetkeep"),
        CommandHelp("status", "enrollment, the last heartbeat and the licence status",
                    usage: ["[--state DIR] [--root DIR] [--json]"], options: ["--state", "--root", "--json"], example: "--json"),
        CommandHelp("repo init", "create the local repository, and its key file (0600) if missing",
                    usage: ["[--config FILE] [--repo DIR] [--key-file FILE]"], options: repository, example: "--repo /var/backups/fleetkeep"),
        CommandHelp("backup", "back up every hosting account (or the chosen ones) into the local repository",
                    usage: ["[--config FILE] [--root DIR] [--repo DIR] [--account USER]... [--kind files,databases,email] [--json]"],
                    options: repository + ["--account", "--kind", "--json"], example: "--account alice --kind files,databases"),
        CommandHelp("snapshots", "list the snapshots in the local repository",
                    usage: ["[--config FILE] [--account USER] [--kind KIND] [--json]"], options: repository + ["--account", "--kind", "--json"],
                    example: "--account alice --kind files"),
        CommandHelp("restore", "restore files, email or databases from a snapshot; nothing in the target is followed or written through",
                    usage: ["latest|SNAPSHOT [--account USER] [--kind KIND] [--path P] --target DIR",
                            "latest --account USER --kind databases [--database DB] (--target DIR | --into-database NAME)",
                            "latest --all --target ROOT [--account USER]... [--kind files,email]"],
                    options: repository + ["--account", "--kind", "--path", "--target", "--all", "--database", "--into-database", "--json"],
                    example: "latest --account alice --kind files --path public_html --target /root/alice-restore"),
        CommandHelp("verify", "check the local repository: packs, headers and reachability; with --read-data every blob",
                    usage: ["[--config FILE] [--read-data | --read-data-part P/N] [--json]"],
                    options: repository + ["--read-data", "--read-data-part", "--json"], example: "--read-data"),
        CommandHelp("prune", "apply retention per kind (files and databases 30 days, email 1 day by default) and free space",
                    usage: ["[--config FILE] [--dry-run] [--json]"], options: repository + ["--dry-run", "--json"], example: "--dry-run"),
        CommandHelp("repair index", "rebuild the index from the packs' own headers (after a damaged index file or a lost pack)",
                    usage: ["[--config FILE] [--json]"], options: repository + ["--json"], example: "--config /etc/fleetkeep/agent.conf"),
        CommandHelp("repair snapshots", "rewrite damaged snapshots without the lost files, naming every file dropped",
                    usage: ["[--config FILE] [--read-data] [--json]"], options: repository + ["--read-data", "--json"], example: "--read-data"),
        CommandHelp("offsite trust", "fetch the off-site server's host key and write it to the known-hosts file",
                    usage: ["[--config FILE] [--target sftp://user@host:port/path]"], options: offsiteOptions, example: "--target sftp://backup@offsite.example:22/srv/fk/web1"),
        CommandHelp("offsite push", "copy the newest snapshots of files and databases to the off-site server over SFTP (a licensed feature)",
                    usage: ["[--config FILE] [--state DIR] [--keep-weekly N] [--json]"], options: offsiteOptions + ["--keep-weekly"],
                    example: "--config /etc/fleetkeep/agent.conf"),
        CommandHelp("offsite snapshots", "list the snapshots in the off-site copy",
                    usage: ["[--config FILE] [--account USER] [--kind KIND] [--json]"], options: offsiteOptions + ["--account", "--kind"],
                    example: "--account alice"),
        CommandHelp("offsite verify", "check the off-site copy like `verify`",
                    usage: ["[--config FILE] [--read-data] [--json]"], options: offsiteOptions + ["--read-data"], example: "--read-data"),
        CommandHelp("offsite prune", "apply the weekly off-site retention and free space there",
                    usage: ["[--config FILE] [--keep-weekly N] [--dry-run] [--json]"], options: offsiteOptions + ["--keep-weekly", "--dry-run"],
                    example: "--dry-run"),
        CommandHelp("offsite restore", "restore from the off-site copy, also on a new server with no local repository",
                    usage: ["latest|SNAPSHOT|--all --to DIR [--account USER] [--kind KIND] [--path P] [--load-databases | --into-database NAME]"],
                    options: offsiteOptions + ["--to", "--all", "--account", "--kind", "--path", "--load-databases", "--into-database"],
                    example: "--all --to / --kind files,databases"),
        CommandHelp("offsite repair", "repair the off-site copy: `index` or `snapshots`, as `repair` does locally",
                    usage: ["index|snapshots [--config FILE] [--read-data] [--json]"], options: offsiteOptions + ["--read-data"], example: "index"),
        CommandHelp("escrow", "seal the repository key to the operator's recovery key and deposit it with the controller",
                    usage: ["[--state DIR] [--config FILE] [--key-file FILE]"], options: ["--state", "--config", "--key-file"], example: "--state /var/lib/fleetkeep"),
        CommandHelp("licence activate", "bind this server to a licence key; the lease is stored 0600 and checked offline",
                    usage: ["KEY [--state DIR] [--root DIR] [--json]"], options: ["--state", "--root", "--json"], example: "FK-2C98B-CDH0P-9D5FF-ZSNSE-WKNXS-HD5MV"),
        CommandHelp("licence status", "the licence status (valid, grace, expired, suspended, revoked, over-limit, invalid, unlicensed, clock-rollback), why, and what to do",
                    usage: ["[--state DIR] [--root DIR] [--json]"], options: ["--state", "--root", "--json"], example: "--json"),
        CommandHelp("licence install", "install a lease file handed over by the operator (the same checks as a renewal)",
                    usage: ["FILE [--state DIR] [--root DIR] [--json]"], options: ["--state", "--root", "--json"], example: "/root/web1.lease"),
    ]

    static let program = ProgramHelp(program: "fleetkeep-agent", entries: entries + entries.compactMap { entry in
        // `license` is the same command as `licence`.
        entry.command.hasPrefix("licence ") ? CommandHelp("license" + entry.command.dropFirst(7), entry.purpose, usage: entry.usage,
                                                          options: entry.options, example: entry.example) : nil
    }, optionText: options)
}
