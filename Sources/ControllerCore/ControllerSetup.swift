import Crypto
import FleetkeepProtocol
import Foundation
import HTTPServer
import Posix

/// Creating a controller's data directory and starting its server.
public enum ControllerSetup {
    /// Creates the database, signing key and TLS certificate (all 0600) and returns the certificate fingerprint.
    public static func initialize(paths: ControllerPaths, heartbeatInterval: Int = 300) throws -> String {
        let manager = FileManager.default
        if manager.fileExists(atPath: paths.database) || manager.fileExists(atPath: paths.certificate) {
            throw ControllerError("\(paths.directory) already holds a controller; refusing to overwrite it (use another --data directory)")
        }
        do throws(Errno) {
            try Directory.createPrivate(paths.directory)
        } catch {
            throw ControllerError("cannot create data directory \(paths.directory): \(error)")
        }
        let hostname = ProcessInfo.processInfo.hostName
        let certificate = try SelfSignedCertificate.generate(commonName: "fleetkeep-controller",
                                                             subjectAltNames: ["localhost", "127.0.0.1", hostname], validDays: 3650)
        try writePrivateFile(paths.certificate, Array(certificate.certificatePEM.utf8))
        try writePrivateFile(paths.privateKey, Array(certificate.privateKeyPEM.utf8))
        try writePrivateFile(paths.signingKey, Array(Base64URL.encode(Ed25519PrivateKey().rawRepresentation).utf8))
        let store = try ControllerStore(path: paths.database)
        try store.setSetting("heartbeat_interval", String(heartbeatInterval))
        return try SelfSignedCertificate.publicKeySHA256(certificatePEM: certificate.certificatePEM)
    }

    /// Opens an initialized data directory, with a clear error when it is missing or damaged.
    public static func open(paths: ControllerPaths) throws -> (ControllerStore, String) {
        guard FileManager.default.fileExists(atPath: paths.database) else {
            throw ControllerError("no controller in \(paths.directory); run `fleetkeep-controller init --data \(paths.directory)` first")
        }
        let store: ControllerStore
        do {
            store = try ControllerStore(path: paths.database)
        } catch {
            throw ControllerError("controller database \(paths.database) cannot be opened: \(error)")
        }
        guard let pem = try? String(contentsOfFile: paths.certificate, encoding: .utf8) else {
            throw ControllerError("cannot read TLS certificate \(paths.certificate)")
        }
        // A database restored from a copy older than an erasure must not bring the erased customer back.
        try PrivacyService(controllerStore: store).applyLedger()
        return (store, try SelfSignedCertificate.publicKeySHA256(certificatePEM: pem))
    }

    /// The controller's Ed25519 signing key: it signs leases and validation answers.
    public static func signingKey(paths: ControllerPaths) throws -> Ed25519PrivateKey {
        guard let text = try? String(contentsOfFile: paths.signingKey, encoding: .utf8),
              let raw = Base64URL.decode(text.trimmingCharacters(in: .whitespacesAndNewlines)), let key = try? Ed25519PrivateKey(rawRepresentation: raw) else {
            throw ControllerError("signing key \(paths.signingKey) is missing or damaged; restore the data directory from a backup")
        }
        return key
    }

    /// The secret that keys session tokens, derived from the controller's Ed25519 signing key.
    public static func sessionSecret(paths: ControllerPaths) throws -> [UInt8] {
        guard let text = try? String(contentsOfFile: paths.signingKey, encoding: .utf8),
              let raw = Base64URL.decode(text.trimmingCharacters(in: .whitespacesAndNewlines)), raw.count == 32 else {
            throw ControllerError("signing key \(paths.signingKey) is missing or damaged; restore the data directory from a backup")
        }
        return try SessionTickets.secret(fromSigningKey: raw)
    }

    /// Starts serving on `host:port`: HTTPS, or plain HTTP when `plainHTTP` is set (loopback hosts only).
    public static func serve(paths: ControllerPaths, host: String, port: UInt16, threads: Int = ProcessInfo.processInfo.activeProcessorCount,
                             plainHTTP: Bool = false, log: @escaping @Sendable (String) -> Void = { _ in }) throws -> (HTTPServer, ControllerService) {
        let (store, pin) = try open(paths: paths)
        let service = ControllerService(store: store, certificatePin: pin, sessionSecret: try sessionSecret(paths: paths),
                                            signingKey: try signingKey(paths: paths))
        service.startBatchedWrites()
        service.startDailyPurge()
        if plainHTTP && !isLoopback(host) {
            throw ControllerError("plain HTTP is only allowed on a loopback address (127.0.0.1, ::1, localhost), not \(host); drop --plain-http to serve HTTPS")
        }
        var configuration = HTTPServerConfiguration(host: host, port: port, tlsCertificatePath: plainHTTP ? nil : paths.certificate,
                                                    tlsPrivateKeyPath: plainHTTP ? nil : paths.privateKey, threads: threads)
        // Agent messages are a few hundred bytes; anything near this limit is a mistake or an attack.
        configuration.maxBodyBytes = 64 * 1024
        let jobService = JobService(jobs: try SQLiteJobStore(database: store.database),
                                    schedules: ScheduleService(store: try SQLiteScheduleStore(database: store.database)), agents: service)
        var router = service.router
        jobService.register(in: &router)
        let dashboard = try Dashboard.open(store: store, licences: service.licences, jobs: jobService.jobs, schedules: jobService.schedules,
                                           metricsAccess: try MetricsAccess.load(path: paths.metricsToken))
        dashboard.register(in: &router)
        router.wrap("POST", APIPath.heartbeat, dashboard.metrics.heartbeats.measure)
        router.wrap("POST", APIPath.licenceValidate, dashboard.metrics.validations.measure)
        // Every agent keeps one long poll open (see JobService): room for a large fleet on top of the short requests.
        configuration.maxConnections = 16_384
        let server = try HTTPServer(configuration: configuration, router: router)
        try server.start()
        jobService.start()
        try AlertService.open(store: store, startedAt: FleetkeepClock.now(), controllerName: try name(store: store), log: log).start()
        return (server, service)
    }

    /// How alerts name this controller: the URL agents use, else the host name.
    public static func name(store: ControllerStore) throws -> String {
        try store.setting("url") ?? ProcessInfo.processInfo.hostName
    }

    static func isLoopback(_ host: String) -> Bool {
        host == "localhost" || host == "::1" || host.hasPrefix("127.")
    }
}
