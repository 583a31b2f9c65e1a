import Foundation
import SFTP
import Testing
import TestSupport
#if canImport(Glibc)
import Glibc
#endif

@Suite struct FailureTests {
    @Test func readOnlyServerGivesPermissionDenied() throws {
        let server = try SSHDServer(sftpArguments: ["-R"])
        let sftp = try SFTPSession.connect(options(for: server))
        let error = try #require(sftpError { try sftp.writeFile(server.root + "/x", [1]) })
        #expect(error.kind == .server)
        #expect(error.status == .permissionDenied)
        #expect(error.path == server.root + "/x")
        #expect(error.description.contains("PERMISSION_DENIED"))
        #expect(!FileManager.default.fileExists(atPath: server.root + "/x"))
    }

    /// root ignores mode bits, so an immutable directory (chattr +i) stands in for "no permission".
    @Test func immutableDirectoryGivesPermissionDenied() throws {
        let server = try SSHDServer()
        let sftp = try SFTPSession.connect(options(for: server))
        let directory = server.root + "/locked"
        try sftp.makeDirectory(directory)
        let chattr = try ProcessRunner.run("/usr/bin/chattr", ["+i", directory])
        try #require(chattr.status == 0, "chattr +i unsupported here: \(chattr.stderr)")
        defer { _ = try? ProcessRunner.run("/usr/bin/chattr", ["-i", directory]) }
        let write = try #require(sftpError { try sftp.writeFile(directory + "/f", [1]) })
        #expect(write.status == .permissionDenied)
        let mkdir = try #require(sftpError { try sftp.makeDirectories(directory + "/sub") })
        #expect(mkdir.status == .permissionDenied)
        // The session is still fine after server-side errors.
        #expect(try sftp.stat(directory)?.isDirectory == true)
    }

    @Test func pathUnderARegularFileFails() throws {
        let server = try SSHDServer()
        let sftp = try SFTPSession.connect(options(for: server))
        try sftp.writeFile(server.root + "/plain", [1])
        let error = try #require(sftpError { try sftp.writeFile(server.root + "/plain/child", [2]) })
        #expect(error.kind == .server)
        #expect(error.isNotFound)   // OpenSSH maps ENOTDIR to NO_SUCH_FILE
        #expect(localBytes(server.root + "/plain") == [1])
    }

    @Test func connectionKilledBetweenWritesGivesConnectionErrorThenClosed() throws {
        let server = try SSHDServer()
        let sftp = try SFTPSession.connect(options(for: server, operationTimeout: .seconds(10)))
        let file = try sftp.open(server.root + "/partial", flags: [.write, .create, .truncate])
        try file.write(testBytes(4 << 20))
        #expect(server.killSessions() > 0)
        let start = ContinuousClock.now
        let error = try #require(sftpError { for _ in 0..<8 { try file.write(testBytes(4 << 20)) } })
        #expect(ContinuousClock.now - start < .seconds(5))
        #expect(error.kind == .connection)
        let later = try #require(sftpError { _ = try sftp.stat(server.root) })
        #expect(later.kind == .closed)
        #expect(later.message.contains("earlier failure"))
    }

    @Test func connectionKilledDuringUploadFailsCleanly() throws {
        let server = try SSHDServer()
        let sftp = try SFTPSession.connect(options(for: server, operationTimeout: .seconds(10)))
        let path = server.root + "/victim"
        let killer = Thread {
            // Kill as soon as the upload is visibly under way.
            let deadline = Date().addingTimeInterval(10)
            while Date() < deadline {
                let size = (try? FileManager.default.attributesOfItem(atPath: path)[.size] as? Int) ?? 0
                if size > 1 << 20 { break }
                usleep(1000)
            }
            server.killSessions()
        }
        let data = testBytes(256 << 20)
        let start = ContinuousClock.now
        killer.start()
        let error = try #require(sftpError { try sftp.writeFile(path, data) })
        #expect(ContinuousClock.now - start < .seconds(10))
        #expect(error.kind == .connection || error.kind == .timeout)
        #expect(error.path == path)
        #expect((localBytes(path)?.count ?? 0) < data.count)
    }

    @Test func stoppedServerTimesOutWithinTheTimeout() throws {
        let server = try SSHDServer()
        let sftp = try SFTPSession.connect(options(for: server, operationTimeout: .milliseconds(1500)))
        try sftp.writeFile(server.root + "/before", [1])
        #expect(server.signalSessions(SIGSTOP) > 0)
        defer { server.signalSessions(SIGCONT) }
        let start = ContinuousClock.now
        let error = try #require(sftpError { _ = try sftp.readFile(server.root + "/before") })
        let elapsed = ContinuousClock.now - start
        #expect(error.kind == .timeout)
        #expect(elapsed >= .milliseconds(1400))
        #expect(elapsed < .seconds(4))
        #expect(sftpError { try sftp.writeFile(server.root + "/after", [2]) }?.kind == .closed)
    }

    @Test func stoppedServerDuringUploadTimesOut() throws {
        let server = try SSHDServer()
        let sftp = try SFTPSession.connect(options(for: server, operationTimeout: .seconds(1)))
        server.signalSessions(SIGSTOP)
        defer { server.signalSessions(SIGCONT) }
        let start = ContinuousClock.now
        let error = try #require(sftpError { try sftp.writeFile(server.root + "/frozen", testBytes(64 << 20)) })
        #expect(error.kind == .timeout)
        #expect(ContinuousClock.now - start < .seconds(4))
    }

    @Test func stoppedServerDuringConnectTimesOut() throws {
        let server = try SSHDServer()
        kill(server.pid, SIGSTOP)   // the listener accepts nothing new: TCP completes in the kernel, SSH never starts
        defer { kill(server.pid, SIGCONT) }
        var opts = options(for: server)
        opts.connectTimeout = .seconds(1)
        let start = ContinuousClock.now
        let error = try #require(sftpError { _ = try SFTPSession.connect(opts) })
        #expect(error.kind == .timeout)
        #expect(ContinuousClock.now - start < .seconds(3))
    }

    @Test func disconnectedSessionRefusesFurtherCalls() throws {
        let server = try SSHDServer()
        let sftp = try SFTPSession.connect(options(for: server))
        sftp.disconnect()
        let error = try #require(sftpError { _ = try sftp.stat(server.root) })
        #expect(error.kind == .closed)
        #expect(error.message.contains("disconnected"))
    }
}
