import Crypto
import Foundation

/// One line per entry under `root` (and `root` itself unless `includingRoot` is false), found without following
/// symlinks: relative path, type, mode, owner, group, size (not of a directory: that depends on its history),
/// SHA-256 of a regular file's content, a symlink's target.
/// Equal lists mean nothing under `root` changed, times aside; tests compare them before and after a restore to prove
/// it wrote nothing outside its target.
public func fileTreeManifest(_ root: String, includingRoot: Bool = true) -> [String] {
    var lines: [String] = []
    func visit(_ relative: String) {
        let path = relative.isEmpty ? root : root + "/" + relative
        var info = stat()
        guard lstat(path, &info) == 0 else {
            lines.append("\(relative) missing")
            return
        }
        let type: String
        var detail = ""
        switch info.st_mode & S_IFMT {
        case S_IFDIR: type = "dir"
        case S_IFREG:
            type = "file"
            detail = "\(info.st_size) " + (FileManager.default.contents(atPath: path).map { SHA256.hex($0) } ?? "unreadable")
        case S_IFLNK:
            type = "link"
            detail = (try? FileManager.default.destinationOfSymbolicLink(atPath: path)) ?? "unreadable"
        default: type = "other"
        }
        if !relative.isEmpty || includingRoot {
            lines.append("\(relative.isEmpty ? "." : relative) \(type) \(String(info.st_mode & 0o7777, radix: 8)) \(info.st_uid):\(info.st_gid) \(detail)")
        }
        if info.st_mode & S_IFMT == S_IFDIR {
            let names = (try? FileManager.default.contentsOfDirectory(atPath: path)) ?? []
            for name in names.sorted() { visit(relative.isEmpty ? name : relative + "/" + name) }
        }
    }
    visit("")
    return lines
}

/// The lines of two manifests that the other lacks ("- " only in `before`, "+ " only in `after`): empty when they
/// are equal, and short enough to read in a failed expectation when they are not.
public func manifestDifference(_ before: [String], _ after: [String]) -> [String] {
    let old = Set(before), new = Set(after)
    return before.filter { !new.contains($0) }.map { "- " + $0 } + after.filter { !old.contains($0) }.map { "+ " + $0 }
}

/// Gives `path`, and everything under it when it is a directory, to `uid`:`gid`, without following symlinks (a
/// symlink itself changes owner).
public func changeOwner(_ path: String, uid: uid_t, gid: gid_t) {
    _ = lchown(path, uid, gid)
    var info = stat()
    guard lstat(path, &info) == 0, info.st_mode & S_IFMT == S_IFDIR else { return }
    for name in (try? FileManager.default.contentsOfDirectory(atPath: path)) ?? [] {
        changeOwner(path + "/" + name, uid: uid, gid: gid)
    }
}

/// The file-system user ids (`fsuid`, the fourth `Uid:` field in /proc) of this process's threads right now.
public func threadFilesystemUIDs() -> [uid_t] {
    let tasks = (try? FileManager.default.contentsOfDirectory(atPath: "/proc/self/task")) ?? []
    return tasks.compactMap { task in
        guard let status = try? String(contentsOfFile: "/proc/self/task/\(task)/status", encoding: .utf8),
              let line = status.split(separator: "\n").first(where: { $0.hasPrefix("Uid:") }) else { return nil }
        let fields = line.split(whereSeparator: { $0 == "\t" || $0 == " " })
        return fields.count == 5 ? uid_t(fields[4]) : nil
    }
}

/// The calling thread's file-system user id (`fsuid`).
public func currentThreadFilesystemUID() -> uid_t? {
    guard let status = try? String(contentsOfFile: "/proc/thread-self/status", encoding: .utf8),
          let line = status.split(separator: "\n").first(where: { $0.hasPrefix("Uid:") }) else { return nil }
    let fields = line.split(whereSeparator: { $0 == "\t" || $0 == " " })
    return fields.count == 5 ? uid_t(fields[4]) : nil
}

/// A thread that runs `body` over and over until `stop` is called (which waits for it to end): an attacker racing
/// the code under test.
public final class RacingThread: @unchecked Sendable {
    private let lock = NSLock()
    private var stopping = false
    private let ended = DispatchSemaphore(value: 0)

    public init(_ body: @escaping @Sendable () -> Void) {
        let thread = Thread { [self] in
            while !self.isStopping { body() }
            self.ended.signal()
        }
        thread.start()
    }

    private var isStopping: Bool { lock.withLock { stopping } }

    public func stop() {
        lock.withLock { stopping = true }
        ended.wait()
    }
}
