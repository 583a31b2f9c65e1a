import Foundation
@testable import Posix
import Testing
import TestSupport

/// The names in `directory` (as bytes), to see exactly what a write left there.
private func namesIn(_ directory: String) throws -> Set<[UInt8]> {
    Set(try Directory.entries(at: directory).map(\.nameBytes))
}

private func mode(of path: String) -> mode_t? {
    var info = stat()
    return stat(path, &info) == 0 ? info.st_mode & 0o7777 : nil
}

private func contents(of path: String) -> [UInt8]? {
    FileManager.default.contents(atPath: path).map { [UInt8]($0) }
}

struct AtomicFileTests {
    @Test func createsTheFileWithExactlyTheRequestedPermissions() throws {
        let directory = TemporaryDirectory()
        let previous = umask(0o022)
        defer { umask(previous) }
        try AtomicFile.write([1, 2, 3], to: directory.appending("secret"), permissions: 0o600, durable: true)
        try AtomicFile.write([4], to: directory.appending("shared"), permissions: 0o666, durable: false)
        #expect(mode(of: directory.appending("secret")) == 0o600)
        // 0666 less the umask would be 0644: the requested mode is set, not left to the umask.
        #expect(mode(of: directory.appending("shared")) == 0o666)
        #expect(contents(of: directory.appending("secret")) == [1, 2, 3])
        #expect(try namesIn(directory.path) == [Array("secret".utf8), Array("shared".utf8)])
    }

    @Test func replacesAnExistingFileWholly() throws {
        let directory = TemporaryDirectory()
        let path = directory.appending("state.json")
        try AtomicFile.write([UInt8](repeating: 7, count: 10_000), to: path, permissions: 0o644, durable: true)
        // A second name for the old file: a rename leaves it as it was, writing in place would change it.
        #expect(link(path, directory.appending("old")) == 0)
        try AtomicFile.write(Array("short".utf8), to: path, permissions: 0o600, durable: true)
        #expect(contents(of: path) == Array("short".utf8))
        #expect(mode(of: path) == 0o600)
        #expect(contents(of: directory.appending("old")) == [UInt8](repeating: 7, count: 10_000))
        #expect(try namesIn(directory.path) == [Array("state.json".utf8), Array("old".utf8)])
    }

    @Test func aTargetThatIsADirectoryFailsNamingItAndLeavesNoTemporaryFile() throws {
        let directory = TemporaryDirectory()
        let target = directory.appending("taken")
        try Directory.create(target, permissions: 0o755, withParents: false)
        let error = try #require(throws: Errno.self) {
            try AtomicFile.write([1], to: target, permissions: 0o600, durable: true)
        }
        #expect(error == .isDirectory)
        #expect(error.operation == "rename" && error.path == target)
        #expect(error.description.contains(target) && error.description.contains("rename failed"), "\(error)")
        #expect(try namesIn(directory.path) == [Array("taken".utf8)])
    }

    // Root writes into read-only directories, so this can only be seen as another user.
    @Test(.enabled(if: geteuid() != 0, "root ignores directory permissions"))
    func aReadOnlyDirectoryFailsAndLeavesNoTemporaryFile() throws {
        let directory = TemporaryDirectory()
        let inner = directory.appending("inner")
        try Directory.create(inner, permissions: 0o755, withParents: false)
        #expect(chmod(inner, 0o555) == 0)
        defer { chmod(inner, 0o755) }
        #expect(throws: Errno.accessDenied) {
            try AtomicFile.write([1], to: inner + "/file", permissions: 0o600, durable: true)
        }
        #expect(try namesIn(inner).isEmpty)
    }

    @Test func aMissingDirectoryIsAnErrorOrCreatedAsAsked() throws {
        let directory = TemporaryDirectory()
        let path = directory.appending("a/b/file")
        #expect(throws: Errno.notFound) {
            try AtomicFile.write([1], to: path, permissions: 0o600, durable: true)
        }
        #expect(try namesIn(directory.path).isEmpty)
        try AtomicFile.write([1], to: path, permissions: 0o600, durable: true, missingDirectory: .create(permissions: 0o700))
        #expect(contents(of: path) == [1])
        #expect(mode(of: directory.appending("a/b")) == 0o700)
    }

    @Test func aTemporaryFileDroppedWithoutCommitIsRemoved() throws {
        let directory = TemporaryDirectory()
        do {
            let temporary = try TemporaryFile.create(in: directory.path, permissions: 0o600)
            try temporary.file.write(all: [1, 2, 3])
            #expect(try namesIn(directory.path).count == 1)
            #expect(temporary.path.hasPrefix(directory.path + "/" + TemporaryFile.namePrefix))
        }
        #expect(try namesIn(directory.path).isEmpty)
    }

    @Test func aCommitIntoAnotherDirectoryCanCreateIt() throws {
        let directory = TemporaryDirectory()
        let temporary = try TemporaryFile.create(in: directory.path, permissions: 0o600)
        try temporary.file.write(all: [9])
        try temporary.commit(to: directory.appending("data/ab/pack"), durable: true, missingDirectory: .create(permissions: 0o755))
        #expect(contents(of: directory.appending("data/ab/pack")) == [9])
        #expect(try namesIn(directory.path) == [Array("data".utf8)])
    }

    @Test func commitUnlessExistsNeverReplacesAFile() throws {
        let directory = TemporaryDirectory()
        let path = directory.appending("key")
        let first = try TemporaryFile.create(in: directory.path, permissions: 0o600)
        try first.file.write(all: Array("first".utf8))
        try first.commitUnlessExists(to: path, durable: true)
        let second = try TemporaryFile.create(in: directory.path, permissions: 0o600)
        try second.file.write(all: Array("second".utf8))
        // A consuming call cannot go in an #expect closure, which only borrows what it captures.
        var failure: Errno?
        do throws(Errno) { try second.commitUnlessExists(to: path, durable: true) } catch { failure = error }
        #expect(failure == .exists)
        #expect(contents(of: path) == Array("first".utf8))
        #expect(try namesIn(directory.path) == [Array("key".utf8)])
    }
}

struct WriteTogetherTests {
    @Test func writesEveryFileWithItsPermissionsIntoDirectoriesMadeAsAsked() throws {
        let directory = TemporaryDirectory()
        try AtomicFile.write(Array("old".utf8), to: directory.appending("a"), permissions: 0o600, durable: false)
        try AtomicFile.writeTogether([(directory.appending("a"), Array("new a".utf8)), (directory.appending("b"), []),
                                      (directory.appending("sub/c"), [3])],
                                     permissions: 0o644, missingDirectory: .create(permissions: 0o755))
        #expect(contents(of: directory.appending("a")) == Array("new a".utf8))
        #expect(contents(of: directory.appending("b")) == [])
        #expect(contents(of: directory.appending("sub/c")) == [3])
        #expect(mode(of: directory.appending("a")) == 0o644 && mode(of: directory.appending("sub/c")) == 0o644)
        #expect(mode(of: directory.appending("sub")).map { $0 & 0o700 } == 0o700)
        #expect(try namesIn(directory.path) == [Array("a".utf8), Array("b".utf8), Array("sub".utf8)])
        #expect(try namesIn(directory.appending("sub")) == [Array("c".utf8)])
    }

    /// Written one after another, the first files would already be in place when the last one failed.
    @Test func aFileThatCannotBeWrittenLeavesEveryTargetAsItWas() throws {
        let directory = TemporaryDirectory()
        try AtomicFile.write([1], to: directory.appending("first"), permissions: 0o600, durable: false)
        let error = try #require(throws: Errno.self) {
            try AtomicFile.writeTogether([(directory.appending("first"), [2]), (directory.appending("second"), [2]),
                                          (directory.appending("missing/third"), [2])], permissions: 0o600)
        }
        #expect(error == .notFound && error.path == directory.appending("missing/third"), "\(error)")
        #expect(contents(of: directory.appending("first")) == [1])
        #expect(try namesIn(directory.path) == [Array("first".utf8)])
    }

    @Test func aRenameThatFailsKeepsTheFilesBeforeItAndLeavesNoTemporaryFile() throws {
        let directory = TemporaryDirectory()
        try Directory.create(directory.appending("taken"), permissions: 0o755, withParents: false)
        let error = try #require(throws: Errno.self) {
            try AtomicFile.writeTogether([(directory.appending("one"), [1]), (directory.appending("taken"), [2]),
                                          (directory.appending("three"), [3])], permissions: 0o600)
        }
        #expect(error == .isDirectory && error.operation == "rename" && error.path == directory.appending("taken"), "\(error)")
        #expect(contents(of: directory.appending("one")) == [1])
        #expect(try namesIn(directory.path) == [Array("one".utf8), Array("taken".utf8)])
    }

    @Test func groupsAreMadeDurableInTurnAndAFailureKeepsTheGroupsBeforeIt() throws {
        let directory = TemporaryDirectory()
        var reported: [Int] = []
        let files = (0..<10).map { (path: directory.appending("f\($0)"), bytes: Array("\($0)".utf8)) }
        try AtomicFile.writeTogether(files, permissions: 0o600, missingDirectory: .fail, groupSize: 3) { reported.append($0) }
        #expect(reported == [3, 6, 9, 10])
        #expect(files.allSatisfy { contents(of: $0.path) == $0.bytes })

        // The fifth file's directory is missing: the first group (three files) is in place, the second not at all.
        reported = []
        var failing = files.map { (path: $0.path, bytes: Array("new".utf8)) }
        failing[4].path = directory.appending("missing/f4")
        let error = try #require(throws: Errno.self) {
            try AtomicFile.writeTogether(failing, permissions: 0o600, missingDirectory: .fail, groupSize: 3) { reported.append($0) }
        }
        #expect(error == .notFound && error.path == directory.appending("missing/f4"), "\(error)")
        #expect(reported == [3])
        #expect((0..<3).allSatisfy { contents(of: files[$0].path) == Array("new".utf8) })
        #expect((3..<10).allSatisfy { contents(of: files[$0].path) == files[$0].bytes })
        #expect(try namesIn(directory.path).count == 10)
    }
}

struct DirectoryTests {
    @Test func listsExactlyTheNamesCreatedIncludingOnesThatAreNotUTF8() throws {
        let directory = TemporaryDirectory()
        let notUTF8: [UInt8] = [0x6E, 0xFF, 0xFE, 0x2E, 0x74, 0x78, 0x74]
        var path = Array(directory.path.utf8) + [0x2F] + notUTF8
        path.append(0)
        let made = path.withUnsafeBufferPointer { bytes in
            bytes.withMemoryRebound(to: CChar.self) { open($0.baseAddress!, O_CREAT | O_EXCL | O_WRONLY | O_CLOEXEC, 0o600) }
        }
        try #require(made >= 0)
        close(made)
        // Removed here: the directory's own cleanup goes through Foundation, which may not handle such a name.
        defer {
            _ = path.withUnsafeBufferPointer { $0.withMemoryRebound(to: CChar.self) { unlink($0.baseAddress!) } }
            withExtendedLifetime(directory) {}
        }
        try AtomicFile.write([], to: directory.appending("plain"), permissions: 0o600, durable: false)
        try Directory.create(directory.appending("sub"), permissions: 0o755, withParents: false)
        #expect(symlink("plain", directory.appending("link")) == 0)

        let entries = try Directory.entries(at: directory.path)
        #expect(Set(entries.map(\.nameBytes)) == [notUTF8, Array("plain".utf8), Array("sub".utf8), Array("link".utf8)])
        #expect(entries.count == 4)
        #expect(entries.first { $0.nameBytes == notUTF8 }?.name == nil)
        #expect(entries.first { $0.nameBytes == Array("plain".utf8) }?.name == "plain")
        let kinds = Dictionary(entries.compactMap { entry in entry.name.map { ($0, entry.kind) } }, uniquingKeysWith: { first, _ in first })
        // Some file systems do not give the kind; where they do, it must be right.
        #expect([.directory, .unknown].contains(kinds["sub"]))
        #expect([.regular, .unknown].contains(kinds["plain"]))
        #expect([.symbolicLink, .unknown].contains(kinds["link"]))
    }

    @Test func aMissingDirectoryThrowsNotFoundNamingIt() throws {
        let directory = TemporaryDirectory()
        let missing = directory.appending("missing")
        let error = try #require(throws: Errno.self) { try Directory.entries(at: missing) }
        #expect(error == .notFound)
        #expect(error.path == missing && error.operation == "list")
        try AtomicFile.write([], to: directory.appending("file"), permissions: 0o600, durable: false)
        #expect(throws: Errno.notDirectory) { try Directory.entries(at: directory.appending("file")) }
    }

    @Test func createMakesParentsAndAcceptsAnExistingDirectoryButNotAFile() throws {
        let directory = TemporaryDirectory()
        #expect(throws: Errno.notFound) { try Directory.create(directory.appending("x/y"), permissions: 0o755, withParents: false) }
        try Directory.create(directory.appending("x/y/z/"), permissions: 0o755, withParents: true)
        try Directory.create(directory.appending("x/y"), permissions: 0o755, withParents: true)
        #expect(try Directory.entries(at: directory.appending("x/y")).map(\.name) == ["z"])
        try AtomicFile.write([], to: directory.appending("file"), permissions: 0o600, durable: false)
        #expect(throws: Errno.exists) { try Directory.create(directory.appending("file"), permissions: 0o755, withParents: true) }
    }

    @Test func aDurableCreateSyncsEachDirectoryItMakesIntoItsParentFromTheTopDown() throws {
        let directory = TemporaryDirectory()
        var synced: [String] = []
        try Directory.create(directory.appending("a/b/c"), permissions: 0o755, withParents: true, syncParent: { synced.append($0) })
        #expect(synced == [directory.path, directory.appending("a"), directory.appending("a/b")])
        synced = []
        try Directory.create(directory.appending("a/b/c"), permissions: 0o755, withParents: true, syncParent: { synced.append($0) })
        #expect(synced == [], "nothing was made, so nothing needs a sync")
        // A parent that cannot be synced fails the create: the caller must not go on as if the directory were durable.
        #expect(throws: Errno(code: EIO)) {
            try Directory.create(directory.appending("d"), permissions: 0o755, withParents: true,
                                 syncParent: { _ throws(Errno) in throw Errno(code: EIO) })
        }
        try Directory.create(directory.appending("e/f"), permissions: 0o755, withParents: true, durable: true)
        #expect(Directory.isDirectory(directory.appending("e/f")))
    }

    @Test(arguments: [("/a/b", "/a"), ("/a/b/", "/a"), ("b", "."), ("/b", "/"), ("a//b", "a"), ("/", "/")])
    func parentDirectory(path: String, parent: String) {
        #expect(Directory.parentDirectory(of: path) == parent)
    }
}

struct FileDescriptorTests {
    /// True while descriptor `number` is open on the file `identity` (device and inode). Comparing the file, not
    /// just the number, keeps a number reused by another test's open from looking like ours.
    private func isOpen(_ number: Int32, on identity: (dev_t, ino_t)) -> Bool {
        var info = stat()
        return fstat(number, &info) == 0 && info.st_dev == identity.0 && info.st_ino == identity.1
    }

    private func identity(of path: String) throws -> (dev_t, ino_t) {
        var info = stat()
        try #require(stat(path, &info) == 0)
        return (info.st_dev, info.st_ino)
    }

    @Test func closesWhenItsOwnerLetsGo() throws {
        let directory = TemporaryDirectory()
        let path = directory.appending("file")
        try AtomicFile.write([1], to: path, permissions: 0o600, durable: false)
        let file = try identity(of: path)
        var number: Int32 = -1
        do {
            let descriptor = try FileDescriptor.open(path, O_RDONLY)
            number = descriptor.rawValue
            #expect(isOpen(number, on: file))
            #expect(fcntl(number, F_GETFD) & FD_CLOEXEC != 0)
        }
        #expect(!isOpen(number, on: file))
    }

    @Test func closeReleasesTheDescriptorAtOnce() throws {
        let directory = TemporaryDirectory()
        let path = directory.appending("file")
        try AtomicFile.write([1], to: path, permissions: 0o600, durable: false)
        let descriptor = try FileDescriptor.open(path, O_RDONLY)
        let number = descriptor.rawValue
        try descriptor.close()
        #expect(!isOpen(number, on: try identity(of: path)))
    }

    @Test func writesAndReadsEverything() throws {
        let directory = TemporaryDirectory()
        let path = directory.appending("big")
        let bytes = (0..<300_000).map { UInt8(truncatingIfNeeded: $0 &* 31) }
        let writer = try FileDescriptor.open(path, O_WRONLY | O_CREAT | O_EXCL, permissions: 0o600)
        try writer.write(all: bytes)
        try writer.sync()
        try writer.close()
        #expect(try FileDescriptor.open(path, O_RDONLY).readToEnd() == bytes)
    }

    @Test func aFailedOpenNamesTheFileAndTheStep() throws {
        let directory = TemporaryDirectory()
        let missing = directory.appending("nothing-here")
        let error = try #require(throws: Errno.self) { _ = try FileDescriptor.open(missing, O_RDONLY) }
        #expect(error == .notFound && error.code == ENOENT)
        #expect(error.description == "\(missing): open failed: No such file or directory")
        // Equality is on the code only, so a caller can compare with the constants.
        #expect(error != .exists)
        #expect(Errno(code: ENOSPC, operation: "write", path: "/x").isDiskFull)
    }
}

/// `ResourceLimits.reserveDescriptors` grows the kernel's descriptor table at once (see there for why).
struct DescriptorTableTests {
    /// The table's size as the kernel reports it (`FDSize` in /proc/self/status).
    static func tableSize() -> Int? {
        guard let status = try? String(contentsOfFile: "/proc/self/status", encoding: .utf8) else { return nil }
        for line in status.split(separator: "\n") where line.hasPrefix("FDSize:") {
            return Int(line.dropFirst("FDSize:".count).trimmingCharacters(in: .whitespaces))
        }
        return nil
    }

    /// How many of this process's descriptors are open on the directory "/".
    static func descriptorsOpenOnRoot() throws -> Int {
        try FileManager.default.contentsOfDirectory(atPath: "/proc/self/fd").filter { name in
            (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/fd/" + name)) == "/"
        }.count
    }

    @Test func theTableHoldsTheReservedDescriptorsAndNoneIsLeftOpen() throws {
        let before = try #require(Self.tableSize())
        let wanted = before * 4
        try #require(wanted <= ResourceLimits.openFiles, "the soft limit on open files is too low for this test")
        let openOnRoot = try Self.descriptorsOpenOnRoot()
        ResourceLimits.reserveDescriptors(wanted)
        #expect(try #require(Self.tableSize()) >= wanted)
        // The reservation opens "/" twice and must close both. Other tests running meanwhile open files of their own
        // (counting every descriptor made this test fail now and then), but none opens "/".
        #expect(try Self.descriptorsOpenOnRoot() <= openOnRoot)
        #expect(fcntl(Int32(wanted - 1), F_GETFD) == -1, "the descriptor that grew the table was left open")
    }
}

/// `Directory.names(inOpen:path:)`: the backup's listing of every directory, read with getdents64.
struct OpenDirectoryListingTests {
    @Test func everyNameOnceWithItsNulAcrossManyReads() throws {
        let scratch = TemporaryDirectory(prefix: "fk-getdents")
        let path = scratch.appending("wide")
        try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
        // 3,000 names of 60 bytes: about 240 KiB of records, so several reads of the 32 KiB buffer.
        var expected: Set<[CChar]> = []
        for index in 0..<3000 {
            let name = String(format: "entry-%05d-", index) + String(repeating: "x", count: 48)
            #expect(FileManager.default.createFile(atPath: path + "/" + name, contents: nil))
            expected.insert(Array(name.utf8CString))
        }
        // A name that is not UTF-8 comes back byte for byte.
        let latin1: [CChar] = [0x63, 0x61, 0x66, CChar(bitPattern: 0xE9), 0]
        #expect(FileManager.default.createFile(atPath: path + "/x", contents: nil))
        let raw = Array(path.utf8CString.dropLast()) + [0x2F] + latin1
        let created = raw.withUnsafeBufferPointer { open($0.baseAddress!, O_CREAT | O_WRONLY | O_CLOEXEC, 0o600) }
        #expect(created >= 0)
        close(created)
        expected.insert(Array("x".utf8CString))
        expected.insert(latin1)

        let descriptor = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        #expect(descriptor >= 0)
        defer { close(descriptor) }
        let names = try Directory.names(inOpen: descriptor, path: path)
        #expect(names.count == expected.count, "a name was missed or seen twice")
        #expect(Set(names) == expected)
        #expect(names.allSatisfy { $0.last == 0 && !$0.dropLast().contains(0) })
        // The descriptor stays usable for the *at calls.
        var info = stat()
        #expect(fstatat(descriptor, "x", &info, AT_SYMLINK_NOFOLLOW) == 0)
    }

    /// A directory removed between its opening and its listing (a cache cleaner at work during a backup) lists as
    /// empty, as readdir made it, instead of failing the whole account's backup (getdents64 says ENOENT).
    @Test func aRemovedDirectoryListsAsEmptyAndABadDescriptorIsAnError() throws {
        let scratch = TemporaryDirectory(prefix: "fk-getdents")
        let path = scratch.appending("gone")
        try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
        let descriptor = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        #expect(descriptor >= 0)
        #expect(rmdir(path) == 0)
        #expect(try Directory.names(inOpen: descriptor, path: path).isEmpty)
        close(descriptor)
        // Not the closed number: another test's thread may have been given it already.
        #expect(throws: Errno.badDescriptor) { try Directory.names(inOpen: -1, path: path) }
    }
}
