import CSSH2

/// libssh2_init must run exactly once before any session; a lazily initialised static gives us that thread-safely.
enum LibSSH2Runtime {
    static let initResult: Int32 = libssh2_init(0)

    static func ensureInitialized() throws {
        if initResult != 0 {
            throw SFTPError(kind: .connection, operation: "initialize libssh2", path: nil, message: "libssh2_init returned \(initResult)", libssh2Code: initResult)
        }
    }
}
