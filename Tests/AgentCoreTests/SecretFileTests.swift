@testable import AgentCore
import Foundation
import Testing
import TestSupport

/// Database and SFTP password files follow the key file's rules. They used to be read whatever their mode (0644
/// included), and a FIFO in their place would have made the agent wait for ever.
struct SecretFileTests {
    @Test func aPasswordOnlyItsOwnerCanReadIsRead() throws {
        let scratch = TemporaryDirectory(prefix: "fk-secret")
        let path = scratch.appending("db.password")
        try "s3cret\n".write(toFile: path, atomically: true, encoding: .utf8)
        #expect(chmod(path, 0o600) == 0)
        #expect(try SecretFile.read(path, what: "database password file") == "s3cret")
    }

    @Test func aPasswordOthersCanReadIsRefusedNamingTheFix() throws {
        let scratch = TemporaryDirectory(prefix: "fk-secret")
        let path = scratch.appending("db.password")
        try "s3cret\n".write(toFile: path, atomically: true, encoding: .utf8)
        #expect(chmod(path, 0o644) == 0)
        do {
            _ = try SecretFile.read(path, what: "database password file")
            Issue.record("a 0644 password file was read")
        } catch let error as AgentError {
            #expect(error.message.contains("chmod 600"), "\(error)")
        }
    }

    @Test func aFIFOInThePasswordFilesPlaceIsRefusedAtOnce() throws {
        let scratch = TemporaryDirectory(prefix: "fk-secret")
        let fifo = scratch.appending("fifo")
        #expect(mkfifo(fifo, 0o600) == 0)
        #expect(throws: AgentError.self) { try SecretFile.read(fifo, what: "database password file") }
    }
}
