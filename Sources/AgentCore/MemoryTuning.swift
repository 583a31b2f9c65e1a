import Foundation

/// glibc's `mallopt`; `<malloc.h>` is not part of Swift's Glibc module, and the signature is plain C ints.
@_silgen_name("mallopt")
private func glibcMallopt(_ parameter: Int32, _ value: Int32) -> Int32

/// Keeps the agent's resident memory close to what it actually uses.
public enum MemoryTuning {
    // Values from <malloc.h>.
    private static let mmapThreshold: Int32 = -3
    private static let arenaMax: Int32 = -8

    /// glibc raises its mmap threshold after large frees and then keeps multi-megabyte chunk buffers in per-thread
    /// arenas for good. A fixed 4 MiB threshold returns big buffers (packs, large chunks) to the system at once, and two arenas stop
    /// worker threads from each holding their own high-water mark.
    public static func apply() {
        _ = glibcMallopt(mmapThreshold, 4 << 20)
        _ = glibcMallopt(arenaMax, 2)
    }
}
