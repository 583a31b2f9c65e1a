extension Repository.LoadedIndex {
    /// Calls `body` for every pack, in pack-number order, with the entries the index lists in it (possibly none).
    /// Packs are taken a batch at a time, so at most about `limit` entries are in memory at once (a pack with more is
    /// a batch of its own); each batch costs one pass over the index cache, which is mapped and read in order.
    /// This is how `verify` and `prune` look at every pack without holding the whole index in memory.
    func forEachPack(limit: Int = IndexedBlobs.foldLimit,
                     _ body: (_ number: Int32, _ entries: [(id: BlobID, location: BlobLocation)]) throws -> Void) rethrows {
        let packCount = packs.count
        var counts = [Int](repeating: 0, count: packCount)
        for (_, location) in blobs where Int(location.pack) < packCount { counts[Int(location.pack)] += 1 }
        var start = 0
        while start < packCount {
            var end = start, total = 0
            while end < packCount && (end == start || total + counts[end] <= limit) {
                total += counts[end]
                end += 1
            }
            var batch = [[(id: BlobID, location: BlobLocation)]](repeating: [], count: end - start)
            if total > 0 {
                for (id, location) in blobs where Int(location.pack) >= start && Int(location.pack) < end {
                    batch[Int(location.pack) - start].append((id, location))
                }
            }
            for offset in batch.indices {
                let entries = batch[offset]
                batch[offset] = []
                try body(Int32(start + offset), entries)
            }
            start = end
        }
    }
}
