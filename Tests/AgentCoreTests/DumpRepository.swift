@testable import AgentCore
import BackupEngine
import Foundation
import Testing
import TestSupport

/// A repository in `scratch` (agent.conf with databases off) holding one database dump of account alice,
/// `alice_wp.sql`: the arguments that name it, and the dump's bytes.
enum DumpRepository {
    static func make(in scratch: TemporaryDirectory) throws -> (common: [String], dump: [UInt8]) {
        try "[database]\nenabled = no\n".write(toFile: scratch.appending("agent.conf"), atomically: true, encoding: .utf8)
        let common = ["--repo", scratch.appending("repo"), "--key-file", scratch.appending("repo.key"), "--config", scratch.appending("agent.conf")]
        #expect(try BackupCommands.repo(["init"] + common) == 0)
        let repository = try Repository.open(storage: LocalStorage(root: scratch.appending("repo")), keySource: .keyFile(scratch.appending("repo.key")))
        let dump = Array("CREATE TABLE t (id INT);\nINSERT INTO t VALUES (1),(2);\n".utf8)
        let pipe = Pipe()
        let writer = Thread { pipe.fileHandleForWriting.write(Data(dump)); try? pipe.fileHandleForWriting.close() }
        writer.start()
        _ = try repository.backup(stream: pipe.fileHandleForReading.fileDescriptor, name: "alice_wp.sql",
                                  options: BackupOptions(tags: ["account": "alice", "kind": "databases", "database": "alice_wp", "host": "h"], chunking: .streams))
        try? pipe.fileHandleForReading.close()
        return (common, dump)
    }
}
