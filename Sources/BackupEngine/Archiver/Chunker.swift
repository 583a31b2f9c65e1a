import Crypto

/// Content-defined chunk sizes. Boundaries depend on content, so an insertion shifts only nearby chunks.
public struct ChunkerParameters: Sendable, Equatable {
    public let minimum: Int
    public let average: Int
    public let maximum: Int

    public init(minimum: Int, average: Int, maximum: Int) {
        precondition(minimum > 0 && minimum < average && average < maximum && average.nonzeroBitCount == 1)
        self.minimum = minimum
        self.average = average
        self.maximum = maximum
    }

    /// Website files: 512 KiB / 1 MiB / 8 MiB, like restic. Large chunks keep the index small; most hosting files
    /// are smaller than the minimum anyway and become one chunk each.
    public static let files = ChunkerParameters(minimum: 512 << 10, average: 1 << 20, maximum: 4 << 20)
    /// Database dumps: 16 KiB / 64 KiB / 256 KiB. A day of updates touches rows all over a table, so small chunks
    /// would not help: at 2 KiB the list of chunk ids alone cost 1.6% of the dump per day. Instead every new chunk
    /// is stored as a zstd delta against the chunk at the same place in the previous dump (see
    /// `PackWriter.add(id:plaintext:base:compressor:)`), and large chunks keep the id list and the index small.
    public static let streams = ChunkerParameters(minimum: 16 << 10, average: 64 << 10, maximum: 256 << 10)
}

/// FastCDC with normalized chunking (Xia et al., 2016): a gear rolling hash, a stricter mask before the average
/// size and a looser one after it, which narrows the size distribution around the average.
public struct Chunker: Sendable {
    let gear: [UInt64]
    public let parameters: ChunkerParameters
    private let strictMask: UInt64
    private let looseMask: UInt64

    /// The gear table is derived from the repository's secret chunker seed, so boundaries do not leak content.
    public init(seed: [UInt8], parameters: ChunkerParameters) {
        var table = [UInt64]()
        table.reserveCapacity(256)
        for index in 0..<256 {
            let digest = SHA256.hash(seed + [UInt8(index)])
            table.append(digest.prefix(8).reduce(0) { $0 << 8 | UInt64($1) })
        }
        gear = table
        self.parameters = parameters
        let bits = parameters.average.trailingZeroBitCount
        // Masks use the high bits: with a left-shifting gear hash they depend on the last 64 bytes seen.
        strictMask = ((1 << UInt64(bits + 1)) - 1) << UInt64(64 - bits - 1)
        looseMask = ((1 << UInt64(bits - 1)) - 1) << UInt64(64 - bits + 1)
    }

    /// Length of the next chunk at the start of `data`, or nil when more data is needed to decide
    /// (`isFinal` says no more data will come).
    public func boundary(in data: UnsafeRawBufferPointer, isFinal: Bool) -> Int? {
        let count = data.count
        if count <= parameters.minimum { return isFinal ? count : nil }
        if count < parameters.maximum && !isFinal {
            // Scan anyway: a boundary found before the end is final regardless of what follows.
            if let cut = scan(data, limit: count), cut < count { return cut }
            return nil
        }
        return scan(data, limit: min(count, parameters.maximum)) ?? min(count, parameters.maximum)
    }

    private func scan(_ data: UnsafeRawBufferPointer, limit: Int) -> Int? {
        let bytes = data.bindMemory(to: UInt8.self).baseAddress!
        var hash: UInt64 = 0
        var index = parameters.minimum
        let normal = min(parameters.average, limit)
        return gear.withUnsafeBufferPointer { table -> Int? in
            while index < normal {
                hash = (hash << 1) &+ table[Int(bytes[index])]
                if hash & strictMask == 0 { return index + 1 }
                index += 1
            }
            while index < limit {
                hash = (hash << 1) &+ table[Int(bytes[index])]
                if hash & looseMask == 0 { return index + 1 }
                index += 1
            }
            return limit == parameters.maximum ? limit : nil
        }
    }
}
