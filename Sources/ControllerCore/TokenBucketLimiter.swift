import Foundation
import Synchronization

/// Token buckets by key (a client address, a licence key digest): each key may spend `burst` requests at once and
/// gets `rate` back per second. Memory is bounded: buckets that have filled up again are forgotten (a full bucket
/// is the same as no bucket), and when `maxKeys` are still tracked after that, new keys are refused until some
/// buckets fill, so a flood of distinct keys costs the attacker, not the controller.
public final class TokenBucketLimiter: Sendable {
    private struct Bucket {
        var tokens: Double
        var updated: Double
    }
    private struct State {
        var buckets: [String: Bucket] = [:]
        var lastSweep: Double = 0
    }
    private let state = Mutex(State())
    public let rate: Double
    public let burst: Double
    private let maxKeys: Int

    public init(rate: Double, burst: Double, maxKeys: Int = 100_000) {
        self.rate = rate.isFinite && rate > 0 ? rate : 1
        self.burst = burst.isFinite && burst >= 1 ? burst : 1
        self.maxKeys = max(1, maxKeys)
    }

    /// Monotonic seconds, immune to wall-clock changes.
    public static func monotonicNow() -> Double { Double(DispatchTime.now().uptimeNanoseconds) / 1e9 }

    /// Takes one token for `key`. Returns nil when allowed, else the whole seconds until a token is back (≥ 1).
    public func take(_ key: String, now: Double = TokenBucketLimiter.monotonicNow()) -> Int? {
        state.withLock { state in
            if state.buckets.count >= maxKeys || now - state.lastSweep > 10 {
                let burst = self.burst, rate = self.rate
                state.buckets = state.buckets.filter { $0.value.tokens + (now - $0.value.updated) * rate < burst }
                state.lastSweep = now
            }
            var bucket = state.buckets[key] ?? Bucket(tokens: burst, updated: now)
            if state.buckets[key] == nil && state.buckets.count >= maxKeys { return 1 }
            bucket.tokens = min(burst, bucket.tokens + max(0, now - bucket.updated) * rate)
            bucket.updated = now
            guard bucket.tokens >= 1 else {
                state.buckets[key] = bucket
                return max(1, Int(min(86_400, ((1 - bucket.tokens) / rate).rounded(.up))))
            }
            bucket.tokens -= 1
            state.buckets[key] = bucket
            return nil
        }
    }

    /// How many keys are tracked (for tests).
    public var trackedKeys: Int { state.withLock { $0.buckets.count } }
}
