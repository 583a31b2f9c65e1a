import Foundation

/// Blocks until SIGINT or SIGTERM arrives, for daemons that stop cleanly on either.
public enum SignalWaiter {
    public static func waitForTermination() {
        var signals = sigset_t()
        sigemptyset(&signals)
        sigaddset(&signals, SIGINT)
        sigaddset(&signals, SIGTERM)
        // Blocked in this thread (and inherited by threads created later), then taken synchronously with sigwait.
        pthread_sigmask(SIG_BLOCK, &signals, nil)
        var received: Int32 = 0
        sigwait(&signals, &received)
    }

    /// Blocks SIGINT/SIGTERM in the calling thread so a later `sigwait` (or `pendingTermination`) can collect them.
    /// Call it first thing in `main`, before other threads start.
    public static func blockTerminationSignals() {
        var signals = sigset_t()
        sigemptyset(&signals)
        sigaddset(&signals, SIGINT)
        sigaddset(&signals, SIGTERM)
        pthread_sigmask(SIG_BLOCK, &signals, nil)
    }

    /// Waits up to `seconds` for SIGINT/SIGTERM; true when one arrived. Requires `blockTerminationSignals()` first.
    public static func waitForTermination(seconds: Double) -> Bool {
        var signals = sigset_t()
        sigemptyset(&signals)
        sigaddset(&signals, SIGINT)
        sigaddset(&signals, SIGTERM)
        // Callers pass computed waits: anything not finite or beyond a year is clamped, never converted into a trap.
        let bounded = seconds.isFinite ? min(max(seconds, 0), 366 * 86_400) : 0
        let whole = bounded.rounded(.down)
        var timeout = timespec(tv_sec: Int(whole), tv_nsec: Int((bounded - whole) * 1e9))
        return sigtimedwait(&signals, nil, &timeout) > 0
    }
}
