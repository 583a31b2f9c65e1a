import CLinux
import Dispatch
import Foundation

/// The stack of every thread that walks trees: a directory tree is walked one call per level, and a level takes a
/// few kilobytes of stack in a debug build (see `TreeScanner.maximumDepth`). Only the pages used are ever resident.
public let threadStackSize = 16 << 20

/// Starts a thread that names itself `name` where ps, top and gdb show it. By the thread itself: Foundation on
/// Linux drops a name given before the thread runs (and a fresh thread can run before `Thread.name` reaches it), and
/// the kernel keeps 15 bytes of a name. A refused name only costs whoever looks, so it is not an error.
public func startNamedThread(_ name: String, stackSize: Int? = nil, _ body: @escaping @Sendable () -> Void) {
    let thread = Thread {
        _ = fleetkeep_set_thread_name(name)
        body()
    }
    if let stackSize { thread.stackSize = stackSize }
    thread.start()
}

extension Repository {
    /// Runs `body(lane)` for every lane on a thread of its own, named `<name>-<lane>` after what the threads do,
    /// and waits for all of them. Not `DispatchQueue.concurrentPerform`: it runs one iteration per core at a time, so
    /// on two cores the third and fourth connections only started once the first two had emptied the queue.
    /// Keep `name` to 12 bytes: Linux keeps 15 bytes of a thread's name, and a longer one loses its lane number.
    public static func onThreads(_ count: Int, named name: String, _ body: @escaping @Sendable (Int) -> Void) {
        let group = DispatchGroup()
        for lane in 0..<count {
            group.enter()
            startNamedThread("\(name)-\(lane)", stackSize: threadStackSize) {
                body(lane)
                group.leave()
            }
        }
        group.wait()
    }
}
