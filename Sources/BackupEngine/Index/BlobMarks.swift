/// A set of blob ids drawn from one loaded index (what `prune` keeps, what a copy needs): a blob the index cache
/// lists costs one bit at its record's position, so marking every blob of a ten-million-blob repository takes
/// 1.25 MB instead of the 500 MB or so of a `Set<BlobID>`. Ids the cache does not list (added since it was built, or
/// missing from the index altogether) go into a small set.
struct BlobMarks: Sequence {
    private let cache: IndexCacheFile?
    /// Entries added in memory since the cache was built: they take precedence over the cache, as in `IndexedBlobs`.
    private let recent: [BlobID: BlobLocation]
    private var bits: [UInt64]
    private var others = Set<BlobID>()
    private(set) var count = 0

    init(index: Repository.LoadedIndex) {
        cache = index.blobs.cache
        recent = index.blobs.recent
        bits = [UInt64](repeating: 0, count: ((cache?.count ?? 0) + 63) / 64)
    }

    /// The cache position that stands for `id`, nil when `id` is marked in `others`.
    private func position(of id: BlobID) -> Int? {
        guard recent[id] == nil, let cache else { return nil }
        return cache.position(of: id)
    }

    /// Marks `id`; false when it was marked already.
    @discardableResult
    mutating func insert(_ id: BlobID) -> Bool {
        guard let position = position(of: id) else {
            let inserted = others.insert(id).inserted
            if inserted { count += 1 }
            return inserted
        }
        let mask: UInt64 = 1 << UInt64(position % 64)
        guard bits[position / 64] & mask == 0 else { return false }
        bits[position / 64] |= mask
        count += 1
        return true
    }

    mutating func formUnion<S: Sequence>(_ ids: S) where S.Element == BlobID {
        for id in ids { insert(id) }
    }

    /// How many marked ids the index does not have at all.
    var countOutsideIndex: Int { others.reduce(0) { $0 + (recent[$1] == nil ? 1 : 0) } }

    func contains(_ id: BlobID) -> Bool {
        guard let position = position(of: id) else { return others.contains(id) }
        return bits[position / 64] & (1 << UInt64(position % 64)) != 0
    }

    func makeIterator() -> AnyIterator<BlobID> {
        var word = 0, pending: UInt64 = 0
        var othersIterator = others.makeIterator()
        return AnyIterator {
            if let cache {
                while pending == 0 && word < bits.count {
                    pending = bits[word]
                    word += 1
                }
                if pending != 0 {
                    let bit = pending.trailingZeroBitCount
                    pending &= pending - 1
                    return cache.id(at: (word - 1) * 64 + bit)
                }
            }
            return othersIterator.next()
        }
    }
}
