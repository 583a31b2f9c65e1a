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

extension Repository {
    /// Runs `body` holding a lease; fails at once with a clear message if a conflicting live lease exists.
    public func withLock<T>(exclusive: Bool, _ body: () throws -> T) throws -> T {
        let decoder = JSONDecoder()
        decoder.dateDecodingStrategy = .iso8601
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
        let encoder = JSONEncoder()
        encoder.dateEncodingStrategy = .iso8601
        func writeLease() throws {
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
        defer {
            renewal.cancel()
            try? storage.remove(name)
        }
        return try body()
    }
}
