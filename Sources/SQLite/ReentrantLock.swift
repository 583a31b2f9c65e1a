#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import Synchronization

/// A `Mutex` that the thread holding it may enter again.
///
/// `Database.transaction` hands its body the same `Database`, and the body's calls run on the thread that already
/// holds the lock; a plain `Mutex` would deadlock there. Only the owning thread ever stores its own id in `owner`
/// (and clears it before unlocking), so a thread that reads its own id is necessarily the holder.
final class ReentrantLock: Sendable {
    private let mutex = Mutex<Void>(())
    private let owner = Atomic<UInt>(0)

    func withLock<T>(_ body: () throws -> T) throws -> T {
        let me = Self.currentThread()
        if owner.load(ordering: .relaxed) == me { return try body() }
        // The result travels through a local rather than Mutex's `sending` return, so T need not be Sendable.
        var result: Result<T, any Error>?
        mutex.withLock { _ in
            owner.store(me, ordering: .relaxed)
            defer { owner.store(0, ordering: .relaxed) }
            result = Result { try body() }
        }
        return try result!.get()
    }

    /// For bodies that cannot throw.
    func withLock<T>(_ body: () -> T) -> T {
        let me = Self.currentThread()
        if owner.load(ordering: .relaxed) == me { return body() }
        var result: T?
        mutex.withLock { _ in
            owner.store(me, ordering: .relaxed)
            defer { owner.store(0, ordering: .relaxed) }
            result = body()
        }
        return result!
    }

    private static func currentThread() -> UInt {
        #if canImport(Darwin)
        UInt(bitPattern: pthread_self())
        #else
        UInt(pthread_self())
        #endif
    }
}
