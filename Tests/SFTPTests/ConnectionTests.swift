import Foundation
import SFTP
import Testing
import TestSupport

@Suite struct ConnectionTests {
    @Test func ed25519KeyAuthenticatesAndHostKeyMatchesSSHKeygen() throws {
        let server = try SSHDServer()
        let sftp = try SFTPSession.connect(options(for: server))
        #expect(sftp.ssh.hostKey.sha256Fingerprint == server.hostKeyFingerprintSHA256)
        #expect(sftp.ssh.hostKey.algorithm == "ssh-ed25519")
        #expect(try sftp.stat(server.root)?.isDirectory == true)
    }

    @Test func rsaKeyAuthenticates() throws {
        // libssh2 1.10 signs RSA user auth with ssh-rsa (SHA-1), which OpenSSH >= 8.8 only accepts when enabled.
        let server = try SSHDServer(extraConfig: ["PubkeyAcceptedAlgorithms +ssh-rsa"])
        let sftp = try SFTPSession.connect(options(for: server, credentials: .privateKeyFile(path: server.rsaClientKeyPath, passphrase: nil)))
        #expect(try sftp.stat(server.root)?.isDirectory == true)
    }

    @Test func pinWithPrefixAndPaddingIsAccepted() throws {
        let server = try SSHDServer()
        let sftp = try SFTPSession.connect(options(for: server, policy: .pinnedSHA256("SHA256:" + server.hostKeyFingerprintSHA256 + "=")))
        #expect(try sftp.stat(server.root) != nil)
    }

    @Test func wrongPinnedHostKeyIsRefusedNamingBothFingerprints() throws {
        let server = try SSHDServer()
        let wrong = String(repeating: "A", count: 43)
        let error = try #require(sftpError { _ = try SFTPSession.connect(options(for: server, policy: .pinnedSHA256(wrong))) })
        #expect(error.kind == .hostKey)
        #expect(error.message.contains(server.hostKeyFingerprintSHA256))
        #expect(error.message.contains(wrong))
        #expect(error.message.contains("127.0.0.1:\(server.port)"))
        #expect(error.message.contains("MISMATCH"))
    }

    @Test func malformedPinIsAnInvalidArgument() throws {
        let server = try SSHDServer()
        let error = try #require(sftpError { _ = try SFTPSession.connect(options(for: server, policy: .pinnedSHA256("not a fingerprint"))) })
        #expect(error.kind == .invalidArgument)
        #expect(error.message.contains("not a fingerprint"))
    }

    @Test func knownHostsFileWithTheKeyIsAccepted() throws {
        let server = try SSHDServer()
        let scratch = TemporaryDirectory()
        let knownHosts = scratch.appending("known_hosts")
        // An unparsable line first: it must not hide the valid entry after it.
        try "# comment\nexample.org sk-ssh-ed25519@openssh.com AAAAbogus\n\(server.knownHostsLine)\n".write(toFile: knownHosts, atomically: true, encoding: .utf8)
        let sftp = try SFTPSession.connect(options(for: server, policy: .knownHosts(path: knownHosts)))
        #expect(try sftp.stat(server.root)?.isDirectory == true)
    }

    @Test func knownHostsMismatchIsRefused() throws {
        let server = try SSHDServer()
        let other = try SSHDServer()   // a different host key of the same type
        let scratch = TemporaryDirectory()
        let knownHosts = scratch.appending("known_hosts")
        try "[127.0.0.1]:\(server.port) \(other.hostPublicKey)\n".write(toFile: knownHosts, atomically: true, encoding: .utf8)
        let error = try #require(sftpError { _ = try SFTPSession.connect(options(for: server, policy: .knownHosts(path: knownHosts))) })
        #expect(error.kind == .hostKey)
        #expect(error.message.contains("CHANGED"))
        #expect(error.message.contains(server.hostKeyFingerprintSHA256))
        #expect(error.message.contains(knownHosts))
    }

    @Test func unknownHostAndMissingKnownHostsFileAreRefusedWithTheLineToAdd() throws {
        let server = try SSHDServer()
        let scratch = TemporaryDirectory()
        let knownHosts = scratch.appending("known_hosts")
        try "[127.0.0.1]:1 \(server.hostPublicKey)\n".write(toFile: knownHosts, atomically: true, encoding: .utf8)
        let unknown = try #require(sftpError { _ = try SFTPSession.connect(options(for: server, policy: .knownHosts(path: knownHosts))) })
        #expect(unknown.kind == .hostKey)
        #expect(unknown.message.contains("UNKNOWN HOST"))
        #expect(unknown.message.contains(server.knownHostsLine))
        let missing = try #require(sftpError { _ = try SFTPSession.connect(options(for: server, policy: .knownHosts(path: scratch.appending("nope")))) })
        #expect(missing.kind == .hostKey)
        #expect(missing.message.contains(scratch.appending("nope")))
        #expect(missing.message.contains(server.hostKeyFingerprintSHA256))
    }

    @Test func fetchHostKeyWithoutAuthenticating() throws {
        let server = try SSHDServer()
        let key = try SSHSession.fetchHostKey(host: server.host, port: server.port, timeout: .seconds(10))
        #expect(key.sha256Fingerprint == server.hostKeyFingerprintSHA256)
        #expect(key.knownHostsLine(host: server.host, port: server.port) == server.knownHostsLine)
        let log = try String(contentsOfFile: server.logPath, encoding: .utf8)
        #expect(!log.contains("Accepted publickey"))
    }

    @Test func unauthorizedKeyIsAClearAuthenticationError() throws {
        let server = try SSHDServer()
        let error = try #require(sftpError {
            _ = try SFTPSession.connect(options(for: server, credentials: .privateKeyFile(path: server.unauthorizedClientKeyPath, passphrase: nil)))
        })
        #expect(error.kind == .authentication)
        #expect(error.message.contains(server.unauthorizedClientKeyPath))
        #expect(error.message.contains("authorized_keys"))
    }

    @Test func missingOrGarbageKeyFileIsAClearAuthenticationError() throws {
        let server = try SSHDServer()
        let scratch = TemporaryDirectory()
        let missing = try #require(sftpError {
            _ = try SFTPSession.connect(options(for: server, credentials: .privateKeyFile(path: scratch.appending("absent"), passphrase: nil)))
        })
        #expect(missing.kind == .authentication)
        #expect(missing.message.contains(scratch.appending("absent")))
        let garbage = scratch.appending("garbage")
        try "-----BEGIN OPENSSH PRIVATE KEY-----\nnot a key\n-----END OPENSSH PRIVATE KEY-----\n".write(toFile: garbage, atomically: true, encoding: .utf8)
        let bad = try #require(sftpError { _ = try SFTPSession.connect(options(for: server, credentials: .privateKeyFile(path: garbage, passphrase: nil))) })
        #expect(bad.kind == .authentication)
        #expect(bad.message.contains(garbage))
    }

    @Test func wrongPasswordIsAClearAuthenticationError() throws {
        let server = try SSHDServer()
        let error = try #require(sftpError { _ = try SFTPSession.connect(options(for: server, credentials: .password("definitely-wrong"))) })
        #expect(error.kind == .authentication)
        #expect(error.message.contains("password"))
        #expect(!error.message.contains("definitely-wrong"))
    }

    @Test func passwordLoginDisabledNamesWhatTheServerOffers() throws {
        let server = try SSHDServer(extraConfig: ["AuthenticationMethods publickey"])
        let error = try #require(sftpError { _ = try SFTPSession.connect(options(for: server, credentials: .password("x"))) })
        #expect(error.kind == .authentication)
        #expect(error.message.contains("publickey"))
    }

    @Test func connectionRefusedAndBadPortAreClear() throws {
        let server = try SSHDServer()
        let port = server.port
        server.stop()
        var opts = options(for: server)
        let refused = try #require(sftpError { _ = try SFTPSession.connect(opts) })
        #expect(refused.kind == .connect)
        #expect(refused.path == "127.0.0.1:\(port)")
        opts.port = 70000
        let bad = try #require(sftpError { _ = try SFTPSession.connect(opts) })
        #expect(bad.kind == .invalidArgument)
    }
}
