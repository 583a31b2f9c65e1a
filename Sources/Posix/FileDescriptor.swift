import Glibc

/// An open file that closes itself: the descriptor is closed exactly once, when its owner lets go of it (or by
/// `close`, which reports what `close(2)` says). It cannot be copied, so no second owner can close it early or use
/// it after it was closed and its number given to another file.
///
/// Every open adds `O_CLOEXEC`: a descriptor inherited by a child (mariadb-dump, ssh) would keep the file open, and
/// a deleted temporary file's space in use, for as long as the child runs.
public struct FileDescriptor: ~Copyable, Sendable {
    /// The descriptor number, for the calls this type does not wrap. Valid while this value exists; -1 once closed.
    public private(set) var rawValue: Int32
    /// The file's path, named in errors.
    public let path: String

    /// Takes ownership of `rawValue`, an open descriptor of `path`.
    public init(adopting rawValue: Int32, path: String) {
        self.rawValue = rawValue
        self.path = path
    }

    /// Opens `path` with `flags` (`O_RDONLY`, `O_WRONLY | O_CREAT | O_EXCL` …); `permissions` is used when the
    /// file is created.
    public static func open(_ path: String, _ flags: Int32, permissions: mode_t = 0) throws(Errno) -> FileDescriptor {
        while true {
            let raw = Glibc.open(path, flags | O_CLOEXEC, permissions)
            if raw >= 0 { return FileDescriptor(adopting: raw, path: path) }
            // Opening a FIFO or a file on a network file system waits, and a signal can end the wait.
            if errno != EINTR { throw Errno.current("open", path: path) }
        }
    }

    /// Reads up to `buffer.count` bytes at the current offset; 0 at the end of the file.
    public func read(into buffer: UnsafeMutableRawBufferPointer) throws(Errno) -> Int {
        guard let base = buffer.baseAddress, buffer.count > 0 else { return 0 }
        while true {
            let got = Glibc.read(rawValue, base, buffer.count)
            if got >= 0 { return got }
            if errno != EINTR { throw Errno.current("read", path: path) }
        }
    }

    /// Reads up to `buffer.count` bytes at `offset` (the current offset does not move); 0 at the end of the file.
    /// Safe to call from several threads at once.
    public func read(into buffer: UnsafeMutableRawBufferPointer, at offset: Int) throws(Errno) -> Int {
        guard let base = buffer.baseAddress, buffer.count > 0 else { return 0 }
        while true {
            let got = pread(rawValue, base, buffer.count, off_t(offset))
            if got >= 0 { return got }
            if errno != EINTR { throw Errno.current("read", path: path) }
        }
    }

    /// Reads exactly `count` bytes at `offset` into a new array, continuing after short reads; nil when the file ends
    /// first. Safe to call from several threads at once.
    public func read(count: Int, at offset: Int) throws(Errno) -> [UInt8]? {
        var done = 0
        // The initializer's closure only rethrows untyped errors: the failure is carried out of it instead.
        var failure: Errno?
        let bytes = [UInt8](unsafeUninitializedCapacity: max(count, 1)) { buffer, initialized in
            while done < count {
                do throws(Errno) {
                    let got = try read(into: UnsafeMutableRawBufferPointer(UnsafeMutableBufferPointer(rebasing: buffer[done..<count])),
                                       at: offset + done)
                    if got == 0 { break }
                    done += got
                } catch {
                    failure = error
                    break
                }
            }
            initialized = done == count ? count : 0
        }
        if let failure { throw failure }
        return done == count ? bytes : nil
    }

    /// The open file's status (`fstat`): its type, size, owner and mode as it is now, whatever its path names since.
    public func status() throws(Errno) -> stat {
        var info = stat()
        guard fstat(rawValue, &info) == 0 else { throw Errno.current("stat", path: path) }
        return info
    }

    /// Reads from the current offset to the end of the file.
    public func readToEnd() throws(Errno) -> [UInt8] {
        var bytes: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 1 << 16)
        while true {
            // withUnsafeMutableBytes only rethrows untyped errors: the result carries the Errno across.
            let got = try chunk.withUnsafeMutableBytes { buffer in
                Result { () throws(Errno) -> Int in try read(into: buffer) }
            }.get()
            if got == 0 { return bytes }
            bytes += chunk[0..<got]
        }
    }

    /// Writes all of `bytes` at the current offset, continuing after short writes and signals.
    public func write(all bytes: UnsafeRawBufferPointer) throws(Errno) {
        guard let base = bytes.baseAddress else { return }
        var done = 0
        while done < bytes.count {
            let wrote = Glibc.write(rawValue, base + done, bytes.count - done)
            if wrote >= 0 {
                done += wrote
            } else if errno != EINTR {
                throw Errno.current("write", path: path)
            }
        }
    }

    /// Writes all of `bytes` at `offset` (the current offset does not move), continuing after short writes and
    /// signals.
    public func write(all bytes: UnsafeRawBufferPointer, at offset: Int) throws(Errno) {
        guard let base = bytes.baseAddress else { return }
        var done = 0
        while done < bytes.count {
            let wrote = pwrite(rawValue, base + done, bytes.count - done, off_t(offset + done))
            if wrote >= 0 {
                done += wrote
            } else if errno != EINTR {
                throw Errno.current("write", path: path)
            }
        }
    }

    /// Writes all of `bytes` at the current offset, continuing after short writes and signals.
    public func write(all bytes: [UInt8]) throws(Errno) {
        // withUnsafeBytes only rethrows untyped errors: the result carries the Errno across.
        try bytes.withUnsafeBytes { buffer in Result { () throws(Errno) in try write(all: buffer) } }.get()
    }

    /// Waits until the file's data and metadata are on the disk (`fsync`).
    public func sync() throws(Errno) {
        while fsync(rawValue) != 0 {
            if errno != EINTR { throw Errno.current("fsync", path: path) }
        }
    }

    /// Sets the file's mode bits exactly, whatever the umask removed when it was created.
    public func setPermissions(_ permissions: mode_t) throws(Errno) {
        guard fchmod(rawValue, permissions) == 0 else { throw Errno.current("chmod", path: path) }
    }

    /// Closes now and reports a failure (a network file system may report a lost write only here). The
    /// descriptor is released even when this throws; `close` is never retried, since on Linux a retry could close
    /// a descriptor another thread just opened.
    public consuming func close() throws(Errno) {
        let raw = rawValue
        rawValue = -1
        guard Glibc.close(raw) == 0 else { throw Errno.current("close", path: path) }
    }

    deinit {
        if rawValue >= 0 { Glibc.close(rawValue) }
    }
}
