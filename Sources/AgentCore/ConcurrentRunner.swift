import BackupEngine
import Foundation

/// Runs numbered jobs on a few threads, and now and then pauses them all to run a checkpoint alone.
///
/// A `backup` command backs up one account per core at a time; every `checkpointInterval` seconds the running
/// backups finish, no new one starts, and the checkpoint (a commit of the finished snapshots) runs by itself, so a
/// long run killed halfway keeps most of its work.
final class ConcurrentRunner: @unchecked Sendable {
    // @unchecked: every mutable field is only touched with `condition` locked.
    private let condition = NSCondition()
    private var next = 0
    private var running = 0
    private var checkpointWanted = false
    private var checkpointRunning = false
    private var lastCheckpoint = Date()
    private let checkpointInterval: TimeInterval

    init(checkpointInterval: TimeInterval) {
        self.checkpointInterval = checkpointInterval
    }

    /// Calls `job(0..<count)` on `width` threads and `checkpoint` whenever the interval has passed (never while a
    /// job runs). Returns when every job has returned.
    func run(count: Int, width: Int, job: @escaping @Sendable (Int) -> Void, checkpoint: @escaping @Sendable () -> Void) {
        let threads = max(1, min(width, count))
        let finished = DispatchGroup()
        for index in 0..<threads {
            finished.enter()
            // Each runner walks whole account trees, one call per directory level: it gets the walkers' stack.
            startNamedThread("fk-runner-\(index)", stackSize: threadStackSize) { [self] in
                work(count: count, job: job, checkpoint: checkpoint)
                finished.leave()
            }
        }
        finished.wait()
    }

    private func work(count: Int, job: (Int) -> Void, checkpoint: () -> Void) {
        condition.lock()
        while true {
            while checkpointWanted && (running > 0 || checkpointRunning) { condition.wait() }
            if checkpointWanted {
                // Everyone else is waiting above, so the checkpoint runs alone.
                checkpointRunning = true
                condition.unlock()
                checkpoint()
                condition.lock()
                checkpointRunning = false
                checkpointWanted = false
                lastCheckpoint = Date()
                condition.broadcast()
            }
            guard next < count else { break }
            let index = next
            next += 1
            running += 1
            condition.unlock()
            job(index)
            condition.lock()
            running -= 1
            if next < count && Date().timeIntervalSince(lastCheckpoint) >= checkpointInterval { checkpointWanted = true }
            condition.broadcast()
        }
        condition.unlock()
    }
}
