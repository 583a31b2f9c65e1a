@testable import BackupEngine
import Foundation
import Testing
import TestSupport

/// An account owner sets any time they like on their files; a backup of them must not trap.
struct HostileFileTimeTests {
    @Test func filesDatedPastTheYear2262AreBackedUpAndSeenUnchangedOnTheNextRun() throws {
        let scratch = TemporaryDirectory(prefix: "fk-times")
        let home = scratch.appending("home")
        try FileManager.default.createDirectory(atPath: home + "/user/public_html", withIntermediateDirectories: true)
        for (name, seconds) in [("future", 10_413_792_000), ("past", -10_413_792_000), ("now", 1_800_000_000)] {
            let path = home + "/user/public_html/" + name
            try Data("content of \(name)".utf8).write(to: URL(fileURLWithPath: path))
            var times = [timespec(tv_sec: seconds, tv_nsec: 999_999_999), timespec(tv_sec: seconds, tv_nsec: 999_999_999)]
            #expect(utimensat(AT_FDCWD, path, &times, 0) == 0, "utimensat: errno \(errno)")
        }
        try Repository.initialize(storage: LocalStorage(root: scratch.appending("repo")), keySource: .keyFile(scratch.appending("key")))
        let repository = try Repository.open(storage: LocalStorage(root: scratch.appending("repo")), keySource: .keyFile(scratch.appending("key")))
        let first = try repository.backup(directory: home, options: BackupOptions(tags: ["kind": "files"]))
        #expect(first.summary.errors.isEmpty, "\(first.summary.errors)")
        let second = try repository.backup(directory: home, options: BackupOptions(tags: ["kind": "files"]))
        #expect(second.summary.filesRead == 0, "an unchanged far-future file was read again")
        let target = scratch.appending("restore")
        #expect(try repository.restore(second, target: target).errors.isEmpty)
        #expect(try String(contentsOfFile: target + "/user/public_html/future", encoding: .utf8) == "content of future")
    }

    @Test func nanosecondTimesClampInsteadOfOverflowing() {
        #expect(UTCTime.nanoseconds(seconds: 1, nanoseconds: 5) == 1_000_000_005)
        #expect(UTCTime.nanoseconds(seconds: 10_413_792_000, nanoseconds: 0) == .max)
        #expect(UTCTime.nanoseconds(seconds: -10_413_792_000, nanoseconds: 0) == .min)
        #expect(UTCTime.nanoseconds(seconds: 9_223_372_036, nanoseconds: 999_999_999) == .max)
        #expect(UTCTime.nanoseconds(seconds: .max, nanoseconds: .max) == .max)
    }
}
