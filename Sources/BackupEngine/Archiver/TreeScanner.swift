import CLinux
import Crypto
import Foundation
import Posix
import Zstd

/// Lists the directories of a tree ahead of the backup walk, on a few threads, and asks the kernel to read the next
/// files' data before the walk gets to them.
///
/// Why: on a cold page cache the serial walk waited for one disk read at a time (a directory block, an inode, a
/// file's first pages) while the disk could serve many at once. Here listers each open, list and `fstatat` one
/// directory at a time, and a read-ahead thread follows the walk's order and calls
/// `posix_fadvise(POSIX_FADV_WILLNEED)` on the files the walk will read, so their pages are on the way while the
/// current file is chunked and hashed. Only `initialThreads` listers start; the rest (up to `threads`) and the
/// read-ahead thread start when a lister finds it had to read from the disk, since on a warm cache they would only
/// take the cores from the walk and the workers.
///
/// What stays the same as the serial walk: the walk (`BackupJob.directory`) still visits entries in the same order
/// and builds every tree itself, so snapshots, deduplication and error order do not depend on which lister finished
/// first; the listers only fill in listings the walk then takes. Every directory is opened relative to its parent's
/// descriptor with `O_NOFOLLOW|O_DIRECTORY` (a directory swapped for a link cannot lead outside the root), every
/// entry is looked at with `fstatat(AT_SYMLINK_NOFOLLOW)`.
///
/// Bounds: at most `directoryWindow` directories listed and not yet taken by the walk (each holds its descriptor and
/// listing), and at most `readAheadBytes` of file data advised ahead of the walk. The walk never waits for a lister
/// that is held back by a bound: a directory no lister has started is listed by the walk itself.
final class TreeScanner: @unchecked Sendable {
    /// Directories below this depth are not backed up (named in the backup's errors). Each level takes a few
    /// hundred bytes of the walk's stack in a release build and a few kilobytes in a debug one (`threadStackSize`),
    /// and an open descriptor while the walk is below it: with a low limit on open files (the programs raise theirs
    /// to the hard limit at start), the depth is cut to fit in half of what is left after a reserve for the packs
    /// and the other accounts' files.
    static let maximumDepth = min(1000, max(64, (ResourceLimits.openFiles - 512) / 2))
    // @unchecked: every mutable field (here and in `ScannedDirectory.state`) is touched only with `condition` locked.
    struct Limits: Sendable {
        /// Listing threads per backup at most: on a cold cache they mostly wait for the disk, so more than the cores.
        var threads = 8
        /// Listing threads to start with. The rest, and the read-ahead thread, start once a lister finds that it
        /// had to read from the disk: on a warm page cache extra threads only compete for the cores (and open every
        /// file a second time to advise a read that is not needed).
        var initialThreads = 2
        var directoryWindow = 256
        /// 0: no read-ahead thread.
        var readAheadBytes = 32 << 20
    }

    struct Entry {
        /// The name for trees and messages, and its bytes, NUL-terminated, for the system calls.
        let name: String
        let bytes: [CChar]
        /// `fstatat`'s result, or the errno it failed with (then `info` is meaningless).
        let info: stat
        let statError: Int32
        /// For a directory: its own node, listed ahead.
        var child: ScannedDirectory?
        /// The parent snapshot's entry of the same name, looked up here rather than by the walk, whose thread is the
        /// one every entry waits for.
        var previous: TreeNode?
    }

    struct Listing {
        let entries: [Entry]
        /// The listing's digest (`DirectoryCache.listingDigest`); nil when the directory cannot be recorded.
        var digest: BlobID? = nil
        /// What the last backup recorded for this directory, when the listing is still the one it recorded.
        var recorded: DirectoryCache.Record? = nil
        /// False when the old tree was not loaded (the listing is as recorded and every subdirectory's old tree came
        /// from the cache): then `previous` is nil for every entry, and the walk loads the old tree only if it needs it.
        var oldTreeLoaded = true
    }

    /// What the walk gets for a directory.
    enum Outcome {
        case listed(Listing)
        /// It could not be opened (message: the system's reason); the serial walk recorded this and left it out.
        case unopenable(String)
    }

    private let repository: Repository
    /// The excluded paths (relative to the top), as the names to leave out of each directory: a listing looks its
    /// own directory up once instead of making and hashing the relative path of every entry.
    private let excludedNames: [String: Set<String>]
    /// The last backup's directory records (nil: none usable).
    private let cache: DirectoryCache?
    /// Whether listings get their digests, for this backup's records.
    private let recording: Bool
    private let directoryWindow: Int
    private let readAheadLimit: Int
    /// One lock over the scanner's state, and a condition per kind of waiter, woken only for what it waits for.
    /// (One NSCondition, broadcast on every change, woke all ten threads for each directory listed: 78,000 futex
    /// calls on a re-run of the benchmark, more than its `fstatat` calls.)
    private let condition = Conditions()
    private static let listers = 0, walk = 1, readAheadThread = 2, exits = 3
    /// The directory the walk waits for, and the one the read-ahead thread waits for (nil: not waiting).
    private var walkWaitsFor: ScannedDirectory?
    private var readAheadWaitsFor: ScannedDirectory?
    /// Directories waiting for a lister, the one the walk reaches first on top (a stack: children are pushed in
    /// reverse order, so listers go depth first like the walk).
    /// Weak: a directory the walk listed itself stays here until a lister pops it, and must not keep its descriptor
    /// and listing alive meanwhile (listers held back by the window would let those pile up).
    private var waiting: [WeakDirectory] = []
    private struct WeakDirectory { weak var directory: ScannedDirectory? }
    private var listedAhead = 0
    private var closed = false
    private var threadsRunning = 0
    let root: ScannedDirectory

    // Read-ahead. A file's position is the indices of the entries leading to it from the top directory: in the
    // walk's (depth-first) order, positions compare lexicographically, so the read-ahead thread can tell whether the
    // walk is past a file without walking the same directories (it skips those the walk has finished).
    /// The position of the last file the walk finished.
    private var walked: [Int] = []
    /// Files advised and not yet walked: position and bytes.
    private var advised: [(position: [Int], bytes: Int)] = []
    private var advisedBytes = 0
    private var readAheadWaiting = false
    /// Used by the walk's thread only.
    private let walkDecompressor = ZstdDecompressor()
    private let walkIDs: HMACSHA256.ThreadContext

    /// Starts listing the directory open at `descriptor` (duplicated; the caller keeps its own). `parentTree` is the
    /// parent snapshot's tree of it.
    init(descriptor: Int32, parentTree: BlobID?, repository: Repository, excludes: Set<String>, cache: DirectoryCache? = nil,
         recording: Bool = false, limits: Limits = Limits()) throws {
        let threads = limits.threads
        let own = fcntl(descriptor, F_DUPFD_CLOEXEC, 0)
        guard own >= 0 else { throw RepositoryError("cannot duplicate the top directory's descriptor: \(String(cString: strerror(errno)))") }
        self.repository = repository
        walkIDs = repository.idKey.makeThreadContext()
        excludedNames = Self.namesByDirectory(excludes)
        self.cache = cache
        self.recording = recording || cache != nil
        directoryWindow = max(1, limits.directoryWindow)
        readAheadLimit = max(0, limits.readAheadBytes)
        root = ScannedDirectory(relative: "", name: [], opener: nil, previousTree: parentTree,
                                cacheKey: DirectoryCache.key(for: "", ids: walkIDs))
        root.pendingDescriptor = own
        root.state = .opened(own)
        waiting = [WeakDirectory(directory: root)]
        maximumListers = max(1, threads)
        condition.lock()
        startListers(min(maximumListers, max(1, limits.initialThreads)))
        if listersStarted == maximumListers { startReadAhead() }
        condition.unlock()
    }

    /// "a/b/c" leaves "c" out of "a/b"; "mail" leaves "mail" out of the top directory. Split at the bytes "/", not
    /// at Characters: a "/" followed by a combining mark is one Character, and is still a path separator.
    static func namesByDirectory(_ paths: Set<String>) -> [String: Set<String>] {
        let slash = UInt8(ascii: "/")
        var names: [String: Set<String>] = [:]
        // A path with an empty part ("/mail", "a//b", "a/") names no entry, as before this map.
        for path in paths where !path.utf8.split(separator: slash, omittingEmptySubsequences: false).contains(where: \.isEmpty) {
            if let last = path.utf8.lastIndex(of: slash) {
                let directory = String(decoding: path.utf8[..<last], as: UTF8.self)
                names[directory, default: []].insert(String(decoding: path.utf8[path.utf8.index(after: last)...], as: UTF8.self))
            } else {
                names["", default: []].insert(path)
            }
        }
        return names
    }

    /// Listers started so far, and how many may run.
    private var listersStarted = 0
    private let maximumListers: Int
    private var readAheadStarted = false

    /// The threads started so far (for tests: whether the scanner grew).
    var started: (listers: Int, readAhead: Bool) {
        condition.lock()
        defer { condition.unlock() }
        return (listersStarted, readAheadStarted)
    }

    /// Called with `condition` locked.
    private func startListers(_ count: Int) {
        for _ in 0..<count {
            let index = listersStarted
            listersStarted += 1
            threadsRunning += 1
            startNamedThread("fk-scan-\(index)") { [self] in lister() }
        }
    }

    /// Called with `condition` locked.
    private func startReadAhead() {
        guard readAheadLimit > 0, !readAheadStarted else { return }
        readAheadStarted = true
        threadsRunning += 1
        startNamedThread("fk-readahead") { [self] in readAhead() }
    }

    /// A lister had to read from the disk: the tree is not (all) in the page cache, so every lister and the
    /// read-ahead thread are worth their threads now. Called with `condition` locked.
    private func growForTheDisk() {
        guard !closed, listersStarted < maximumListers || !readAheadStarted else { return }
        startListers(maximumListers - listersStarted)
        startReadAhead()
    }

    /// Blocks this thread has read from the disk so far (getrusage counts the reads it submitted, metadata
    /// included); nil where the kernel does not say.
    private static func blocksReadByThisThread() -> Int? {
        let blocks = fleetkeep_thread_blocks_read()
        return blocks >= 0 ? blocks : nil
    }

    /// Stops the threads and waits for them; the walk calls it when it ends, finished or not.
    func close() {
        condition.lock()
        closed = true
        for index in [Self.listers, Self.walk, Self.readAheadThread] { condition.broadcast(index) }
        while threadsRunning > 0 { condition.wait(Self.exits) }
        waiting = []
        condition.unlock()
    }

    // MARK: The walk's side

    /// The listing of `directory`, listed here if no lister has started it. Throws what the serial walk threw when a
    /// directory could be opened but not listed.
    func take(_ directory: ScannedDirectory) throws -> Outcome {
        condition.lock()
        switch directory.state {
        case .opened, .unopened:
            // The walk got here first: no lister holds it, and waiting for one could mean waiting behind a bound.
            directory.state = .listing
            condition.unlock()
            let result = list(directory, decompressor: walkDecompressor, ids: walkIDs)
            condition.lock()
            publish(directory, result, counted: false)
        default: break
        }
        while case .listing = directory.state {
            walkWaitsFor = directory
            condition.wait(Self.walk)
        }
        walkWaitsFor = nil
        let state = directory.state
        if directory.counted {
            directory.counted = false
            listedAhead -= 1
            if listedAhead == directoryWindow - 1 { condition.signal(Self.listers) }
        }
        condition.unlock()
        // From here the walk holds the listing; the node keeps only its descriptor (see `finished`).
        switch state {
        case .listed(let listing): return .listed(listing)
        case .unopenable(let message): return .unopenable(message)
        case .unlistable(let message): throw RepositoryError(message)
        default: throw RepositoryError("internal: directory \(FileName.printable(directory.relative)) left unlisted")
        }
    }

    /// The walk has finished the regular file at `position` (read or skipped): its read-ahead is spent.
    func walked(file position: [Int]) {
        condition.lock()
        walked = position
        if readAheadWaiting { condition.signal(Self.readAheadThread) }
        condition.unlock()
    }

    /// The walk is done with `directory` and everything under it: its listing (and through it its subdirectories'
    /// nodes) can go, so memory holds the directories being walked and those listed ahead, not the whole tree.
    func finished(_ directory: ScannedDirectory) {
        condition.lock()
        directory.state = .walked
        if readAheadWaitsFor === directory { condition.signal(Self.readAheadThread) }
        condition.unlock()
    }

    // MARK: Listers

    private func lister() {
        let decompressor = ZstdDecompressor()
        let ids = repository.idKey.makeThreadContext()
        condition.lock()
        while true {
            while !closed && (waiting.isEmpty || listedAhead >= directoryWindow) { condition.wait(Self.listers) }
            if closed { break }
            guard let directory = waiting.removeLast().directory else { continue }
            switch directory.state {
            case .unopened, .opened: break
            default: continue // the walk took it itself
            }
            directory.state = .listing
            let watching = listersStarted < maximumListers || !readAheadStarted
            condition.unlock()
            let before = watching ? Self.blocksReadByThisThread() : nil
            let result = list(directory, decompressor: decompressor, ids: ids)
            let readFromDisk = before.flatMap { before in Self.blocksReadByThisThread().map { $0 > before } } ?? false
            condition.lock()
            if readFromDisk { growForTheDisk() }
            publish(directory, result, counted: true)
        }
        threadsRunning -= 1
        condition.signal(Self.exits)
        condition.unlock()
    }

    /// Records a listing and queues its subdirectories. Called with `condition` locked.
    private func publish(_ directory: ScannedDirectory, _ result: ScannedDirectory.State, counted: Bool) {
        directory.state = result
        if counted {
            directory.counted = true
            listedAhead += 1
        }
        if case .listed(let listing) = result, !closed {
            var queued = 0
            for entry in listing.entries.reversed() {
                if let child = entry.child {
                    waiting.append(WeakDirectory(directory: child))
                    queued += 1
                }
            }
            if queued == 1 { condition.signal(Self.listers) } else if queued > 1 { condition.broadcast(Self.listers) }
        }
        if walkWaitsFor === directory { condition.signal(Self.walk) }
        if readAheadWaitsFor === directory { condition.signal(Self.readAheadThread) }
    }

    /// Opens (relative to its parent's descriptor), lists and looks at every entry of one directory; loads the parent
    /// snapshot's listing of it. No lock held.
    private func list(_ directory: ScannedDirectory, decompressor: ZstdDecompressor, ids: HMACSHA256.ThreadContext) -> ScannedDirectory.State {
        let descriptor: Int32
        switch directory.stateForOpening() {
        case .opened(let open): descriptor = open
        case .unopened(let parent):
            descriptor = openat(parent.descriptor, directory.name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
            guard descriptor >= 0 else { return .unopenable(String(cString: strerror(errno))) }
        default: return .unopenable("internal: listed twice")
        }
        directory.descriptor = descriptor
        // The parent directory's descriptor is not needed any more: let it close once the walk is done with it.
        directory.opener = nil
        let names: [(name: String, bytes: [CChar])]
        do {
            names = try Self.names(in: descriptor, relative: directory.relative)
        } catch let error as RepositoryError {
            return .unlistable(error.message)
        } catch {
            return .unlistable("\(error)")
        }
        // Every entry looked at first; the old tree's entries and the subdirectories' nodes are filled in after,
        // once it is known whether the old tree is needed.
        var entries: [Entry] = []
        entries.reserveCapacity(names.count)
        var subdirectories: [(index: Int, relative: String, key: UInt64)] = []
        let excludedHere = excludedNames[directory.relative]
        for (name, bytes) in names {
            if let excludedHere, excludedHere.contains(name) { continue }
            var info = stat()
            let failed = fstatat(descriptor, bytes, &info, AT_SYMLINK_NOFOLLOW) == 0 ? 0 : errno
            if failed == 0 && info.st_mode & S_IFMT == S_IFDIR {
                let relative = directory.relative.isEmpty ? name : directory.relative + "/" + name
                // Its key in the records, made once.
                subdirectories.append((entries.count, relative, recording ? DirectoryCache.key(for: relative, ids: ids) : 0))
            }
            entries.append(Entry(name: name, bytes: bytes, info: info, statError: failed, child: nil, previous: nil))
        }
        // As the last backup recorded it: then the old tree is needed only if a subdirectory changed, and each
        // subdirectory's old tree is its record's (when every one has a record).
        let digest = !recording ? nil : DirectoryCache.listingDigest(of: entries, ids: ids)
        var recorded: DirectoryCache.Record?
        if let digest, let record = cache?[directory.cacheKey], record.listing == digest, record.tree == directory.previousTree {
            recorded = record
        }
        let childrenRecorded = recorded != nil && subdirectories.allSatisfy { cache?[$0.key] != nil }
        // Unreadable (its pack lost or damaged): every file of the directory is then read as if new.
        let previousTree = childrenRecorded ? nil : directory.previousTree.flatMap { try? repository.loadTree($0, decompressor: decompressor) }
        if let previousTree, !previousTree.nodes.isEmpty {
            let previous = Dictionary(previousTree.nodes.map { (NameBytes($0.name), $0) }, uniquingKeysWith: { first, _ in first })
            for index in entries.indices where entries[index].statError == 0 {
                entries[index].previous = previous[NameBytes(entries[index].name)]
            }
        }
        for (index, relative, key) in subdirectories {
            let old = entries[index].previous
            let oldTree = childrenRecorded ? cache?[key]?.tree : (old?.kind == .directory ? old?.subtree : nil)
            let child = ScannedDirectory(relative: relative, name: entries[index].bytes, opener: directory, previousTree: oldTree,
                                         cacheKey: key, depth: directory.depth + 1)
            if child.depth > Self.maximumDepth {
                // The walk goes down one call per level, on a thread's fixed stack: an account's owner who nests
                // directories thousands deep would otherwise crash the backup of every account.
                child.state = .unopenable("more than \(Self.maximumDepth) nested directories: this directory and everything below it "
                    + "are not backed up")
            }
            entries[index].child = child
        }
        return .listed(Listing(entries: entries, digest: digest, recorded: recorded, oldTreeLoaded: !childrenRecorded))
    }

    /// The names in a directory, in byte order (the same on every machine and for every Unicode spelling: String's <
    /// is canonical-equivalence aware, and so could not order NFC and NFD spellings of one name).
    ///
    /// Read on the directory's own descriptor (`Directory.names(inOpen:)`), which is used for nothing else that
    /// depends on its offset (only `fstatat`, `openat`, `readlinkat` relative to it).
    static func names(in descriptor: Int32, relative: String) throws -> [(name: String, bytes: [CChar])] {
        let listed: [[CChar]]
        do throws(Errno) {
            listed = try Directory.names(inOpen: descriptor, path: relative)
        } catch {
            throw RepositoryError("cannot list \(relative.isEmpty ? "the top directory" : FileName.printable(relative)): \(error.text)")
        }
        // Names that are not UTF-8 are kept byte for byte (see FileName); the bytes keep their NUL.
        var names = listed.map { bytes in
            (name: bytes.withUnsafeBytes { FileName.string(from: UnsafeRawBufferPointer(rebasing: $0.dropLast())) }, bytes: bytes)
        }
        // strcmp compares bytes as unsigned, which is the order trees keep.
        names.sort { first, second in
            first.bytes.withUnsafeBufferPointer { a in
                second.bytes.withUnsafeBufferPointer { b in
                    guard let a = a.baseAddress, let b = b.baseAddress else { return false }
                    return strcmp(a, b) < 0
                }
            }
        }
        return names
    }

    // MARK: Read-ahead

    /// Follows the walk's order over the listings and advises the kernel to read the files the walk will read (not
    /// the ones it will skip as unchanged), keeping at most `readAheadLimit` bytes advised ahead of the walk.
    private func readAhead() {
        var stack: [(directory: ScannedDirectory, listing: Listing, next: Int)] = []
        if let listing = peek(root) { stack.append((root, listing, 0)) }
        // Entries are looked at in place (`listing.entries[index].info`): a copy of an entry retains and releases
        // its name, bytes, child and previous node, and this thread follows every entry of the tree.
        walking: while !stack.isEmpty {
            if isClosed { break }
            let (directory, listing, start) = stack[stack.count - 1]
            // In a directory as recorded, every file is as the last backup read it: only its subdirectories matter.
            let readsFiles = listing.recorded == nil
            for index in start..<listing.entries.count where listing.entries[index].statError == 0 {
                switch listing.entries[index].info.st_mode & S_IFMT {
                case S_IFDIR:
                    // Same order as the walk: a directory's contents come before its next sibling.
                    stack[stack.count - 1].next = index + 1
                    if let child = listing.entries[index].child, let childListing = peek(child) {
                        stack.append((child, childListing, 0))
                        continue walking
                    }
                case S_IFREG where readsFiles:
                    let entry = listing.entries[index]
                    guard Self.willBeRead(entry) else { continue }
                    stack[stack.count - 1].next = index + 1
                    advise(entry, in: directory, position: stack.map { $0.next - 1 })
                default: break
                }
            }
            stack.removeLast()
        }
        condition.lock()
        threadsRunning -= 1
        condition.signal(Self.exits)
        condition.unlock()
    }

    private var isClosed: Bool {
        condition.lock()
        defer { condition.unlock() }
        return closed
    }

    /// Waits for a directory's listing without taking it (the walk takes it); nil if it has none, the walk is done
    /// with it already (nothing in it to read ahead), or on close.
    private func peek(_ directory: ScannedDirectory) -> Listing? {
        condition.lock()
        defer {
            readAheadWaitsFor = nil
            condition.unlock()
        }
        while !closed {
            switch directory.state {
            case .listed(let listing): return listing
            case .unopenable, .unlistable, .walked: return nil
            default:
                readAheadWaitsFor = directory
                condition.wait(Self.readAheadThread)
            }
        }
        return nil
    }

    /// A hint only: the walk decides for itself (it also checks that the old content is still in the index).
    static func willBeRead(_ entry: Entry) -> Bool {
        guard entry.info.st_size > 0 else { return false }
        guard let old = entry.previous else { return true }
        return !old.isSameVersion(as: entry.info)
    }

    private func advise(_ entry: Entry, in directory: ScannedDirectory, position: [Int]) {
        let bytes = Int(min(Int64(readAheadLimit), Int64(entry.info.st_size)))
        condition.lock()
        while true {
            while let first = advised.first, !walked.lexicographicallyPrecedes(first.position) {
                advisedBytes -= first.bytes
                advised.removeFirst()
            }
            if closed || !walked.lexicographicallyPrecedes(position) { condition.unlock(); return }
            if advised.isEmpty || advisedBytes + bytes <= readAheadLimit { break }
            readAheadWaiting = true
            condition.wait(Self.readAheadThread)
            readAheadWaiting = false
        }
        advised.append((position, bytes))
        advisedBytes += bytes
        condition.unlock()
        // O_NONBLOCK: the entry was a regular file when listed, but if it is now a FIFO, opening must not hang.
        let file = openat(directory.descriptor, entry.bytes, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC)
        guard file >= 0 else { return }
        _ = posix_fadvise(file, 0, off_t(bytes), POSIX_FADV_WILLNEED)
        Glibc.close(file)
    }
}

/// A mutex with four condition variables (pthread: an NSCondition has one of each).
final class Conditions: @unchecked Sendable {
    // @unchecked: the pthread objects are made for use from many threads; they sit at fixed addresses.
    private let mutex = UnsafeMutablePointer<pthread_mutex_t>.allocate(capacity: 1)
    private let conditions = UnsafeMutablePointer<pthread_cond_t>.allocate(capacity: 4)

    init() {
        pthread_mutex_init(mutex, nil)
        for index in 0..<4 { pthread_cond_init(conditions + index, nil) }
    }

    deinit {
        for index in 0..<4 { pthread_cond_destroy(conditions + index) }
        pthread_mutex_destroy(mutex)
        conditions.deallocate()
        mutex.deallocate()
    }

    func lock() { pthread_mutex_lock(mutex) }
    func unlock() { pthread_mutex_unlock(mutex) }
    /// With the lock held; may wake without a signal, so callers wait in a loop.
    func wait(_ index: Int) { pthread_cond_wait(conditions + index, mutex) }
    func signal(_ index: Int) { pthread_cond_signal(conditions + index) }
    func broadcast(_ index: Int) { pthread_cond_broadcast(conditions + index) }
}

/// One directory of the scanned tree. Its descriptor stays open while anyone (the walk, the read-ahead thread, or a
/// child not yet opened) holds the node, and is closed with it.
final class ScannedDirectory: @unchecked Sendable {
    // @unchecked: `state`, `counted` and `opener` are touched only under the scanner's lock or by the one thread
    // that set `state` to `.listing`; `descriptor` is written once before the listing is published.
    enum State {
        /// Not opened yet: opened relative to `opener`'s descriptor.
        case unopened(ScannedDirectory)
        case opened(Int32)
        case listing
        case listed(TreeScanner.Listing)
        case unopenable(String)
        case unlistable(String)
        /// The walk is done with it.
        case walked
    }

    let relative: String
    /// How many directories down from the top (which is 0).
    let depth: Int
    /// NUL-terminated name in the parent directory.
    let name: [CChar]
    let previousTree: BlobID?
    /// Its key in the directory cache's records (`DirectoryCache.key(for:)`; 0 when the backup keeps no records).
    let cacheKey: UInt64
    var state: State
    var opener: ScannedDirectory?
    var counted = false
    fileprivate(set) var descriptor: Int32 = -1

    init(relative: String, name: [CChar], opener: ScannedDirectory?, previousTree: BlobID?, cacheKey: UInt64 = 0, depth: Int = 0) {
        self.relative = relative
        self.depth = depth
        self.name = name
        self.previousTree = previousTree
        self.cacheKey = cacheKey
        self.opener = opener
        state = opener.map { .unopened($0) } ?? .listing
    }

    /// How to open it, read by the thread that set `.listing` (the state it had is kept in `opener`/`descriptor`).
    fileprivate func stateForOpening() -> State {
        if let opener { return .unopened(opener) }
        return pendingDescriptor.map { .opened($0) } ?? .listing
    }

    /// The top directory's descriptor, before it is listed.
    fileprivate var pendingDescriptor: Int32?

    deinit {
        if descriptor >= 0 { Glibc.close(descriptor) }
        if let pendingDescriptor, pendingDescriptor != descriptor { Glibc.close(pendingDescriptor) }
    }
}

/// A file name as a dictionary key that compares and hashes its UTF-8 bytes: NFC and NFD spellings of one name are
/// different files, though equal as Swift strings (whose == and hash follow canonical equivalence).
struct NameBytes: Hashable {
    let name: String

    init(_ name: String) { self.name = name }

    static func == (first: NameBytes, second: NameBytes) -> Bool {
        let a = first.name.utf8, b = second.name.utf8
        guard a.count == b.count else { return false }
        let compared = a.withContiguousStorageIfAvailable { x in
            b.withContiguousStorageIfAvailable { y in
                guard let x = x.baseAddress, let y = y.baseAddress else { return true }
                return memcmp(x, y, a.count) == 0
            }
        }
        return (compared ?? nil) ?? a.elementsEqual(b)
    }

    func hash(into hasher: inout Hasher) {
        var name = name
        name.withUTF8 { hasher.combine(bytes: UnsafeRawBufferPointer($0)) }
    }
}

extension TreeNode {
    /// A node with what `fstatat` said of the entry: mode, owner, times, inode and size.
    init(name: String, kind: Kind, metadata info: stat) {
        self.init(name: name, kind: kind, mode: 0, size: Int64(info.st_size))
        takeMetadata(from: info)
    }

    /// Mode, owner, times and inode from `info`; the size is left to whoever sets the content.
    mutating func takeMetadata(from info: stat) {
        mode = info.st_mode
        uid = info.st_uid
        gid = info.st_gid
        mtime = UTCTime.nanoseconds(seconds: Int64(info.st_mtim.tv_sec), nanoseconds: Int64(info.st_mtim.tv_nsec))
        ctime = UTCTime.nanoseconds(seconds: Int64(info.st_ctim.tv_sec), nanoseconds: Int64(info.st_ctim.tv_nsec))
        inode = UInt64(info.st_ino)
    }

    /// Whether `info` describes the version of the file this node recorded: size, mtime, ctime and inode all equal,
    /// which is when a backup may skip reading it.
    func isSameVersion(as info: stat) -> Bool {
        kind == .file && size == Int64(info.st_size) && inode == UInt64(info.st_ino)
            && mtime == UTCTime.nanoseconds(seconds: Int64(info.st_mtim.tv_sec), nanoseconds: Int64(info.st_mtim.tv_nsec))
            && ctime == UTCTime.nanoseconds(seconds: Int64(info.st_ctim.tv_sec), nanoseconds: Int64(info.st_ctim.tv_nsec))
    }
}
