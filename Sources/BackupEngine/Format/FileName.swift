import Glibc

/// File names as Linux stores them: byte strings without "/" or NUL, usually but not always UTF-8. A hosting account
/// gets Latin-1 names from old FTP clients and zip files; a backup that skips those loses customer files.
///
/// Inside Fleetkeep a name or path is a `String`. Valid UTF-8 is itself. Every byte that is not part of valid UTF-8
/// becomes the scalar U+10FC00 + byte (in Supplementary Private Use Area-B, which no file system assigns a meaning),
/// and so does every byte of a real U+10FC00…U+10FCFF scalar, so the mapping is one-to-one: `bytes(of:)` gives back
/// exactly the bytes `string(from:)` was made from. Only bytes 0x80…0xFF are ever escaped: an escape of an ASCII
/// byte (which could spell "/") never comes from a real name and is refused by `validateTreeName`.
/// Trees store the bytes themselves (docs/REPOSITORY.md), so the escape never reaches the repository.
public enum FileName {
    static let escapeBase: UInt32 = 0x10FC00

    /// The name or path for these file-system bytes.
    public static func string<Bytes: Collection>(from bytes: Bytes) -> String where Bytes.Element == UInt8 {
        if let text = String(validating: bytes, as: UTF8.self), !containsEscapeRange(text.utf8) { return text }
        let bytes = Array(bytes)
        var scalars = String.UnicodeScalarView()
        var index = 0
        while index < bytes.count {
            let length = validSequenceLength(bytes, at: index)
            if length > 0, let scalar = decodedScalar(bytes[index..<index + length]), !isEscape(scalar.value) {
                scalars.append(scalar)
                index += length
            } else if length > 0 {
                // A real U+10FCxx scalar: escaped byte by byte, or it would read back as escapes.
                for byte in bytes[index..<index + length] { scalars.append(escape(byte)) }
                index += length
            } else {
                scalars.append(escape(bytes[index]))
                index += 1
            }
        }
        return String(scalars)
    }

    /// The file-system bytes of a name or path made by `string(from:)` (or any ordinary string).
    public static func bytes(of text: String) -> [UInt8] {
        guard containsEscapeRange(text.utf8) else { return Array(text.utf8) }
        var bytes: [UInt8] = []
        bytes.reserveCapacity(text.utf8.count)
        for scalar in text.unicodeScalars {
            if isEscape(scalar.value), scalar.value - escapeBase >= 0x80 {
                bytes.append(UInt8(scalar.value - escapeBase))
            } else {
                bytes.append(contentsOf: String(scalar).utf8)
            }
        }
        return bytes
    }

    /// Calls `body` with the NUL-terminated file-system path for `text`, for a system call.
    public static func withPath<Result>(_ text: String, _ body: (UnsafePointer<CChar>) throws -> Result) rethrows -> Result {
        guard containsEscapeRange(text.utf8) else { return try text.withCString(body) }
        let bytes = self.bytes(of: text) + [0]
        return try bytes.withUnsafeBufferPointer { buffer in
            try buffer.withMemoryRebound(to: CChar.self) { try body($0.baseAddress!) }
        }
    }

    /// For messages: escaped bytes shown as \xNN, everything else as is.
    public static func printable(_ text: String) -> String {
        guard containsEscapeRange(text.utf8) else { return text }
        var out = ""
        for scalar in text.unicodeScalars {
            if isEscape(scalar.value) {
                let byte = scalar.value - escapeBase
                out += "\\x" + (byte < 16 ? "0" : "") + String(byte, radix: 16)
            } else {
                out.unicodeScalars.append(scalar)
            }
        }
        return out
    }

    /// True when `text` holds an escape for an ASCII byte, which no real name produces (it could spell "/").
    static func hasForgedEscape(_ text: String) -> Bool {
        containsEscapeRange(text.utf8) && text.unicodeScalars.contains { isEscape($0.value) && $0.value - escapeBase < 0x80 }
    }

    private static func isEscape(_ value: UInt32) -> Bool { value >= escapeBase && value <= escapeBase + 0xFF }

    private static func escape(_ byte: UInt8) -> Unicode.Scalar { Unicode.Scalar(escapeBase + UInt32(byte))! }

    /// U+10FC00…U+10FCFF is F4 8F B0 80 … F4 8F B3 BF in UTF-8: a cheap test before any per-scalar work. It runs
    /// for every name a backup walks, so it scans contiguous bytes in place (`memchr`) instead of copying them.
    private static func containsEscapeRange<Bytes: Collection>(_ utf8: Bytes) -> Bool where Bytes.Element == UInt8 {
        if let found = utf8.withContiguousStorageIfAvailable(containsEscapeRange(in:)) { return found }
        return Array(utf8).withUnsafeBufferPointer(containsEscapeRange(in:))
    }

    private static func containsEscapeRange(in bytes: UnsafeBufferPointer<UInt8>) -> Bool {
        guard let start = bytes.baseAddress else { return false }
        var position = 0
        while position + 2 < bytes.count,
              let found = memchr(start + position, 0xF4, bytes.count - position - 2) {
            let index = start.distance(to: found.assumingMemoryBound(to: UInt8.self))
            if bytes[index + 1] == 0x8F && (0xB0...0xB3).contains(bytes[index + 2]) { return true }
            position = index + 1
        }
        return false
    }

    /// Length of the well-formed UTF-8 sequence at `index` (Unicode table 3-7), or 0 when it is not one.
    private static func validSequenceLength(_ bytes: [UInt8], at index: Int) -> Int {
        let lead = bytes[index]
        let length: Int
        var secondRange: ClosedRange<UInt8> = 0x80...0xBF
        switch lead {
        case 0x00...0x7F: return 1
        case 0xC2...0xDF: length = 2
        case 0xE0: length = 3; secondRange = 0xA0...0xBF
        case 0xE1...0xEC, 0xEE...0xEF: length = 3
        case 0xED: length = 3; secondRange = 0x80...0x9F
        case 0xF0: length = 4; secondRange = 0x90...0xBF
        case 0xF1...0xF3: length = 4
        case 0xF4: length = 4; secondRange = 0x80...0x8F
        default: return 0
        }
        guard index + length <= bytes.count, secondRange.contains(bytes[index + 1]) else { return 0 }
        for offset in 2..<length where !(0x80...0xBF).contains(bytes[index + offset]) { return 0 }
        return length
    }

    private static func decodedScalar(_ sequence: ArraySlice<UInt8>) -> Unicode.Scalar? {
        String(validating: sequence, as: UTF8.self)?.unicodeScalars.first
    }
}
