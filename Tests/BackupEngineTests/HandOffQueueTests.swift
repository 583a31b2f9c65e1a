import Dispatch
import Foundation
import Synchronization
import Testing
@testable import BackupEngine

/// The bounded hand-off between restore's creating thread and its writers. Consumers run on their own threads, as
/// restore's writers do: blocked on dispatch's global queue, they could take every thread the tests themselves need.
struct HandOffQueueTests {
    func spawn(_ group: DispatchGroup, _ body: @escaping @Sendable () -> Void) {
        group.enter()
        Thread { body(); group.leave() }.start()
    }

    @Test func everyElementReachesExactlyOneConsumerAndTheProducerNeverRunsAhead() {
        let queue = HandOffQueue<Int>(capacity: 4)
        let taken = Mutex<[Int]>([])
        // Elements put but not yet taken; the producer must never get more than `capacity` ahead.
        let outstanding = Atomic<Int>(0)
        let highest = Atomic<Int>(0)
        let consumers = DispatchGroup()
        for _ in 0..<3 {
            spawn(consumers) {
                while let element = queue.take() {
                    outstanding.subtract(1, ordering: .relaxed)
                    taken.withLock { $0.append(element) }
                }
            }
        }
        for element in 0..<5_000 {
            let now = outstanding.add(1, ordering: .relaxed).newValue
            _ = highest.max(now, ordering: .relaxed)
            queue.put(element)
        }
        queue.close()
        consumers.wait()
        #expect(taken.withLock { $0.sorted() } == Array(0..<5_000))
        // The count runs slightly ahead of the queue: it is raised before `put` (one waiting element) and lowered
        // after `take` (one element per consumer). An unbounded queue would let it reach thousands.
        #expect(highest.load(ordering: .relaxed) <= 4 + 1 + 3)
    }

    @Test func aClosedQueueIsDrainedBeforeTakeReturnsNil() {
        let queue = HandOffQueue<String>(capacity: 8)
        queue.put("a")
        queue.put("b")
        queue.close()
        #expect(queue.take() == "a")
        #expect(queue.take() == "b")
        #expect(queue.take() == nil)
        #expect(queue.take() == nil)
    }

    @Test func takeWaitsForAnElementInsteadOfReturningEarly() {
        let queue = HandOffQueue<Int>(capacity: 1)
        let got = Mutex<Int?>(nil)
        let consumer = DispatchGroup()
        spawn(consumer) { let value = queue.take(); got.withLock { $0 = value } }
        Thread.sleep(forTimeInterval: 0.05)
        #expect(got.withLock { $0 } == nil)
        queue.put(42)
        consumer.wait()
        #expect(got.withLock { $0 } == 42)
    }
}
