import Synchronization

/// Remembers the nonces seen inside the allowed clock window, so a captured request cannot be sent again.
///
/// A replay repeats the original's signed timestamp, so nonces are filed in 16-second buckets by that timestamp and a
/// request only needs its own bucket searched. Buckets that fall entirely outside the window are dropped whole: a
/// request that old is refused by its timestamp anyway. Memory is bounded by the request rate times the window.
public final class ReplayGuard: Sendable {
    private static let bucketSeconds: Int64 = 16
    private struct State {
        var buckets: [Int64: Set<String>] = [:]
        var lastSweep: Int64 = 0
    }
    private let state = Mutex(State())
    private let window: Int64

    public init(window: Int64) { self.window = window }

    /// Records `nonce` for `agentID`; false if it was already used.
    public func admit(agentID: String, nonce: String, timestamp: Int64, now: Int64) -> Bool {
        let bucket = timestamp >> 4
        let key = agentID + "/" + nonce
        return state.withLock { state in
            if now - state.lastSweep >= Self.bucketSeconds {
                let oldest = (now - window) >> 4
                for stale in state.buckets.keys where stale < oldest { state.buckets.removeValue(forKey: stale) }
                state.lastSweep = now
            }
            return state.buckets[bucket, default: []].insert(key).inserted
        }
    }

    /// How many nonces are remembered (for tests).
    public var count: Int { state.withLock { $0.buckets.values.reduce(0) { $0 + $1.count } } }
}
