import CLinux
import Glibc

/// Where a sparse file's data lies, asked of the file system with `SEEK_DATA`/`SEEK_HOLE` (Linux 3.1; ext4, XFS,
/// btrfs and tmpfs answer them). An account owner can make a file of terabytes that takes no space at all
/// (`truncate -s 15T`); read whole, its zeros would keep the backup busy for hours every night. Only the data
/// extents are read, and the tree records where they go (`TreeNode.dataExtents`).
enum SparseFile {
    /// Smaller files are read whole: what a hole saves there is less than the two seeks per extent cost.
    static let minimumSize: Int64 = 1 << 20
    /// Holes smaller than this are read as the zeros they are, so a file with many small holes (a database file,
    /// say) is not cut into as many extents.
    static let minimumHole: Int64 = 64 << 10
    /// At most this many extents per file: they are kept in memory and in the tree. A file with more data regions
    /// (at least 4 GiB of allocated blocks, one 4 KiB block each) has its smaller holes read as zeros instead.
    static let maximumExtents = 1 << 20

    /// The file's data extents, in order; nil when the file is to be read whole: it is small, it has no hole worth
    /// skipping, or the file system cannot tell (the first call fails, and reading whole is always correct).
    /// `status` is the open file's `fstat`. The file's position is left at 0 either way. Throws `Changed` when the
    /// map moved under the calls (a region punched or filled between two of them): reading such a file whole would
    /// let its owner make every backup read up to its whole size in zeros, so the caller maps it again instead.
    static func dataExtents(_ descriptor: Int32, status: stat, maximumExtents: Int = maximumExtents) throws(Changed) -> [FileExtent]? {
        let size = Int64(status.st_size)
        // st_blocks counts 512-byte units actually allocated: a file with no hole has at least its size in them.
        // Checked before any seek, so a dense file (nearly every file) costs no system call here.
        guard size >= minimumSize, Int64(status.st_blocks) <= (size - minimumHole) / 512 else { return nil }
        defer { _ = lseek(descriptor, 0, SEEK_SET) }
        var extents: [FileExtent] = []
        var position: Int64 = 0
        while position < size {
            let data = Int64(lseek(descriptor, off_t(position), fleetkeep_seek_data()))
            if data < 0 {
                // ENXIO: no data from `position` on, so the rest is one hole. Anything else at the first call: the
                // file system does not map holes; later, the file changed.
                if errno == ENXIO { break }
                if position == 0 { return nil }
                throw Changed()
            }
            guard data >= position else { throw Changed() }
            if data >= size { break }
            let holeAt = Int64(lseek(descriptor, off_t(data), fleetkeep_seek_hole()))
            // A hole where data just was: punched since the call before.
            guard holeAt != data else { throw Changed() }
            // Negative: no offset to give (tmpfs answers 2^63 for a file of the largest size); the data runs on to the end.
            let end = holeAt < 0 ? size : min(holeAt, size)
            let previousEnd = extents.last?.end ?? 0
            if data - previousEnd < minimumHole {
                // Too small a hole to skip (or the start of the file): the extent grows over it.
                if extents.isEmpty {
                    extents.append(FileExtent(offset: 0, length: end))
                } else {
                    extents[extents.count - 1].length = end - extents[extents.count - 1].offset
                }
            } else {
                extents.append(FileExtent(offset: data, length: end - data))
            }
            if extents.count > maximumExtents { extents = halved(extents) }
            position = end
        }
        // A small hole at the end is read too.
        if let last = extents.last, size - last.end < minimumHole {
            extents[extents.count - 1].length = size - last.offset
        }
        if extents.count == 1, extents[0].offset == 0, extents[0].length == size { return nil }
        return extents
    }

    /// The file's map of data and holes changed while it was read.
    struct Changed: Error {}

    /// About half as many extents: of each pair of neighbouring holes, the smaller one is read as zeros, so the
    /// larger holes, which save the most, stay.
    static func halved(_ extents: [FileExtent]) -> [FileExtent] {
        let holes = extents.count - 1
        guard holes >= 2 else { return extents }
        var mergedAfter = [Bool](repeating: false, count: holes)
        for pair in stride(from: 0, to: holes - 1, by: 2) {
            let first = extents[pair + 1].offset - extents[pair].end
            let second = extents[pair + 2].offset - extents[pair + 1].end
            mergedAfter[first <= second ? pair : pair + 1] = true
        }
        var result = [extents[0]]
        result.reserveCapacity(extents.count / 2 + 1)
        for index in 1..<extents.count {
            if mergedAfter[index - 1] {
                result[result.count - 1].length = extents[index].end - result[result.count - 1].offset
            } else {
                result.append(extents[index])
            }
        }
        return result
    }
}
