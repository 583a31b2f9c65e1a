import Foundation

/// A fixed number of worker threads taking jobs in order. Fixed, unlike a concurrent dispatch queue, which adds
/// threads while workers block on the pack lock or disk: every extra thread means another zstd context (several MiB
/// each) and more chunks held at once.
final class WorkerPool: @unchecked Sendable {
    // @unchecked: `jobs`, `running` and `closed` are only touched with `condition` locked.
    private let condition = NSCondition()
    /// Taken jobs are set to nil at once: a finished job must not keep its captured chunk alive.
    private var jobs: [(@Sendable () -> Void)?] = []
    private var head = 0
    private var running = 0
    private var closed = false

    /// Keep `name` to 12 bytes: Linux keeps 15 bytes of a thread's name, and a longer one loses its number.
    init(threads: Int, name: String) {
        for index in 0..<max(threads, 1) {
            startNamedThread("\(name)-\(index)", stackSize: threadStackSize) { [self] in work() }
        }
    }

    func submit(_ job: @escaping @Sendable () -> Void) {
        condition.lock()
        jobs.append(job)
        condition.broadcast()
        condition.unlock()
    }

    /// Waits until every submitted job has finished.
    func wait() {
        condition.lock()
        while head < jobs.count || running > 0 { condition.wait() }
        jobs.removeAll(keepingCapacity: false)
        head = 0
        condition.unlock()
    }

    /// Lets the threads finish their current job and exit. Submitted but unstarted jobs still run first.
    func close() {
        condition.lock()
        closed = true
        condition.broadcast()
        condition.unlock()
    }

    private func work() {
        while true {
            condition.lock()
            while head >= jobs.count && !closed { condition.wait() }
            if head >= jobs.count {
                condition.unlock()
                return
            }
            let job = jobs[head]!
            jobs[head] = nil
            head += 1
            if head > 1024 && head * 2 > jobs.count {
                jobs.removeFirst(head)
                head = 0
            }
            running += 1
            condition.unlock()
            job()
            condition.lock()
            running -= 1
            // Only `wait` cares about a finished job, and only once nothing is left; waking on every job woke the
            // idle workers too, for nothing.
            if running == 0 && head >= jobs.count { condition.broadcast() }
            condition.unlock()
        }
    }
}
