// swift-tools-version:6.0
import PackageDescription

/// C libraries from Debian, each wrapped by exactly one Swift module.
/// `pkgConfig: nil` for a library that is opened at run time (dlopen) rather than linked: only its headers are used.
func systemLibrary(_ name: String, pkgConfig: String?, apt: [String]) -> Target {
    .systemLibrary(name: name, path: "Sources/\(name)", pkgConfig: pkgConfig, providers: [.apt(apt)])
}

var targets: [Target] = [
    systemLibrary("CSSH2", pkgConfig: "libssh2", apt: ["libssh2-1-dev"]),
    // Not linked: HTTPClient opens libcurl when the first transfer needs it (see CurlLibrary for why).
    systemLibrary("CCurl", pkgConfig: nil, apt: ["libcurl4-openssl-dev"]),
    systemLibrary("CSQLite", pkgConfig: "sqlite3", apt: ["libsqlite3-dev"]),
    systemLibrary("CCrypto", pkgConfig: "libcrypto", apt: ["libssl-dev"]),
    systemLibrary("CZstd", pkgConfig: "libzstd", apt: ["libzstd-dev"]),
    systemLibrary("CMicroHTTPD", pkgConfig: "libmicrohttpd", apt: ["libmicrohttpd-dev"]),

    // Linux constants glibc hides behind _GNU_SOURCE (O_DIRECT); a C target, so the define reaches the headers.
    .target(name: "CLinux"),
    // Turns libmicrohttpd's own fixed HTML error pages into the protocol's JSON errors (see its header for how).
    .target(name: "CMicroHTTPDErrorBodies", dependencies: ["CMicroHTTPD"]),

    // Wrappers: one concern each, no knowledge of Fleetkeep.
    .target(name: "SQLite", dependencies: ["CSQLite"]),
    .target(name: "HTTPServer", dependencies: ["CMicroHTTPD", "CMicroHTTPDErrorBodies"]),
    .target(name: "HTTPClient", dependencies: ["CCurl"]),
    .target(name: "Crypto", dependencies: ["CCrypto"]),
    .target(name: "Zstd", dependencies: ["CZstd"]),
    .target(name: "SFTP", dependencies: ["CSSH2"]),
    // The system calls we make everywhere: an owning file descriptor, `Errno`, atomic file writes, directory listing.
    .target(name: "Posix", dependencies: ["CLinux"]),

    // Small argument parser shared by both programs (no third-party packages).
    .target(name: "CommandLineSupport"),
    // Schedules: cron expressions, windows with per-agent jitter, policies. Pure computation over an injected clock.
    .target(name: "Scheduling"),
    // The shared language between agent and controller.
    .target(name: "FleetkeepProtocol", dependencies: ["Crypto", "Scheduling"]),
    // Backup engine: repository format, chunking, packs, snapshots. No HTTP, no controller.
    .target(name: "BackupEngine", dependencies: ["Crypto", "Zstd", "SQLite", "CLinux", "Posix"]),
    // Agent and controller logic.
    .target(name: "AgentCore", dependencies: ["FleetkeepProtocol", "BackupEngine", "HTTPClient", "SFTP", "Crypto", "CommandLineSupport", "Scheduling", "CLinux", "Posix"]),
    .target(name: "ControllerCore", dependencies: ["FleetkeepProtocol", "SQLite", "HTTPServer", "HTTPClient", "Crypto", "CommandLineSupport", "Scheduling", "Posix"]),

    // The two thin programs.
    .executableTarget(name: "fleetkeep-agent", dependencies: ["AgentCore", "CommandLineSupport", "Crypto", "FleetkeepProtocol", "Posix"], path: "Agent/Sources"),
    .executableTarget(name: "fleetkeep-controller", dependencies: ["ControllerCore", "CommandLineSupport", "Crypto", "FleetkeepProtocol", "Posix"], path: "Controller/Sources"),
    // Load generator for `ops/bench controller`: many simulated agents sending signed heartbeats.
    .executableTarget(name: "fleetkeep-loadgen", dependencies: ["FleetkeepProtocol", "HTTPClient", "Crypto", "AgentCore", "ControllerCore", "SQLite"], path: "ops/loadgen"),

    // Tests mirror the modules.
    .target(name: "TestSupport", dependencies: ["Crypto"], path: "Tests/TestSupport"),
    .testTarget(name: "SQLiteTests", dependencies: ["SQLite", "TestSupport"]),
    .testTarget(name: "HTTPTests", dependencies: ["HTTPServer", "HTTPClient", "Crypto", "TestSupport"]),
    .testTarget(name: "CryptoTests", dependencies: ["Crypto"]),
    .testTarget(name: "ZstdTests", dependencies: ["Zstd", "TestSupport"]),
    .testTarget(name: "SFTPTests", dependencies: ["SFTP", "TestSupport"]),
    .testTarget(name: "PosixTests", dependencies: ["Posix", "TestSupport"]),
    .testTarget(name: "SchedulingTests", dependencies: ["Scheduling"]),
    .testTarget(name: "ProtocolTests", dependencies: ["FleetkeepProtocol", "CommandLineSupport"]),
    .testTarget(name: "BackupEngineTests", dependencies: ["BackupEngine", "Posix", "TestSupport"]),
    .testTarget(name: "AgentCoreTests", dependencies: ["AgentCore", "Scheduling", "CommandLineSupport", "TestSupport"]),
    .testTarget(name: "ControllerCoreTests", dependencies: ["ControllerCore", "TestSupport"]),
    .testTarget(name: "EndToEndTests", dependencies: ["TestSupport", "Crypto", "HTTPClient", "FleetkeepProtocol", "SQLite"]),
]

// One place for compiler settings, applied to every Swift target.
for target in targets where target.type != .system && !["CLinux", "CMicroHTTPDErrorBodies"].contains(target.name) {
    target.swiftSettings = (target.swiftSettings ?? []) + [
        .swiftLanguageMode(.v6),
        .enableUpcomingFeature("ExistentialAny"),
    ]
}

let package = Package(
    name: "Fleetkeep",
    platforms: [.macOS(.v15)],
    products: [
        .executable(name: "fleetkeep-agent", targets: ["fleetkeep-agent"]),
        .executable(name: "fleetkeep-controller", targets: ["fleetkeep-controller"]),
    ],
    targets: targets
)
