import Crypto
import Dispatch
import Foundation

/// A lock is a lease: a file in `locks/` that says who holds it and until when. The holder renews it while it
/// works; a lease that expired (or whose process on this host is gone) is ignored, so a `kill -9` never needs a
/// manual unlock. Backups take shared leases; prune takes an exclusive one.
struct LockLease: Codable {
    var exclusive: Bool
    var host: String
    var pid: Int32
    var expires: Date

    static let duration: TimeInterval = 300

    var isStale: Bool {
        if expires < Date() { return true }
        if host == ProcessInfo.processInfo.hostName, kill(pid, 0) != 0, errno == ESRCH { return true }
        return false
    }
}

/// A held lease, renewed in the background until `release` (or deinit).
final class RepositoryLease: @unchecked Sendable {
    // @unchecked: the timer source is not marked Sendable, but cancelling it from any thread is documented as safe.
    private let storage: any RepositoryStorage
    private let name: String
    private let renewal: any DispatchSourceTimer

    fileprivate init(storage: any RepositoryStorage, name: String, renewal: any DispatchSourceTimer) {
        self.storage = storage
        self.name = name
        self.renewal = renewal
    }

    func release() {
        renewal.cancel()
        try? storage.remove(name)
    }

    deinit { release() }
}

extension Repository {
    /// Runs `body` holding a lease; fails at once with a clear message if a conflicting live lease exists.
    public func withLock<T>(exclusive: Bool, _ body: () throws -> T) throws -> T {
        let lease = try acquireLease(exclusive: exclusive)
        defer { lease.release() }
        return try body()
    }

    /// Takes a lease; fails at once with a clear message if a conflicting live lease exists.
    func acquireLease(exclusive: Bool) throws -> RepositoryLease {
        let storage = self.storage
        let decoder = JSONDecoder()
        decoder.dateDecodingStrategy = UTCTime.jsonDecoding
        func checkConflicts(except own: String?) throws {
            for name in try storage.list("locks") where "locks/" + name != own {
                guard let data = try? storage.read("locks/" + name), let lease = try? decoder.decode(LockLease.self, from: Data(data)) else { continue }
                if lease.isStale {
                    try? storage.remove("locks/" + name)
                    continue
                }
                if exclusive || lease.exclusive {
                    throw RepositoryError("repository at \(storage.location) is locked by \(lease.exclusive ? "a prune" : "a backup") (pid \(lease.pid) on \(lease.host)) until \(lease.expires); try again later")
                }
            }
        }
        try checkConflicts(except: nil)
        let name = "locks/" + Hex.encode(SecureRandom.bytes(8))
        @Sendable func writeLease() throws {
            let encoder = JSONEncoder()
            encoder.dateEncodingStrategy = UTCTime.jsonEncoding
            let lease = LockLease(exclusive: exclusive, host: ProcessInfo.processInfo.hostName, pid: getpid(),
                                  expires: Date().addingTimeInterval(LockLease.duration))
            try storage.write(name, Array(try encoder.encode(lease)))
        }
        try writeLease()
        do {
            // Two processes may have checked at the same moment: looking again after our lease is visible means at
            // least one of them sees the other and backs off.
            try checkConflicts(except: name)
        } catch {
            try? storage.remove(name)
            throw error
        }
        let renewal = DispatchSource.makeTimerSource(queue: DispatchQueue.global())
        renewal.schedule(deadline: .now() + LockLease.duration / 3, repeating: LockLease.duration / 3)
        renewal.setEventHandler { try? writeLease() }
        renewal.resume()
        return RepositoryLease(storage: storage, name: name, renewal: renewal)
    }
}
