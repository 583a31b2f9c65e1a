@testable import BackupEngine
import Dispatch
import Foundation
import Synchronization
import Testing
import TestSupport

/// A backup command's snapshots made together: concurrent backups, one commit.
struct SessionTests {
    @Test func concurrentBackupsAreRecordedOnlyByCommit() throws {
        let scene = try EngineScene(accounts: 2, sizeMB: 4)
        let repository = try scene.initialize()
        let users = try FileManager.default.contentsOfDirectory(atPath: scene.root + "/home").sorted()
        #expect(users.count == 2)
        let session = try BackupSession(repository: repository)
        let tickets = Mutex([String: Int]())
        let errors = Mutex([String]())
        DispatchQueue.concurrentPerform(iterations: users.count) { index in
            do {
                let ticket = try session.backup(directory: scene.root + "/home/" + users[index], options: BackupOptions(tags: ["account": users[index]]))
                tickets.withLock { $0[users[index]] = ticket }
            } catch {
                errors.withLock { $0.append("\(error)") }
            }
        }
        #expect(errors.withLock { $0 }.isEmpty)
        // Nothing is referenced before the commit: no index, no snapshot.
        #expect(try repository.snapshots().isEmpty)
        #expect(try scene.storage.list("index").isEmpty)
        let committed = try session.commit()
        session.close()
        #expect(committed.count == 2)
        #expect(try scene.storage.list("index").count == 1)
        let reopened = try scene.open()
        #expect(try reopened.snapshots().count == 2)
        for user in users {
            let snapshot = try #require(committed[tickets.withLock { $0[user]! }])
            #expect(snapshot.tags["account"] == user)
            let target = scene.scratch.appending("restore-" + user)
            #expect(try reopened.restore(snapshot, target: target).errors.isEmpty)
            #expect(try scene.manifest(target) == scene.manifest(scene.root + "/home/" + user))
        }
        #expect(try reopened.verify(readData: true).isHealthy)
    }

    @Test func aSessionClosedWithoutCommitLeavesNothingBehind() throws {
        let scene = try EngineScene(accounts: 1, sizeMB: 3)
        let repository = try scene.initialize()
        let first = try repository.backup(directory: scene.root + "/home", options: BackupOptions(tags: ["kind": "files"]))
        let packsBefore = try Repository.files(in: scene.storage).files.keys.filter { $0.hasPrefix("data/") }.count
        try HostingFixture.churn(root: scene.root, percent: 20)
        let session = try BackupSession(repository: repository)
        try session.backup(directory: scene.root + "/home", options: BackupOptions(tags: ["kind": "files"]))
        session.close()
        let files = try Repository.files(in: scene.storage).files.keys
        #expect(files.filter { $0.hasPrefix("data/") }.count == packsBefore)
        #expect(!files.contains { $0.hasPrefix("locks/") })
        let reopened = try scene.open()
        #expect(try reopened.snapshots().map(\.id) == [first.id])
        #expect(try reopened.verify(readData: true).isHealthy)
        // The next backup works and picks the committed snapshot as its parent.
        let next = try reopened.backup(directory: scene.root + "/home", options: BackupOptions(tags: ["kind": "files"]))
        #expect(next.parent == first.id)
    }

    @Test func aFailedCommitEndsTheSessionSoNothingRefersToLostBlobs() throws {
        let scene = try EngineScene(accounts: 1, sizeMB: 3)
        let repository = try scene.initialize()
        // Only the first commit fails (a full disk that is freed again, say).
        let failures = Mutex(1)
        let session = try BackupSession(repository: repository, checkpoint: { point in
            if point == "index", failures.withLock({ remaining in defer { remaining -= 1 }; return remaining > 0 }) {
                throw RepositoryError("simulated failure before the index")
            }
        })
        try session.backup(directory: scene.root + "/home", options: BackupOptions(tags: ["kind": "files"]))
        #expect(throws: RepositoryError.self) { try session.commit() }
        // The same data again: its blobs were in the packs the failed commit dropped.
        try session.backup(directory: scene.root + "/home", options: BackupOptions(tags: ["kind": "files", "try": "2"]))
        #expect(throws: RepositoryError.self) { try session.commit() }
        session.close()
        let reopened = try scene.open()
        #expect(try reopened.snapshots().isEmpty)
        #expect(try reopened.verify(readData: true).isHealthy)
        let next = try reopened.backup(directory: scene.root + "/home", options: BackupOptions(tags: ["kind": "files"]))
        let target = scene.scratch.appending("out")
        #expect(try reopened.restore(next, target: target).errors.isEmpty)
        #expect(try scene.manifest(target) == scene.manifest(scene.root + "/home"))
    }

    @Test func directoryListingsLiveInPacksOfTheirOwn() throws {
        let scene = try EngineScene(accounts: 2, sizeMB: 4)
        let repository = try scene.initialize()
        _ = try repository.backup(directory: scene.root + "/home", options: BackupOptions(tags: ["kind": "files"]))
        let index = repository.indexSnapshot
        var kinds: [Int32: Set<UInt8>] = [:]
        for location in index.blobs.map(\.value) { kinds[location.pack, default: []].insert(location.kind.rawValue) }
        #expect(kinds.count >= 2)
        #expect(kinds.values.allSatisfy { $0.count == 1 }, "a pack mixes trees and data")
        #expect(kinds.values.contains([BlobKind.tree.rawValue]))
    }
}
