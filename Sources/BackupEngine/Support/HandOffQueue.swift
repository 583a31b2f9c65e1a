import Foundation

/// A bounded first-in, first-out hand-off from one producer to several consumers. The producer waits while the queue
/// is full, so what is in flight (open file descriptors, in a restore) stays bounded; consumers wait while it is empty
/// and get nil once it is closed and drained.
final class HandOffQueue<Element>: @unchecked Sendable {
    // @unchecked: every stored var is only touched with `condition` locked.
    private let condition = NSCondition()
    private var items: [Element?] = []
    private var head = 0
    private var closed = false
    private var waitingConsumers = 0
    private var producerWaiting = false
    private let capacity: Int

    init(capacity: Int) {
        self.capacity = max(capacity, 1)
    }

    private var count: Int { items.count - head }

    /// Waits for room, then appends `element`. A full queue makes the producer wait until it is half empty, so it
    /// wakes once per half a queue rather than once per element (33,000 sleeps and wake-ups for the files of the
    /// restore benchmark cost more user time than the hand-off saved).
    func put(_ element: Element) {
        condition.lock()
        defer { condition.unlock() }
        precondition(!closed, "put after close")
        while count >= capacity {
            producerWaiting = true
            condition.wait()
        }
        items.append(element)
        if waitingConsumers > 0 { condition.broadcast() }
    }

    /// The oldest element, waiting for one; nil once the queue is closed and empty.
    func take() -> Element? {
        condition.lock()
        defer { condition.unlock() }
        while count == 0 && !closed {
            waitingConsumers += 1
            condition.wait()
            waitingConsumers -= 1
        }
        guard count > 0 else { return nil }
        let element = items[head]
        items[head] = nil
        head += 1
        if head == items.count {
            items.removeAll(keepingCapacity: true)
            head = 0
        }
        if producerWaiting && count <= capacity / 2 {
            producerWaiting = false
            condition.broadcast()
        }
        return element
    }

    /// No more elements will come: consumers drain what is left, then get nil.
    func close() {
        condition.lock()
        closed = true
        condition.broadcast()
        condition.unlock()
    }
}
