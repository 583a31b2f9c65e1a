@testable import BackupEngine
import Crypto
import Dispatch
import Foundation
import Testing
import TestSupport

/// Packs are written through aligned segments with O_DIRECT; the file must come out byte for byte as written.
struct DirectFileWriterTests {
    /// A writer for the new file `directory/file`; the caller closes `descriptor`.
    func makeWriter(in directory: String) -> (writer: DirectFileWriter, descriptor: Int32, direct: Bool, path: String) {
        let path = directory + "/file"
        let (descriptor, direct) = DirectFileWriter.create(path)
        #expect(descriptor >= 0)
        return (DirectFileWriter(descriptor: descriptor, direct: direct, path: path), descriptor, direct, path)
    }

    /// Pieces of `bytes` (random sizes, some spanning segment boundaries) written from several threads out of order.
    func writeConcurrently(_ bytes: [UInt8], into directory: String) throws -> (contents: Data, direct: Bool) {
        let (writer, descriptor, direct, path) = makeWriter(in: directory)
        defer { close(descriptor) }
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
        return (try Data(contentsOf: URL(fileURLWithPath: path)), direct)
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
        let (writer, descriptor, _, _) = makeWriter(in: scratch.path)
        defer { close(descriptor) }
        let bytes = SecureRandom.bytes(100)
        bytes.withUnsafeBytes { writer.write($0, at: 0) }
        bytes.withUnsafeBytes { writer.write($0, at: 2 << 20) }
        #expect(throws: StorageError.self) { try writer.finish(size: (2 << 20) + 100) }
    }

    @Test func aWriteAfterAbandonLeavesNoStagedSegments() throws {
        let scratch = TemporaryDirectory(prefix: "fk-direct")
        let (writer, descriptor, _, path) = makeWriter(in: scratch.path)
        defer { close(descriptor) }
        let bytes = SecureRandom.bytes(1500)
        bytes.withUnsafeBytes { writer.write($0, at: 0) }
        writer.abandon()
        // Nothing staged is written after abandoning: the file stays empty.
        #expect(try FileManager.default.attributesOfItem(atPath: path)[.size] as? Int == 0)
    }
}
