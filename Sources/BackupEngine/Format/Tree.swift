/// One entry of a directory listing (a tree blob).
public struct TreeNode: Sendable, Equatable {
    public enum Kind: UInt8, Sendable { case file = 0, directory = 1, symlink = 2, hardlink = 3, other = 4 }
    public var name: String
    public var kind: Kind
    /// `st_mode` including the file type bits.
    public var mode: UInt32
    public var uid: UInt32
    public var gid: UInt32
    /// Nanoseconds since the epoch.
    public var mtime: Int64
    /// Change time and inode: with size and mtime, they decide whether the next backup may skip reading the file.
    public var ctime: Int64
    public var inode: UInt64
    public var size: Int64
    /// Symlink target, or for `hardlink` the snapshot-relative path of the first link of the group.
    public var target: String?
    /// Content blob ids of a file, in order.
    public var content: [BlobID]
    /// Tree blob id of a directory.
    public var subtree: BlobID?
    /// For a sparse file: where its data lies. The content fills these ranges in order and every other byte up to
    /// `size` is a hole (reads as zero). Nil for a file stored whole, as every file was before sparse files.
    public var dataExtents: [FileExtent]?

    public init(name: String, kind: Kind, mode: UInt32, uid: UInt32 = 0, gid: UInt32 = 0, mtime: Int64 = 0, ctime: Int64 = 0,
                inode: UInt64 = 0, size: Int64 = 0, target: String? = nil, content: [BlobID] = [], subtree: BlobID? = nil) {
        self.name = name
        self.kind = kind
        self.mode = mode
        self.uid = uid
        self.gid = gid
        self.mtime = mtime
        self.ctime = ctime
        self.inode = inode
        self.size = size
        self.target = target
        self.content = content
        self.subtree = subtree
    }
}

/// A byte range of a file: `length` bytes from `offset`.
public struct FileExtent: Sendable, Equatable {
    public var offset: Int64
    public var length: Int64
    public var end: Int64 { offset + length }

    public init(offset: Int64, length: Int64) {
        self.offset = offset
        self.length = length
    }
}

/// A directory listing as stored in a tree blob: "FKT1", a count, then one compact binary record per entry
/// (see docs/REPOSITORY.md). Binary rather than JSON because an unchanged re-run decodes every tree of the
/// parent snapshot and encodes every new one: JSON made that the dominant cost.
/// A tree with a sparse file in it starts "FKT2" instead and adds its data extents: agents from before sparse files
/// then call the tree damaged rather than restore the file's data at the wrong offsets.
struct Tree: Equatable {
    var nodes: [TreeNode]

    static let magic: [UInt8] = Array("FKT1".utf8)
    static let sparseMagic: [UInt8] = Array("FKT2".utf8)
    private static let hasTarget: UInt8 = 1, hasSubtree: UInt8 = 2, hasExtents: UInt8 = 4

    func encoded() -> [UInt8] {
        var out = ByteWriter()
        out.bytes.reserveCapacity(16 + nodes.count * 96)
        out.bytes.append(contentsOf: nodes.contains { $0.dataExtents != nil } ? Self.sparseMagic : Self.magic)
        out.varint(UInt64(nodes.count))
        for node in nodes {
            out.fileName(node.name)
            out.byte(node.kind.rawValue)
            out.varint(UInt64(node.mode))
            out.varint(UInt64(node.uid))
            out.varint(UInt64(node.gid))
            out.signed(node.mtime)
            out.signed(node.ctime)
            out.varint(node.inode)
            out.signed(node.size)
            out.byte((node.target != nil ? Self.hasTarget : 0) | (node.subtree != nil ? Self.hasSubtree : 0)
                     | (node.dataExtents != nil ? Self.hasExtents : 0))
            if let target = node.target { out.fileName(target) }
            if let subtree = node.subtree { out.id(subtree) }
            out.varint(UInt64(node.content.count))
            for id in node.content { out.id(id) }
            if let extents = node.dataExtents {
                // Each extent as its distance from the end of the one before, and its length: both small varints.
                // (Bit patterns: encoding never traps; extents out of order come out as ones `decodeExtents` refuses.)
                out.varint(UInt64(extents.count))
                var end: Int64 = 0
                for extent in extents {
                    out.varint(UInt64(bitPattern: extent.offset &- end))
                    out.varint(UInt64(bitPattern: extent.length))
                    end = extent.end
                }
            }
        }
        return out.bytes
    }

    init(nodes: [TreeNode]) { self.nodes = nodes }

    init(decoding bytes: [UInt8], what: @autoclosure @escaping () -> String) throws {
        var reader = ByteReader(bytes, what: what())
        let magic = bytes.count >= 4 ? Array(bytes[0..<4]) : []
        guard magic == Self.magic || magic == Self.sparseMagic else { throw reader.damaged() }
        let mayHoldExtents = magic == Self.sparseMagic
        reader.offset = 4
        let count = try reader.count(elementSize: 12)
        var nodes: [TreeNode] = []
        nodes.reserveCapacity(count)
        for _ in 0..<count {
            let name = try reader.fileName()
            guard let kind = TreeNode.Kind(rawValue: try reader.byte()) else { throw reader.damaged() }
            let mode = try reader.varint(), uid = try reader.varint(), gid = try reader.varint()
            guard mode <= UInt32.max, uid <= UInt32.max, gid <= UInt32.max else { throw reader.damaged() }
            var node = TreeNode(name: name, kind: kind, mode: UInt32(mode), uid: UInt32(uid), gid: UInt32(gid),
                                mtime: try reader.signed(), ctime: try reader.signed(), inode: try reader.varint(), size: try reader.signed())
            let flags = try reader.byte()
            if flags & Self.hasTarget != 0 { node.target = try reader.fileName() }
            if flags & Self.hasSubtree != 0 { node.subtree = try reader.id() }
            let blobs = try reader.count(elementSize: 32)
            node.content.reserveCapacity(blobs)
            for _ in 0..<blobs { node.content.append(try reader.id()) }
            if flags & Self.hasExtents != 0 {
                guard mayHoldExtents, kind == .file else { throw reader.damaged() }
                node.dataExtents = try Self.decodeExtents(&reader, size: node.size)
            }
            nodes.append(node)
        }
        guard reader.isAtEnd else { throw reader.damaged() }
        self.nodes = nodes
    }

    /// Extents in order, apart, not empty and within the file's size: restore writes at these offsets, so a tree
    /// that says otherwise is damaged, not obeyed.
    private static func decodeExtents(_ reader: inout ByteReader, size: Int64) throws -> [FileExtent] {
        guard size >= 0 else { throw reader.damaged() }
        let count = try reader.count(elementSize: 2)
        var extents: [FileExtent] = []
        extents.reserveCapacity(count)
        var end: Int64 = 0
        for _ in 0..<count {
            let gap = try reader.varint(), length = try reader.varint()
            // The first extent may start at 0; every later one starts after a hole.
            guard length > 0, extents.isEmpty || gap > 0, gap <= UInt64(size - end), length <= UInt64(size - end) - gap else {
                throw reader.damaged()
            }
            let extent = FileExtent(offset: end + Int64(gap), length: Int64(length))
            extents.append(extent)
            end = extent.end
        }
        return extents
    }
}
