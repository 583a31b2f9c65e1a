import Foundation
import SFTP
import Testing
import TestSupport

@Suite struct FileOperationTests {
    @Test func uploadEightMiBAndReadBackIdentical() throws {
        let server = try SSHDServer()
        let sftp = try SFTPSession.connect(options(for: server))
        let data = testBytes(8 << 20 + 123)
        let path = server.root + "/big.bin"
        try sftp.writeFile(path, data, fsync: true)
        #expect(localBytes(path) == data)
        #expect(try sftp.stat(path)?.size == UInt64(data.count))
        #expect(try sftp.readFile(path) == data)
    }

    @Test func emptyFileRoundTrips() throws {
        let server = try SSHDServer()
        let sftp = try SFTPSession.connect(options(for: server))
        try sftp.writeFile(server.root + "/empty", [UInt8]())
        #expect(try sftp.readFile(server.root + "/empty") == [])
        #expect(try sftp.stat(server.root + "/empty")?.isRegularFile == true)
    }

    @Test func writeReplacesLongerContent() throws {
        let server = try SSHDServer()
        let sftp = try SFTPSession.connect(options(for: server))
        let path = server.root + "/f"
        try sftp.writeFile(path, testBytes(100_000))
        try sftp.writeFile(path, Array("short".utf8))
        #expect(localBytes(path) == Array("short".utf8))
    }

    @Test func readRangeReturnsExactBytesAndShortensAtEOF() throws {
        let server = try SSHDServer()
        let sftp = try SFTPSession.connect(options(for: server))
        let data = testBytes(3 << 20)
        let path = server.root + "/range.bin"
        try Data(data).write(to: URL(fileURLWithPath: path))
        #expect(try sftp.read(path, offset: 0, length: 10) == Array(data[0..<10]))
        #expect(try sftp.read(path, offset: 1_234_567, length: 1_500_000) == Array(data[1_234_567..<2_734_567]))
        #expect(try sftp.read(path, offset: UInt64(data.count - 5), length: 100) == Array(data[(data.count - 5)...]))
        #expect(try sftp.read(path, offset: UInt64(data.count + 10), length: 100) == [])
        #expect(try sftp.read(path, offset: 7, length: 0) == [])
        let negative = try #require(sftpError { _ = try sftp.read(path, offset: 0, length: -1) })
        #expect(negative.kind == .invalidArgument)
    }

    @Test func renameOverExistingFileReplacesIt() throws {
        let server = try SSHDServer()
        let sftp = try SFTPSession.connect(options(for: server))
        let source = server.root + "/new", target = server.root + "/current"
        try sftp.writeFile(target, Array("old".utf8))
        try sftp.writeFile(source, Array("new".utf8))
        try sftp.rename(source, to: target)
        #expect(localBytes(target) == Array("new".utf8))
        #expect(!FileManager.default.fileExists(atPath: source))
    }

    @Test func renameWithoutOverwriteRefusesExistingTarget() throws {
        let server = try SSHDServer()
        let sftp = try SFTPSession.connect(options(for: server))
        let source = server.root + "/a", target = server.root + "/b"
        try sftp.writeFile(source, Array("a".utf8))
        try sftp.writeFile(target, Array("b".utf8))
        let error = try #require(sftpError { try sftp.rename(source, to: target, overwrite: false) })
        #expect(error.kind == .server)
        #expect(error.path == "\(source) -> \(target)")
        #expect(localBytes(target) == Array("b".utf8))
        #expect(localBytes(source) == Array("a".utf8))
    }

    @Test func renameOfMissingSourceKeepsTarget() throws {
        let server = try SSHDServer()
        let sftp = try SFTPSession.connect(options(for: server))
        let target = server.root + "/keep"
        try sftp.writeFile(target, Array("keep".utf8))
        let error = try #require(sftpError { try sftp.rename(server.root + "/missing", to: target) })
        #expect(error.isNotFound)
        #expect(localBytes(target) == Array("keep".utf8))
    }

    @Test func atomicWriteCreatesParentsAndLeavesNoTemporaryFiles() throws {
        let server = try SSHDServer()
        let sftp = try SFTPSession.connect(options(for: server))
        let path = server.root + "/x/y/z/data"
        try sftp.writeFileAtomically(path, Array("one".utf8))
        try sftp.writeFileAtomically(path, Array("two".utf8))
        #expect(localBytes(path) == Array("two".utf8))
        #expect(try sftp.listNames(server.root + "/x/y/z") == ["data"])
    }

    /// Several uploads open at once on one session: nothing is under the real names until each is finished, an
    /// abandoned one leaves nothing behind, and a finished one replaces an existing file.
    @Test func stagedUploadsAppearOnlyWhenFinished() throws {
        let server = try SSHDServer()
        let sftp = try SFTPSession.connect(options(for: server))
        let directory = server.root + "/packs"
        try sftp.makeDirectory(directory)
        try sftp.writeFileAtomically(directory + "/b", Array("old".utf8))
        let a = try sftp.beginAtomicWrite(directory + "/a", testBytes(3 << 20))
        let b = try sftp.beginAtomicWrite(directory + "/b", Array("new".utf8))
        let c = try sftp.beginAtomicWrite(directory + "/c", Array("dropped".utf8))
        #expect(try sftp.stat(directory + "/a") == nil)
        #expect(localBytes(directory + "/b") == Array("old".utf8))
        try a.finish()
        try b.finish()
        c.abandon()
        #expect(localBytes(directory + "/a") == testBytes(3 << 20))
        #expect(localBytes(directory + "/b") == Array("new".utf8))
        #expect(Set(try FileManager.default.contentsOfDirectory(atPath: directory)) == ["a", "b"])
        #expect(throws: SFTPError.self) { try a.finish() }
    }

    @Test func listingReturnsNamesAndTypesWithoutDotEntries() throws {
        let server = try SSHDServer()
        let sftp = try SFTPSession.connect(options(for: server))
        try sftp.makeDirectory(server.root + "/sub")
        for name in ["a.txt", "b c", ".hidden", "ünïcode"] { try sftp.writeFile(server.root + "/" + name, Array(name.utf8)) }
        let entries = try sftp.listDirectory(server.root)
        #expect(Set(entries.map(\.name)) == ["sub", "a.txt", "b c", ".hidden", "ünïcode"])
        #expect(entries.first { $0.name == "sub" }?.info.isDirectory == true)
        #expect(entries.first { $0.name == "a.txt" }?.info.size == 5)
        #expect(try sftp.listNames(server.root + "/sub") == [])
    }

    @Test func listingRejectsHostileNames() throws {
        let server = try SSHDServer()
        let sftp = try SFTPSession.connect(options(for: server))
        // Names a real filesystem allows but that must never be joined onto a path unchecked.
        for name in ["ok", "new\nline", "back\\slash", "tab\there", "del\u{7F}"] {
            #expect(FileManager.default.createFile(atPath: server.root + "/" + name, contents: Data()))
        }
        let (entries, rejected) = try sftp.listDirectoryRejecting(server.root)
        #expect(entries.map(\.name) == ["ok"])
        #expect(Set(rejected) == ["new\nline", "back\\slash", "tab\there", "del\u{7F}"])
    }

    @Test func safeNameRules() {
        for bad in ["", ".", "..", "a/b", "/", "a\0b", "x\u{1}", "a\\b", "\u{7F}"] { #expect(!SFTPSession.isSafeName(bad), "\(bad.debugDescription)") }
        for good in ["a", ".a", "..a", "a..", "with space", "日本", "-rf"] { #expect(SFTPSession.isSafeName(good), "\(good)") }
        #expect(!SFTPSession.isSafeName([0x66, 0xFF, 0x6F]))   // invalid UTF-8
        #expect(SFTPSession.safeNames(["a", "..", "b/c", "d"]) == (safe: ["a", "d"], rejected: ["..", "b/c"]))
    }

    @Test func listingMissingDirectoryIsNotFound() throws {
        let server = try SSHDServer()
        let sftp = try SFTPSession.connect(options(for: server))
        let error = try #require(sftpError { _ = try sftp.listDirectory(server.root + "/nope") })
        #expect(error.isNotFound)
        #expect(error.status == .noSuchFile)
        #expect(error.path == server.root + "/nope")
        #expect(error.description.contains("NO_SUCH_FILE"))
    }

    @Test func makeDirectoriesIsIdempotentAndRejectsFileComponents() throws {
        let server = try SSHDServer()
        let sftp = try SFTPSession.connect(options(for: server))
        try sftp.makeDirectories(server.root + "/p/q/r")
        try sftp.makeDirectories(server.root + "/p/q/r")
        try sftp.makeDirectories(server.root + "/p/q")
        var isDirectory: ObjCBool = false
        #expect(FileManager.default.fileExists(atPath: server.root + "/p/q/r", isDirectory: &isDirectory) && isDirectory.boolValue)
        try sftp.writeFile(server.root + "/p/file", [1])
        let error = try #require(sftpError { try sftp.makeDirectories(server.root + "/p/file/deeper") })
        #expect(error.kind == .server)
        #expect(error.message.contains("not a directory"))
        #expect(localBytes(server.root + "/p/file") == [1])
    }

    @Test func statRemoveAndMissingFiles() throws {
        let server = try SSHDServer()
        let sftp = try SFTPSession.connect(options(for: server))
        let path = server.root + "/gone"
        #expect(try sftp.stat(path) == nil)
        try sftp.writeFile(path, [1, 2, 3])
        #expect(try sftp.stat(path)?.size == 3)
        try sftp.remove(path)
        #expect(try sftp.stat(path) == nil)
        #expect(sftpError { try sftp.remove(path) }?.isNotFound == true)
        #expect(sftpError { _ = try sftp.readFile(path) }?.isNotFound == true)
        let nul = try #require(sftpError { _ = try sftp.readFile("a\0b") })
        #expect(nul.kind == .invalidArgument)
    }

    @Test func streamingFileHandle() throws {
        let server = try SSHDServer()
        let sftp = try SFTPSession.connect(options(for: server))
        let path = server.root + "/stream"
        let file = try sftp.open(path, flags: [.write, .create, .truncate])
        try file.write(Array("hello ".utf8))
        try file.write(Array("world".utf8))
        #expect(try file.fsync())
        try file.close()
        try file.close()
        #expect(sftpError { try file.write([1]) }?.kind == .closed)
        let reader = try sftp.open(path, flags: .read)
        try reader.seek(to: 6)
        #expect(try reader.read(upTo: 100) == Array("world".utf8))
        #expect(try reader.read(upTo: 100) == [])
        #expect(try reader.stat().size == 11)
    }

    @Test func fsyncUnsupportedByServerIsReportedNotThrown() throws {
        let server = try SSHDServer(sftpArguments: ["-P", "fsync"])
        let sftp = try SFTPSession.connect(options(for: server))
        let file = try sftp.open(server.root + "/nofsync", flags: [.write, .create])
        try file.write([1, 2])
        #expect(try file.fsync() == false)
        try file.close()
        try sftp.writeFileAtomically(server.root + "/atomic", [7], fsync: true)
        #expect(localBytes(server.root + "/atomic") == [7])
    }

    @Test func concurrentCallsOnOneSessionAreSerialized() async throws {
        let server = try SSHDServer()
        let sftp = try SFTPSession.connect(options(for: server))
        try await withThrowingTaskGroup(of: Void.self) { group in
            for index in 0..<8 {
                group.addTask {
                    let data = testBytes(300_000 + index, seed: UInt64(index + 1))
                    let path = server.root + "/c\(index)"
                    try sftp.writeFile(path, data)
                    #expect(try sftp.readFile(path) == data)
                }
            }
            try await group.waitForAll()
        }
        #expect(try sftp.listNames(server.root).count == 8)
    }

    @Test func idleSessionWithKeepalivesStaysUsable() throws {
        let server = try SSHDServer()
        let sftp = try SFTPSession.connect(options(for: server, keepalive: .seconds(1)))
        try sftp.writeFile(server.root + "/k", [1])
        Thread.sleep(forTimeInterval: 2.5)
        #expect(try sftp.readFile(server.root + "/k") == [1])
    }
}
