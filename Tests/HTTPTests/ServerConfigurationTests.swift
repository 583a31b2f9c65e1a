import Foundation
import HTTPServer
import Testing
import TestSupport

struct ServerConfigurationTests {
    @Test func plainHTTPOnNonLoopbackHostIsRefused() throws {
        for host in ["0.0.0.0", "::", "192.0.2.10"] {
            let error = #expect(throws: HTTPServerError.self) {
                _ = try HTTPServer(configuration: HTTPServerConfiguration(host: host), router: Router())
            }
            #expect(error?.description.contains("non-loopback") == true)
            #expect(error?.description.contains(host) == true)
        }
        // Loopback in both families is fine.
        for host in ["127.0.0.1", "::1", "localhost"] {
            let server = try HTTPServer(configuration: HTTPServerConfiguration(host: host), router: Router())
            try server.start()
            #expect(server.port != 0)
            server.shutdown()
        }
    }

    @Test func badHostAndTLSSettingsGiveClearErrors() throws {
        let hostError = #expect(throws: HTTPServerError.self) {
            _ = try HTTPServer(configuration: HTTPServerConfiguration(host: "controller.example"), router: Router())
        }
        #expect(hostError?.description.contains("controller.example") == true)

        let halfTLS = #expect(throws: HTTPServerError.self) {
            _ = try HTTPServer(configuration: HTTPServerConfiguration(tlsCertificatePath: "/tmp/x.pem"), router: Router())
        }
        #expect(halfTLS?.description.contains("together") == true)

        let dir = TemporaryDirectory()
        let missing = dir.appending("missing-cert.pem")
        let missingError = #expect(throws: HTTPServerError.self) {
            _ = try HTTPServer(configuration: HTTPServerConfiguration(tlsCertificatePath: missing, tlsPrivateKeyPath: missing),
                               router: Router())
        }
        #expect(missingError?.description.contains(missing) == true)

        let garbage = dir.appending("garbage.pem")
        try "hello".write(toFile: garbage, atomically: true, encoding: .utf8)
        let garbageError = #expect(throws: HTTPServerError.self) {
            _ = try HTTPServer(configuration: HTTPServerConfiguration(tlsCertificatePath: garbage, tlsPrivateKeyPath: garbage),
                               router: Router())
        }
        #expect(garbageError?.description.contains("not PEM") == true)
    }

    @Test func mismatchedCertificateAndKeyFailToStart() throws {
        let one = TemporaryDirectory(), two = TemporaryDirectory()
        let a = try makeSelfSignedTLS(in: one.path), b = try makeSelfSignedTLS(in: two.path)
        let server = try HTTPServer(configuration: HTTPServerConfiguration(tlsCertificatePath: a.certPath, tlsPrivateKeyPath: b.keyPath),
                                    router: Router())
        let error = #expect(throws: HTTPServerError.self) { try server.start() }
        #expect(error?.description.contains("https") == true)
    }

    @Test func portInUseFailsToStart() throws {
        let first = try HTTPServer(configuration: HTTPServerConfiguration(), router: Router())
        try first.start()
        defer { first.shutdown() }
        let second = try HTTPServer(configuration: HTTPServerConfiguration(port: first.port), router: Router())
        let error = #expect(throws: HTTPServerError.self) { try second.start() }
        #expect(error?.description.contains("\(first.port)") == true)
        #expect(throws: HTTPServerError.self) { try first.start() }
    }
}
