import Foundation
import Posix

/// A file holding one secret (a database or SFTP password), read under the same rules as the repository key file:
/// a regular file that only its owner can read. Opened without waiting on a FIFO.
enum SecretFile {
    static let largestSize = 64 << 10

    /// The file's text without its trailing newlines. `what` names the file in errors ("database password file").
    static func read(_ path: String, what: String) throws -> String {
        let file: FileDescriptor
        do {
            file = try FileDescriptor.open(path, O_RDONLY | O_NONBLOCK)
        } catch {
            throw AgentError("cannot read \(what) \(path): \(error.text)")
        }
        let info: stat
        do { info = try file.status() } catch { throw AgentError("cannot read \(what) \(path): \(error.text)") }
        guard info.st_mode & S_IFMT == S_IFREG else {
            throw AgentError("\(what) \(path) is not a regular file; point the setting at the file holding the password")
        }
        guard info.st_mode & 0o077 == 0 else {
            throw AgentError("\(what) \(path) is readable by other users (mode \(String(info.st_mode & 0o777, radix: 8))); run `chmod 600 \(path)`")
        }
        guard info.st_size <= Self.largestSize else {
            throw AgentError("\(what) \(path) is \(info.st_size) bytes; a password file holds one password")
        }
        let bytes: [UInt8]
        do { bytes = try file.readToEnd() } catch { throw AgentError("cannot read \(what) \(path): \(error.text)") }
        guard bytes.count <= Self.largestSize, let text = String(validating: bytes, as: UTF8.self) else {
            throw AgentError("\(what) \(path) is not UTF-8 text of at most 64 KiB")
        }
        return text.trimmingCharacters(in: .newlines)
    }
}
