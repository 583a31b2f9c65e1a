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

    /// Grows the kernel's table of this process's descriptors to hold `count` of them (at most the soft limit), now.
    ///
    /// Why: the table starts with room for 64 and doubles whenever it is full. In a process with more than one
    /// thread, each growth waits for an RCU grace period (`synchronize_rcu` in the kernel's `expand_fdtable`), and
    /// every thread that opens a file meanwhile waits with it. A backup's listers hold a directory open each, up to
    /// hundreds at a time, so a cold backup grew the table four or five times with 16 threads running; their waits
    /// added up to a quarter of a second (BENCHMARKS.md, "Re-runs"). Called first thing in `main`, with one thread,
    /// the growth does not wait at all. The table costs 8 bytes a descriptor; the kernel never shrinks it.
    public static func reserveDescriptors(_ count: Int) {
        let highest = min(count, openFiles) - 1
        guard highest > 64, let target = Int32(exactly: highest) else { return }
        // F_DUPFD, not dup2: it takes the lowest free number at or above `target`, so it cannot close a descriptor
        // already open there.
        let probe = open("/", O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        guard probe >= 0 else { return }
        let high = fcntl(probe, F_DUPFD_CLOEXEC, target)
        if high >= 0 { close(high) }
        close(probe)
    }

    /// The soft limit on open files (Int.max when unlimited or unknown).
    public static var openFiles: Int {
        var limit = rlimit()
        guard getrlimit(__rlimit_resource_t(RLIMIT_NOFILE.rawValue), &limit) == 0, limit.rlim_cur != rlim_t.max else { return Int.max }
        return Int(clamping: limit.rlim_cur)
    }
}
