@testable import BackupEngine
import Foundation
import Testing
import TestSupport

/// Files are compressed at zstd level 1 (fast), database dumps at level 3 (they are kept 30 days), and an explicit
/// level is what the pack writer really uses.
struct CompressionLevelTests {
    @Test func defaultsDependOnTheKindOfBackup() {
        #expect(BackupOptions(tags: [:]).compressionLevel == 1)
        #expect(BackupOptions(tags: [:], chunking: .streams).compressionLevel == 3)

    }

    @Test func theChosenLevelIsUsedAndRestoresExactly() throws {
        let scratch = TemporaryDirectory(prefix: "fk-level")
        let source = scratch.appending("src")
        try FileManager.default.createDirectory(atPath: source, withIntermediateDirectories: true)
        // Text with long-range repetition: a higher level finds more of it.
        var text = ""
        var state: UInt64 = 42
        for line in 0..<60_000 {
            state = state &* 6364136223846793005 &+ 1442695040888963407
            text += "INSERT INTO log VALUES (\(line), 'user\(state % 997)', 'page/\(state % 131)/view', \(state % 100_000));\n"
        }
        try Data(text.utf8).write(to: URL(fileURLWithPath: source + "/log.sql"))
        var stored: [Int32: Int64] = [:]
        for level: Int32 in [1, 19] {
            let repository = try Repository.initialize(storage: LocalStorage(root: scratch.appending("repo\(level)")),
                                                       keySource: .keyFile(scratch.appending("key\(level)")))
            var options = BackupOptions(tags: ["kind": "files"])
            options.compressionLevel = level
            let snapshot = try repository.backup(directory: source, options: options)
            stored[level] = snapshot.summary.bytesStored
            let target = scratch.appending("out\(level)")
            #expect(try repository.restore(snapshot, target: target).errors.isEmpty)
            #expect(FileManager.default.contents(atPath: target + "/log.sql") == Data(text.utf8))
        }
        let fast = try #require(stored[1]), strong = try #require(stored[19])
        #expect(strong < fast, "level 19 stored \(strong) bytes, level 1 \(fast)")
    }
}
