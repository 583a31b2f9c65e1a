extension SFTPSession {
    /// Whether a name returned by a remote listing is safe to join onto a local or remote directory path.
    ///
    /// A hostile or broken server can return any bytes as a "file name". Rejected: empty, ".", "..",
    /// anything containing '/' or '\\', NUL or other control characters (0x00-0x1F, 0x7F), and bytes
    /// that are not valid UTF-8 (they could not be named again faithfully). Everything else, including
    /// spaces, leading dots and non-ASCII letters, is accepted.
    public static func isSafeName(_ bytes: some Collection<UInt8>) -> Bool {
        if bytes.isEmpty { return false }
        if bytes.elementsEqual([0x2E]) || bytes.elementsEqual([0x2E, 0x2E]) { return false }
        for byte in bytes where byte < 0x20 || byte == 0x7F || byte == 0x2F || byte == 0x5C { return false }
        var decoder = UTF8()
        var iterator = bytes.makeIterator()
        while true {
            switch decoder.decode(&iterator) {
            case .scalarValue: continue
            case .emptyInput: return true
            case .error: return false
            }
        }
    }

    /// String form of `isSafeName(_:)`.
    public static func isSafeName(_ name: String) -> Bool { isSafeName(Array(name.utf8)) }

    /// Splits remote names into the safe ones (kept in order) and the rejected ones (for a warning).
    public static func safeNames(_ names: [String]) -> (safe: [String], rejected: [String]) {
        var safe: [String] = [], rejected: [String] = []
        for name in names {
            if isSafeName(name) { safe.append(name) } else { rejected.append(name) }
        }
        return (safe, rejected)
    }
}
