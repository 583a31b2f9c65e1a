import CLinux
import Foundation

/// Writes one restored file front to back through an aligned staging buffer with `O_DIRECT`, bypassing the page
/// cache, and leaves all-zero 4 KiB blocks unwritten so that runs of zeros become holes.
///
/// Why: copying a restore's bytes into the page cache was a fifth of its CPU on this machine (kernel
/// `copy_folio_from_iter_atomic`), and a restore of a whole server would push the websites' hot files out of the
/// cache. Only large files take this path (see `RestorePlan`): a small file written directly would wait for the disk
/// once per file. Where the filesystem refuses `O_DIRECT`, the same aligned writes go through the page cache.
/// Used by one thread at a time, so not Sendable.
final class DirectRestoreOutput {
    static let alignment = DirectFileWriter.alignment
    private let descriptor: Int32
    private let what: String
    private let buffer: UnsafeMutableRawPointer
    private let capacity = DirectFileWriter.segmentSize
    private var filled = 0
    /// File offset of `buffer`'s first byte: always a multiple of the segment size.
    private var bufferOffset: Int64 = 0
    /// End of the last byte written to the file, for the final size check.
    private var writtenEnd: Int64 = 0

    /// Switches `descriptor` (an empty file opened for writing, owned by the caller) to direct I/O when the
    /// filesystem allows it; `what` names the file in errors.
    init(descriptor: Int32, what: String) {
        self.descriptor = descriptor
        self.what = what
        let flags = fcntl(descriptor, F_GETFL)
        if flags >= 0 { _ = fcntl(descriptor, F_SETFL, flags | fleetkeep_o_direct()) }
        buffer = AlignedBufferPool.shared.take()
    }

    deinit { AlignedBufferPool.shared.give(buffer) }

    /// Bytes appended so far: the file's size once `finish` returns.
    private(set) var size: Int64 = 0

    func append(_ bytes: UnsafeRawBufferPointer) throws {
        var index = 0
        while index < bytes.count {
            let count = min(capacity - filled, bytes.count - index)
            (buffer + filled).copyMemory(from: bytes.baseAddress! + index, byteCount: count)
            filled += count
            size += Int64(count)
            index += count
            if filled == capacity { try flush(length: capacity) }
        }
    }

    /// Writes what is staged, padded with zeros to the alignment, and sets the file's exact size.
    func finish() throws {
        if filled > 0 {
            let padded = (filled + Self.alignment - 1) / Self.alignment * Self.alignment
            (buffer + filled).initializeMemory(as: UInt8.self, repeating: 0, count: padded - filled)
            try flush(length: padded)
        }
        guard writtenEnd != size else { return }
        guard ftruncate(descriptor, off_t(size)) == 0 else {
            throw RepositoryError("cannot set the size of \(what): \(String(cString: strerror(errno)))")
        }
    }

    private func flush(length: Int) throws {
        var start = 0
        while start < length {
            while start < length && isZeroBlock(at: start) { start += Self.alignment }
            var end = start
            while end < length && !isZeroBlock(at: end) { end += Self.alignment }
            if end > start { try writeDirect(from: start, to: end) }
            start = end
        }
        bufferOffset += Int64(length)
        filled = 0
    }

    private func writeDirect(from start: Int, to end: Int) throws {
        var done = start
        while done < end {
            let wrote = pwrite(descriptor, buffer + done, end - done, off_t(bufferOffset) + off_t(done))
            if wrote < 0 {
                let code = errno
                if code == EINTR { continue }
                let flags = fcntl(descriptor, F_GETFL)
                if code == EINVAL, flags >= 0, flags & fleetkeep_o_direct() != 0 {
                    // The filesystem took the flag but refuses this write: the rest goes through the page cache.
                    _ = fcntl(descriptor, F_SETFL, flags & ~fleetkeep_o_direct())
                    continue
                }
                throw restoreWriteFailure(what, errno: code)
            }
            done += wrote
        }
        writtenEnd = bufferOffset + Int64(end)
    }

    private func isZeroBlock(at offset: Int) -> Bool {
        isZero(UnsafeRawBufferPointer(start: buffer + offset, count: Self.alignment))
    }
}
