import Glibc

/// The process's resource limits that the programs depend on.
public enum ResourceLimits {
    /// Raises the soft limit on open files to the hard one and returns the soft limit now in force. A backup
    /// walking a deep tree holds a descriptor per level, next to the other accounts' files and the packs, and
    /// systemd starts services with a soft limit of 1,024 (the hard one is usually 524,288).
    @discardableResult
    public static func raiseOpenFilesToHardLimit() -> Int {
        var limit = rlimit()
        guard getrlimit(__rlimit_resource_t(RLIMIT_NOFILE.rawValue), &limit) == 0 else { return openFiles }
        if limit.rlim_cur < limit.rlim_max {
            limit.rlim_cur = limit.rlim_max
            _ = setrlimit(__rlimit_resource_t(RLIMIT_NOFILE.rawValue), &limit)
        }
        return openFiles
    }

    /// The soft limit on open files (Int.max when unlimited or unknown).
    public static var openFiles: Int {
        var limit = rlimit()
        guard getrlimit(__rlimit_resource_t(RLIMIT_NOFILE.rawValue), &limit) == 0, limit.rlim_cur != rlim_t.max else { return Int.max }
        return Int(clamping: limit.rlim_cur)
    }
}
