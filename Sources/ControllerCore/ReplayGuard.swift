import Synchronization

/// Remembers the nonces seen inside the allowed clock window, so a captured request cannot be sent again.
/// Entries older than the window are dropped: a request that old is refused by its timestamp anyway.
public final class ReplayGuard: Sendable {
    private struct State {
        var seen: [String: Int64] = [:]
        var lastSweep: Int64 = 0
    }
    private let state = Mutex(State())
    private let window: Int64

    public init(window: Int64) { self.window = window }

    /// Records `nonce` for `agentID`; false if it was already used.
    public func admit(agentID: String, nonce: String, timestamp: Int64, now: Int64) -> Bool {
        state.withLock { state in
            if now - state.lastSweep > window {
                state.seen = state.seen.filter { now - $0.value <= 2 * window }
                state.lastSweep = now
            }
            let key = agentID + "/" + nonce
            if state.seen[key] != nil { return false }
            state.seen[key] = timestamp
            return true
        }
    }
}
