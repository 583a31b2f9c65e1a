import Glibc

/// A value many threads read at once and few write: a pthread read-write lock around it.
///
/// Why not a `Mutex`: during a backup the walk and the scanner's eight listers all ask the index where blobs are
/// (every parent tree loaded, every unchanged file checked). Under one mutex they queued for each other, and on the
/// benchmark's re-run a seventh of the CPU time went to spinning in the mutex's slow path. Readers here never wait
/// for each other; only writing the index (at a commit, a fold) waits for them.
final class ReadWriteLock<Value>: @unchecked Sendable {
    // @unchecked: `value` is read only with the lock held for reading and written only with it held for writing.
    private let lock = UnsafeMutablePointer<pthread_rwlock_t>.allocate(capacity: 1)
    private var value: Value

    init(_ value: Value) {
        self.value = value
        pthread_rwlock_init(lock, nil)
    }

    deinit {
        pthread_rwlock_destroy(lock)
        lock.deallocate()
    }

    /// Runs `body` with shared access: any number of readers at once, no writer.
    func read<Result>(_ body: (Value) throws -> Result) rethrows -> Result {
        pthread_rwlock_rdlock(lock)
        defer { pthread_rwlock_unlock(lock) }
        return try body(value)
    }

    /// Runs `body` with exclusive access.
    func write<Result>(_ body: (inout Value) throws -> Result) rethrows -> Result {
        pthread_rwlock_wrlock(lock)
        defer { pthread_rwlock_unlock(lock) }
        return try body(&value)
    }
}
