import Foundation
/// One-shot helpers for callers that do not keep a context (each call creates and frees one).
public enum Zstd {
    public static func compress<D: ContiguousBytes>(_ input: D, level: Int32 = 3) throws -> [UInt8] {
        try ZstdCompressor(level: level).compress(input)
    }

    public static func decompress<D: ContiguousBytes>(_ input: D, maxOutputSize: Int) throws -> [UInt8] {
        try ZstdDecompressor().decompress(input, maxOutputSize: maxOutputSize)
    }
}
