import Foundation

/// A bounded first-in, first-out hand-off from one producer to several consumers. The producer waits while the queue
/// is full, so what is in flight (open file descriptors, in a restore) stays bounded; consumers wait while it is empty
/// and get nil once it is closed and drained.
final class HandOffQueue<Element>: @unchecked Sendable {
    // @unchecked: `items`, `head` and `closed` are only touched with `condition` locked.
    private let condition = NSCondition()
    private var items: [Element?] = []
    private var head = 0
    private var closed = false
    private let capacity: Int

    init(capacity: Int) {
        self.capacity = max(capacity, 1)
    }

    /// Waits for room, then appends `element`.
    func put(_ element: Element) {
        condition.lock()
        defer { condition.unlock() }
        precondition(!closed, "put after close")
        while items.count - head >= capacity { condition.wait() }
        items.append(element)
        condition.broadcast()
    }

    /// The oldest element, waiting for one; nil once the queue is closed and empty.
    func take() -> Element? {
        condition.lock()
        defer { condition.unlock() }
        while head == items.count && !closed { condition.wait() }
        guard head < items.count else { return nil }
        let element = items[head]
        items[head] = nil
        head += 1
        if head == items.count {
            items.removeAll(keepingCapacity: true)
            head = 0
        }
        condition.broadcast()
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
