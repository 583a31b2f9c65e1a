/// Appends the compact binary encodings used by trees, pack headers and index files.
struct ByteWriter {
    var bytes: [UInt8] = []

    mutating func byte(_ value: UInt8) { bytes.append(value) }

    /// LEB128: small numbers (modes, uids, sizes of small files) take one or two bytes.
    mutating func varint(_ value: UInt64) {
        var rest = value
        while rest >= 0x80 {
            bytes.append(UInt8(truncatingIfNeeded: rest) | 0x80)
            rest >>= 7
        }
        bytes.append(UInt8(rest))
    }

    /// Zigzag, so negative timestamps (before 1970) stay short too.
    mutating func signed(_ value: Int64) { varint(UInt64(bitPattern: (value << 1) ^ (value >> 63))) }

    mutating func uint32(_ value: UInt32) { withUnsafeBytes(of: value.littleEndian) { bytes.append(contentsOf: $0) } }

    mutating func string(_ value: String) {
        var copy = value
        copy.withUTF8 { utf8 in
            varint(UInt64(utf8.count))
            bytes.append(contentsOf: utf8)
        }
    }

    /// A file name or path as the file system's bytes (see `FileName`): not necessarily UTF-8.
    mutating func fileName(_ value: String) {
        let raw = FileName.bytes(of: value)
        varint(UInt64(raw.count))
        bytes.append(contentsOf: raw)
    }

    mutating func id(_ id: BlobID) { id.append(to: &bytes) }
}

/// Reads what `ByteWriter` wrote, bounds-checked: damaged or hostile input throws instead of trapping.
struct ByteReader {
    let bytes: [UInt8]
    var offset: Int
    /// What is being read, for messages. Made only when one is needed: readers open thousands of trees per backup,
    /// and formatting each one's id as hex up front was a measurable part of a re-run.
    private let describe: () -> String
    var what: String { describe() }

    init(_ bytes: [UInt8], offset: Int = 0, what: @autoclosure @escaping () -> String) {
        self.bytes = bytes
        self.offset = offset
        describe = what
    }

    var isAtEnd: Bool { offset >= bytes.count }

    func damaged() -> RepositoryError { RepositoryError("\(what) is damaged (malformed at byte \(offset))") }

    mutating func byte() throws -> UInt8 {
        guard offset < bytes.count else { throw damaged() }
        defer { offset += 1 }
        return bytes[offset]
    }

    mutating func varint() throws -> UInt64 {
        var result: UInt64 = 0
        var shift: UInt64 = 0
        while true {
            let next = try byte()
            guard shift < 64 else { throw damaged() }
            result |= UInt64(next & 0x7f) << shift
            if next < 0x80 { return result }
            shift += 7
        }
    }

    /// A varint that must fit a count or length no larger than the remaining input allows.
    mutating func count(elementSize: Int = 1) throws -> Int {
        let value = try varint()
        guard value <= UInt64(bytes.count - offset) / UInt64(max(elementSize, 1)) else { throw damaged() }
        return Int(value)
    }

    mutating func signed() throws -> Int64 {
        let raw = try varint()
        return Int64(bitPattern: (raw >> 1) ^ (0 &- (raw & 1)))
    }

    mutating func uint32() throws -> UInt32 {
        guard offset + 4 <= bytes.count else { throw damaged() }
        defer { offset += 4 }
        return UInt32(bytes[offset]) | UInt32(bytes[offset + 1]) << 8 | UInt32(bytes[offset + 2]) << 16 | UInt32(bytes[offset + 3]) << 24
    }

    mutating func string() throws -> String {
        let length = try count()
        defer { offset += length }
        guard let text = String(validating: bytes[offset..<offset + length], as: UTF8.self) else { throw damaged() }
        return text
    }

    mutating func fileName() throws -> String {
        let length = try count()
        defer { offset += length }
        return FileName.string(from: bytes[offset..<offset + length])
    }

    /// The next `count` bytes as they are.
    mutating func take(_ count: Int) throws -> [UInt8] {
        guard count <= bytes.count - offset else { throw damaged() }
        defer { offset += count }
        return Array(bytes[offset..<offset + count])
    }

    mutating func id() throws -> BlobID {
        guard offset + 32 <= bytes.count else { throw damaged() }
        defer { offset += 32 }
        return bytes.withUnsafeBytes { BlobID(UnsafeRawBufferPointer(rebasing: $0[offset..<offset + 32])) }
    }
}
