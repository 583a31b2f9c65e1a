@testable import BackupEngine
import Crypto
import Dispatch
import Foundation
import Posix
import Testing
import TestSupport

/// Packs are written through aligned segments with O_DIRECT; the file must come out byte for byte as written.
struct DirectFileWriterTests {
    /// A writer for a new temporary file in a directory, as a pack gets one; the file goes with this value.
    final class TemporaryPack {
        let file: TemporaryFile
        let writer: DirectFileWriter
        var path: String { file.path }

        init(in directory: String) throws {
            let file = try DirectFileWriter.createTemporaryFile(in: directory)
            writer = DirectFileWriter(descriptor: file.file.rawValue, path: file.path)
            self.file = consume file
        }

        deinit { writer.abandon() }
    }

    /// Pieces of `bytes` (random sizes, some spanning segment boundaries) written from several threads out of order.
    func writeConcurrently(_ bytes: [UInt8], into directory: String) throws -> (contents: Data, direct: Bool) {
        let target = try TemporaryPack(in: directory)
        let writer = target.writer
        let direct = writer.isDirect
        var pieces: [Range<Int>] = []
        var start = 0
        var generator = SystemRandomNumberGenerator()
        while start < bytes.count {
            let end = min(bytes.count, start + Int.random(in: 1...(300 << 10), using: &generator))
            pieces.append(start..<end)
            start = end
        }
        pieces.shuffle(using: &generator)
        let order = pieces
        DispatchQueue.concurrentPerform(iterations: 4) { lane in
            for (index, piece) in order.enumerated() where index % 4 == lane {
                bytes.withUnsafeBytes { writer.write(UnsafeRawBufferPointer(rebasing: $0[piece]), at: piece.lowerBound) }
            }
        }
        try writer.finish(size: bytes.count)
        return (try Data(contentsOf: URL(fileURLWithPath: target.path)), direct)
    }

    @Test(arguments: [0, 1, 4095, 4096, 1 << 20, (3 << 20) + 12_345])
    func concurrentWritesProduceTheExactFile(size: Int) throws {
        let scratch = TemporaryDirectory(prefix: "fk-direct")
        let bytes = SecureRandom.bytes(size)
        let (contents, direct) = try writeConcurrently(bytes, into: scratch.path)
        let filesystemType = try ProcessRunner.run("/usr/bin/stat", ["-f", "-c", "%t", scratch.path]).stdout
        if filesystemType.trimmingCharacters(in: .whitespacesAndNewlines) == "ef53" {
            #expect(direct, "ext4 accepts O_DIRECT; the writer should have used it")
        }
        #expect(contents.count == size)
        #expect(contents == Data(bytes))
    }

    /// /dev/shm is tmpfs: either it refuses O_DIRECT at open (and the writer falls back) or accepts it.
    @Test func tmpfsGetsTheSameBytes() throws {
        guard FileManager.default.isWritableFile(atPath: "/dev/shm") else { return }
        let directory = "/dev/shm/fk-direct-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let bytes = SecureRandom.bytes((2 << 20) + 777)
        let (contents, _) = try writeConcurrently(bytes, into: directory)
        #expect(contents == Data(bytes))
    }

    @Test func aGapFailsTheFileInsteadOfLeavingZeros() throws {
        let scratch = TemporaryDirectory(prefix: "fk-direct")
        let target = try TemporaryPack(in: scratch.path)
        let writer = target.writer
        let bytes = SecureRandom.bytes(100)
        bytes.withUnsafeBytes { writer.write($0, at: 0) }
        bytes.withUnsafeBytes { writer.write($0, at: 2 << 20) }
        #expect(throws: StorageError.self) { try writer.finish(size: (2 << 20) + 100) }
    }

    @Test func aWriteAfterAbandonLeavesNoStagedSegments() throws {
        let scratch = TemporaryDirectory(prefix: "fk-direct")
        let target = try TemporaryPack(in: scratch.path)
        let writer = target.writer
        let bytes = SecureRandom.bytes(1500)
        bytes.withUnsafeBytes { writer.write($0, at: 0) }
        writer.abandon()
        // Nothing staged is written after abandoning: the file stays empty.
        #expect(try FileManager.default.attributesOfItem(atPath: target.path)[.size] as? Int == 0)
    }
}
