import Foundation
import HTTPClient
import HTTPServer
import Testing
import TestSupport

/// The CA bundle is found on Debian and RHEL layouts (scratch trees standing in for `/`), and an unpinned client
/// verifies against the bundle it is given.
struct CABundleTests {
    private func place(_ path: String, under root: String) throws {
        let full = root + path
        try FileManager.default.createDirectory(atPath: (full as NSString).deletingLastPathComponent,
                                                withIntermediateDirectories: true)
        #expect(FileManager.default.createFile(atPath: full, contents: Data("-----BEGIN CERTIFICATE-----\n".utf8)))
    }

    @Test func findsTheDebianAndTheRHELLayouts() throws {
        let debian = TemporaryDirectory(), rhel = TemporaryDirectory(), rhelExtracted = TemporaryDirectory()
        try place("/etc/ssl/certs/ca-certificates.crt", under: debian.path)
        try place("/etc/pki/tls/certs/ca-bundle.crt", under: rhel.path)
        try place("/etc/pki/ca-trust/extracted/pem/tls-ca-bundle.pem", under: rhelExtracted.path)
        #expect(CABundle.systemPath(environment: [:], root: debian.path) == debian.path + "/etc/ssl/certs/ca-certificates.crt")
        #expect(CABundle.systemPath(environment: [:], root: rhel.path + "/") == rhel.path + "/etc/pki/tls/certs/ca-bundle.crt")
        #expect(CABundle.systemPath(environment: [:], root: rhelExtracted.path)
                == rhelExtracted.path + "/etc/pki/ca-trust/extracted/pem/tls-ca-bundle.pem")
        // Both layouts at once (a RHEL server with a Debian-style link): the first known place wins.
        try place("/etc/ssl/certs/ca-certificates.crt", under: rhel.path)
        #expect(CABundle.systemPath(environment: [:], root: rhel.path) == rhel.path + "/etc/ssl/certs/ca-certificates.crt")
    }

    @Test func nothingUsableFindsNothing() throws {
        let empty = TemporaryDirectory()
        #expect(CABundle.systemPath(environment: [:], root: empty.path) == nil)
        // A directory, or a link to nothing, where a bundle belongs is not a bundle.
        try FileManager.default.createDirectory(atPath: empty.path + "/etc/ssl/certs/ca-certificates.crt",
                                                withIntermediateDirectories: true)
        try FileManager.default.createDirectory(atPath: empty.path + "/etc/pki/tls/certs", withIntermediateDirectories: true)
        try FileManager.default.createSymbolicLink(atPath: empty.path + "/etc/pki/tls/certs/ca-bundle.crt",
                                                   withDestinationPath: empty.path + "/missing.pem")
        #expect(CABundle.systemPath(environment: [:], root: empty.path) == nil)
    }

    @Test func environmentVariablesComeFirstWhenTheyNameAFile() throws {
        let root = TemporaryDirectory(), own = TemporaryDirectory()
        try place("/etc/pki/tls/certs/ca-bundle.crt", under: root.path)
        try place("/openssl.pem", under: own.path)
        try place("/curl.pem", under: own.path)
        let system = root.path + "/etc/pki/tls/certs/ca-bundle.crt"
        #expect(CABundle.systemPath(environment: ["SSL_CERT_FILE": own.path + "/openssl.pem"], root: root.path) == own.path + "/openssl.pem")
        #expect(CABundle.systemPath(environment: ["CURL_CA_BUNDLE": own.path + "/curl.pem"], root: root.path) == own.path + "/curl.pem")
        #expect(CABundle.systemPath(environment: ["SSL_CERT_FILE": own.path + "/openssl.pem", "CURL_CA_BUNDLE": own.path + "/curl.pem"],
                                    root: root.path) == own.path + "/openssl.pem")
        // A variable naming nothing usable (missing, empty, a directory) falls back to the system bundle.
        #expect(CABundle.systemPath(environment: ["SSL_CERT_FILE": own.path + "/typo.pem"], root: root.path) == system)
        #expect(CABundle.systemPath(environment: ["SSL_CERT_FILE": ""], root: root.path) == system)
        #expect(CABundle.systemPath(environment: ["CURL_CA_BUNDLE": own.path], root: root.path) == system)
    }

    /// Without a pin the client verifies the server against `caFile`: the server's own (self-signed CA) certificate
    /// lets it through with host-name checks on, and another CA's does not.
    @Test func unpinnedClientVerifiesAgainstTheGivenBundle() throws {
        let dir = TemporaryDirectory(), other = TemporaryDirectory()
        let tls = try makeSelfSignedTLS(in: dir.path)
        let stranger = try makeSelfSignedTLS(in: other.path)
        let running = try RunningServer(configuration: HTTPServerConfiguration(tlsCertificatePath: tls.certPath,
                                                                               tlsPrivateKeyPath: tls.keyPath),
                                        scheme: "https") { router in router.add("GET", "/x") { _ in .text("x") } }
        let trusting = try HTTPClient(configuration: HTTPClientConfiguration(
            baseURL: running.baseURL, timeoutSeconds: 5, retry: .none, caFile: tls.certPath))
        #expect(try trusting.send(method: "GET", path: "/x").status == 200)
        let distrusting = try HTTPClient(configuration: HTTPClientConfiguration(
            baseURL: running.baseURL, timeoutSeconds: 5, retry: .none, caFile: stranger.certPath))
        let error = #expect(throws: HTTPClientError.self) { try distrusting.send(method: "GET", path: "/x") }
        #expect(error?.kind == .tls)
    }
}
