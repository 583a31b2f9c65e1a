import Foundation
import Synchronization

/// A request handed from a libmicrohttpd I/O thread to a handler thread while its connection is suspended.
///
/// `@unchecked Sendable`: the connection and `state` are owned by exactly one side at a time. The I/O thread
/// suspends the connection before submitting the job and never touches either again until libmicrohttpd calls it
/// back after `MHD_resume_connection`, which the worker calls last (MHD's internal lock orders the hand-back).
struct HandlerJob: @unchecked Sendable {
    let handler: HTTPHandler
    let request: HTTPRequest
    let state: RequestState
    let connection: OpaquePointer
}

/// A fixed set of threads running route handlers, so a slow handler never stalls other connections that happen to
/// be served by the same libmicrohttpd I/O thread (MHD's pool threads accept in bursts and keep connections).
final class HandlerPool: Sendable {
    private struct Queue {
        var jobs: [HandlerJob] = []
        var head = 0
        var stopping = false
    }

    private let queue = Mutex(Queue())
    private let available = DispatchSemaphore(value: 0)
    private let threadCount: Int

    init(threads: Int, name: String, run: @escaping @Sendable (HandlerJob) -> Void) {
        threadCount = threads
        for index in 0..<threads {
            let thread = Thread { [self] in
                while let job = next() { run(job) }
            }
            thread.name = "\(name)-\(index)"
            thread.start()
        }
    }

    func submit(_ job: HandlerJob) {
        queue.withLock { $0.jobs.append(job) }
        available.signal()
    }

    /// Lets the threads exit once the queue is empty.
    func stop() {
        queue.withLock { $0.stopping = true }
        for _ in 0..<threadCount { available.signal() }
    }

    private func next() -> HandlerJob? {
        while true {
            available.wait()
            let job: HandlerJob?? = queue.withLock { queue in
                if queue.head < queue.jobs.count {
                    let job = queue.jobs[queue.head]
                    queue.head += 1
                    if queue.head == queue.jobs.count {
                        queue.jobs.removeAll(keepingCapacity: true)
                        queue.head = 0
                    } else if queue.head >= 1024 {
                        queue.jobs.removeFirst(queue.head)
                        queue.head = 0
                    }
                    return .some(job)
                }
                return queue.stopping ? .some(nil) : nil
            }
            if let job { return job }
        }
    }
}
