import Foundation

/// A private (0700) directory for one command's repository caches when there is no local repository to keep them in:
/// an off-site restore on a new server. It lives under `$TMPDIR` or `/var/tmp`, not `/tmp`, which is often a tmpfs,
/// where an index cache would cost memory again. The command removes it when it ends (`remove()`).
struct ScratchCacheDirectory {
    let path: String

    /// `$TMPDIR` when set, else `/var/tmp`.
    static var defaultParent: String {
        ProcessInfo.processInfo.environment["TMPDIR"].flatMap { $0.isEmpty ? nil : $0 } ?? "/var/tmp"
    }

    init(parent: String = ScratchCacheDirectory.defaultParent) throws {
        var template = Array((parent + "/fleetkeep-cache-XXXXXX").utf8CString)
        let made = template.withUnsafeMutableBufferPointer { buffer in mkdtemp(buffer.baseAddress!).map { String(cString: $0) } }
        guard let made else {
            throw AgentError("cannot create a cache directory in \(parent): \(String(cString: strerror(errno))) (set TMPDIR to a writable directory on a disk with free space)")
        }
        path = made
    }

    func remove() {
        try? FileManager.default.removeItem(atPath: path)
    }
}
