@testable import BackupEngine
import CLinux
import Crypto
import Foundation
import Testing
import TestSupport

/// Large restored files are written front to back through an aligned buffer with O_DIRECT; what lands on disk must
/// be the exact bytes, the exact size, and keep runs of zeros as holes.
struct DirectRestoreOutputTests {
    /// Writes `bytes` in pieces of random sizes (so appends straddle the staging buffer's edges) into a new file in
    /// `directory`; returns the file's path and whether the descriptor was switched to direct I/O.
    func restore(_ bytes: [UInt8], into directory: String) throws -> (path: String, direct: Bool) {
        let path = directory + "/restored"
        let descriptor = open(path, O_CREAT | O_EXCL | O_WRONLY | O_CLOEXEC, 0o600)
        #expect(descriptor >= 0)
        defer { close(descriptor) }
        let output = DirectRestoreOutput(descriptor: descriptor, what: "restored")
        let direct = fcntl(descriptor, F_GETFL) & fleetkeep_o_direct() != 0
        var start = 0
        while start < bytes.count {
            let end = min(bytes.count, start + Int.random(in: 1...(700 << 10)))
            try bytes.withUnsafeBytes { try output.append(UnsafeRawBufferPointer(rebasing: $0[start..<end])) }
            start = end
        }
        try output.finish()
        #expect(output.size == Int64(bytes.count))
        return (path, direct)
    }

    func isExt4(_ path: String) throws -> Bool {
        try ProcessRunner.run("/usr/bin/stat", ["-f", "-c", "%t", path]).stdout.trimmingCharacters(in: .whitespacesAndNewlines) == "ef53"
    }

    @Test(arguments: [0, 1, 4095, 4096, (256 << 10) + 1, 1 << 20, (3 << 20) + 12_345])
    func randomBytesComeBackExactly(size: Int) throws {
        let scratch = TemporaryDirectory(prefix: "fk-direct-restore")
        let bytes = SecureRandom.bytes(size)
        let (path, direct) = try restore(bytes, into: scratch.path)
        if try isExt4(scratch.path) { #expect(direct, "ext4 accepts O_DIRECT; the output should have used it") }
        #expect(try Data(contentsOf: URL(fileURLWithPath: path)) == Data(bytes))
    }

    @Test func runsOfZerosBecomeHolesAndTheSizeIsExact() throws {
        let scratch = TemporaryDirectory(prefix: "fk-direct-restore")
        // Data, 3 MiB of zeros (holes from an unaligned start), a little data, then 300 KiB of zeros at the end.
        let bytes = SecureRandom.bytes(100_001) + [UInt8](repeating: 0, count: 3 << 20) + SecureRandom.bytes(5_000)
            + [UInt8](repeating: 0, count: 300 << 10)
        let (path, _) = try restore(bytes, into: scratch.path)
        #expect(try Data(contentsOf: URL(fileURLWithPath: path)) == Data(bytes))
        var info = stat()
        #expect(stat(path, &info) == 0)
        #expect(info.st_size == bytes.count)
        #expect(info.st_blocks * 512 < 1 << 20, "zeros were written out: \(info.st_blocks) blocks of 512 bytes")
    }

    @Test func anAllZeroFileIsOneHole() throws {
        let scratch = TemporaryDirectory(prefix: "fk-direct-restore")
        let bytes = [UInt8](repeating: 0, count: (5 << 20) + 3)
        let (path, _) = try restore(bytes, into: scratch.path)
        var info = stat()
        #expect(stat(path, &info) == 0)
        #expect(info.st_size == bytes.count)
        #expect(info.st_blocks == 0)
        #expect(try Data(contentsOf: URL(fileURLWithPath: path)) == Data(bytes))
    }

    /// Through the whole engine: large and small files side by side, restored by the thread pool.
    @Test func largeAndSmallFilesRoundTripThroughARepository() throws {
        let scratch = TemporaryDirectory(prefix: "fk-direct-restore")
        let source = scratch.appending("src")
        try FileManager.default.createDirectory(atPath: source, withIntermediateDirectories: true)
        let sizes = [0, 17, 4096, 255 << 10, 256 << 10, (256 << 10) + 1, (4 << 20) + 333, 9 << 20]
        for (index, size) in sizes.enumerated() {
            // Half random, half a repeated pattern, so some chunks compress and some do not.
            let bytes = SecureRandom.bytes(size / 2) + [UInt8]((0..<(size - size / 2)).map { UInt8($0 % 251) })
            try Data(bytes).write(to: URL(fileURLWithPath: source + "/file-\(index)"))
        }
        let storage = LocalStorage(root: scratch.appending("repo"))
        let repository = try Repository.initialize(storage: storage, keySource: .passphrase("pw"))
        let snapshot = try repository.backup(directory: source, options: BackupOptions(tags: [:]))
        let target = scratch.appending("out")
        let summary = try repository.restore(snapshot, target: target)
        #expect(summary.errors.isEmpty, "\(summary.errors)")
        #expect(try HostingFixture.manifest(root: target) == HostingFixture.manifest(root: source))
    }

    /// A restore into a full disk: each file that did not fit is named with the next step and removed, the files
    /// that fit are complete, and the repository is untouched.
    @Test(arguments: ["tmpfs", "ext4"])
    func aFullTargetDiskNamesTheFilesAndLeavesNoPartialOnes(filesystem: String) throws {
        let scratch = TemporaryDirectory(prefix: "fk-direct-restore")
        let source = scratch.appending("media")
        try writeRandomFiles(source, count: 12, size: 1 << 20, prefix: "media")
        let repository = try Repository.initialize(storage: LocalStorage(root: scratch.appending("repo")), keySource: .passphrase("pw"))
        let snapshot = try repository.backup(directory: source, options: BackupOptions(tags: ["kind": "files"]))
        let mountPoint = scratch.appending("target-disk")
        guard try mountSmallFilesystem(filesystem, at: mountPoint, scratch: scratch) else { return }
        defer { unmount(mountPoint) }
        let summary = try repository.restore(snapshot, target: mountPoint + "/out")
        #expect(!summary.errors.isEmpty, "12 MiB fitted on an 8 MiB disk")
        for error in summary.errors {
            #expect(error.contains("media-") && error.contains("disk is full") && error.contains("restore again"), "\(error)")
        }
        let restored = try FileManager.default.contentsOfDirectory(atPath: mountPoint + "/out")
        #expect(restored.count == 12 - summary.errors.count)
        for name in restored {
            #expect(try Data(contentsOf: URL(fileURLWithPath: mountPoint + "/out/" + name)) == Data(contentsOf: URL(fileURLWithPath: source + "/" + name)))
        }
        #expect(try repository.verify(readData: true).isHealthy)
    }
}
