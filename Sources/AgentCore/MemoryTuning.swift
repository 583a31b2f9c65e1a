import Foundation

/// glibc's `mallopt`; `<malloc.h>` is not part of Swift's Glibc module, and the signature is plain C ints.
@_silgen_name("mallopt")
private func glibcMallopt(_ parameter: Int32, _ value: Int32) -> Int32

/// Keeps the agent's resident memory close to what it actually uses.
public enum MemoryTuning {
    // Values from <malloc.h>.
    private static let arenaMax: Int32 = -8

    /// Two arenas stop worker threads from each holding their own high-water mark. (The backup engine fixes the
    /// mmap threshold itself when a backup starts, so chunk buffers go back to the system; see `Backup.swift`.)
    public static func apply() {
        _ = glibcMallopt(arenaMax, 2)
    }
}
