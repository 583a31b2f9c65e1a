import Foundation

/// Bounds the bytes in flight between the reading thread and the workers, and so the backup's memory: `acquire`
/// blocks while the budget is used up. One request larger than the whole budget is let through alone, so a
/// maximum-size chunk can never deadlock.
final class ByteBudget: @unchecked Sendable {
    // @unchecked: `used` is only touched with `condition` locked.
    private let condition = NSCondition()
    private let limit: Int
    private var used = 0

    init(limit: Int) { self.limit = limit }

    func acquire(_ bytes: Int) {
        condition.lock()
        while used > 0 && used + bytes > limit { condition.wait() }
        used += bytes
        condition.unlock()
    }

    func release(_ bytes: Int) {
        condition.lock()
        used -= bytes
        condition.broadcast()
        condition.unlock()
    }

    /// Waits until every acquired byte was released, i.e. all work handed out has finished.
    func drain() {
        condition.lock()
        while used > 0 { condition.wait() }
        condition.unlock()
    }
}
