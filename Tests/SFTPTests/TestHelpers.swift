import Foundation
import SFTP
import TestSupport

/// Connection options for a test server, pinned to its real host key and using its ed25519 client key.
func options(for server: SSHDServer, policy: SSHHostKeyPolicy? = nil, credentials: SSHCredentials? = nil,
             operationTimeout: Duration = .seconds(15), keepalive: Duration? = nil) -> SFTPConnectionOptions {
    SFTPConnectionOptions(host: server.host, port: server.port, username: server.user,
                          hostKeyPolicy: policy ?? .pinnedSHA256(server.hostKeyFingerprintSHA256),
                          credentials: credentials ?? .privateKeyFile(path: server.clientKeyPath, passphrase: nil),
                          connectTimeout: .seconds(10), operationTimeout: operationTimeout, keepaliveInterval: keepalive)
}

/// Deterministic pseudo-random bytes (xorshift), so uploads are not trivially compressible or repetitive.
func testBytes(_ count: Int, seed: UInt64 = 0x9E37_79B9_7F4A_7C15) -> [UInt8] {
    var state = seed
    var result = [UInt8](repeating: 0, count: count)
    result.withUnsafeMutableBytes { raw in
        let words = count / 8
        let pointer = raw.baseAddress!
        for index in 0..<words {
            state ^= state << 13; state ^= state >> 7; state ^= state << 17
            pointer.storeBytes(of: state, toByteOffset: index * 8, as: UInt64.self)
        }
        for index in (words * 8)..<count { state ^= state << 13; state ^= state >> 7; state ^= state << 17; raw[index] = UInt8(truncatingIfNeeded: state) }
    }
    return result
}

/// Reads a local file (the server shares this machine's filesystem).
func localBytes(_ path: String) -> [UInt8]? {
    FileManager.default.contents(atPath: path).map { [UInt8]($0) }
}

/// Catches an SFTPError from `body`, or nil if it did not throw one.
func sftpError(_ body: () throws -> Void) -> SFTPError? {
    do { try body(); return nil } catch let error as SFTPError { return error } catch { return nil }
}
