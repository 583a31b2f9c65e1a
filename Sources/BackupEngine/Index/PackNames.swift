import Crypto
import Foundation

/// Pack names by pack number (the number an index record stores instead of the 32-byte name).
///
/// The names the index cache covers are read from its mapping, and looked up by name through the cache's table of
/// pack numbers sorted by name; only packs added since the cache was written are held in memory. Why: at about
/// 150 bytes per pack for a name and its reverse-lookup entry, a repository of a million packs (8 TB) would
/// otherwise hold 150 MB just to name them.
struct PackNames: Sequence {
    private(set) var cache: IndexCacheFile?
    private var added: [String] = []
    private var addedNumbers: [String: Int32] = [:]

    init(cache: IndexCacheFile? = nil) { self.cache = cache }

    private var cached: Int { cache?.packCount ?? 0 }
    var count: Int { cached + added.count }
    /// Names held in memory: those added since the cache was written.
    var inMemoryCount: Int { added.count }

    subscript(number: Int) -> String {
        number < cached ? cache!.packName(number) : added[number - cached]
    }

    func number(of name: String) -> Int32? {
        if let number = addedNumbers[name] { return number }
        guard let cache, let bytes = Hex.decode(name), bytes.count == 32 else { return nil }
        return cache.packNumber(of: bytes)
    }

    /// Adds a name not known yet and returns its number.
    mutating func append(_ name: String) -> Int32 {
        let number = Int32(count)
        added.append(name)
        addedNumbers[name] = number
        return number
    }

    func makeIterator() -> AnyIterator<String> {
        var number = 0
        return AnyIterator {
            guard number < count else { return nil }
            defer { number += 1 }
            return self[number]
        }
    }

    /// Pack numbers in name order, for the cache's lookup table: the cache's own table merged with the names added
    /// since (sorted here; they are few), so a large repository's names are never all in memory at once.
    func numbersInNameOrder() -> AnyIterator<Int32> {
        let sortedAdded = added.indices.sorted { added[$0] < added[$1] }.map { (name: Hex.decode(added[$0]) ?? [], number: Int32(cached + $0)) }
        var cachePosition = 0, addedPosition = 0
        let cache = self.cache, cachedCount = cached
        return AnyIterator {
            let fromCache = cachePosition < cachedCount ? cache!.packNumber(inNameOrderAt: cachePosition) : nil
            let fromAdded = addedPosition < sortedAdded.count ? sortedAdded[addedPosition] : nil
            switch (fromCache, fromAdded) {
            case (nil, nil): return nil
            case (let number?, nil):
                cachePosition += 1
                return number
            case (nil, let entry?):
                addedPosition += 1
                return entry.number
            case (let number?, let entry?):
                if cache!.packNameBytes(Int(number)).lexicographicallyPrecedes(entry.name) {
                    cachePosition += 1
                    return number
                }
                addedPosition += 1
                return entry.number
            }
        }
    }
}
