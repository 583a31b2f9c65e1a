import Foundation
import CZstd

/// A reusable compression context (`ZSTD_CCtx`). Reusing it avoids re-allocating zstd's tables for every input.
/// Not Sendable: a context holds per-call state, so keep one per thread (or a pool).
public final class ZstdCompressor {
    private let context: OpaquePointer
    /// The level in use, clamped to what this libzstd supports.
    public let level: Int32

    /// Frames carry zstd's 4-byte content checksum, so damaged input is reported as an error instead of decoding
    /// to wrong bytes.
    public convenience init(level: Int32 = 3) {
        self.init(level: level, checksum: true)
    }

    /// `checksum: false` saves 4 bytes per frame where something else (an AEAD tag) already guards the data.
    public init(level: Int32, checksum: Bool) {
        guard let context = ZSTD_createCCtx() else { fatalError("ZSTD_createCCtx: out of memory") }
        self.context = context
        self.level = min(max(level, ZSTD_minCLevel()), ZSTD_maxCLevel())
        // Sticky parameters, set once. The frame records its content size (zstd's default, made explicit), which
        // lets the reader refuse an oversized frame before allocating anything.
        _ = ZSTD_CCtx_setParameter(context, ZSTD_c_compressionLevel, self.level)
        _ = ZSTD_CCtx_setParameter(context, ZSTD_c_contentSizeFlag, 1)
        _ = ZSTD_CCtx_setParameter(context, ZSTD_c_checksumFlag, checksum ? 1 : 0)
    }

    deinit { ZSTD_freeCCtx(context) }

    /// One zstd frame holding `input`.
    public func compress<D: ContiguousBytes>(_ input: D) throws -> [UInt8] {
        try input.withUnsafeBytes { source in
            let bound = ZSTD_compressBound(source.count)
            return try [UInt8](unsafeUninitializedCapacity: bound) { destination, count in
                count = try compress(source, into: UnsafeMutableRawBufferPointer(destination))
            }
        }
    }

    /// One zstd frame holding `input`, compressed against `prefix` (earlier content the reader will have, such as
    /// yesterday's version of the same data): only what differs from it costs space. Decompress it with the same
    /// prefix (`ZstdDecompressor.decompress(_:maxOutputSize:prefix:)`).
    public func compress<D: ContiguousBytes, P: ContiguousBytes>(_ input: D, prefix: P) throws -> [UInt8] {
        try prefix.withUnsafeBytes { reference in
            let inputCount = input.withUnsafeBytes { $0.count }
            // zstd sizes its window for the input alone; matches reach back into the prefix only as far as the window
            // does, so it must span prefix and input. (Decoders accept windows up to 2^27 by default.)
            var windowLog: Int32 = 10
            while windowLog < 27 && (1 << windowLog) < reference.count + inputCount { windowLog += 1 }
            _ = try ZstdError.check(ZSTD_CCtx_setParameter(context, ZSTD_c_windowLog, windowLog), "set window log \(windowLog)")
            defer {
                // Back to "chosen from the level", and drop the prefix even when compression failed before using it:
                // a session reset alone keeps it attached, and the next frame would read memory that is gone.
                _ = ZSTD_CCtx_setParameter(context, ZSTD_c_windowLog, 0)
                _ = ZSTD_CCtx_reset(context, ZSTD_reset_session_only)
                _ = ZSTD_CCtx_refPrefix(context, nil, 0)
            }
            _ = try ZstdError.check(ZSTD_CCtx_refPrefix(context, reference.baseAddress, reference.count), "reference a \(reference.count)-byte prefix")
            return try compress(input)
        }
    }

    /// Appends one zstd frame holding `input` to `output` without an intermediate array; returns the frame's size.
    @discardableResult
    public func compress<D: ContiguousBytes>(_ input: D, appendingTo output: inout [UInt8]) throws -> Int {
        try input.withUnsafeBytes { source in
            let start = output.count
            let bound = ZSTD_compressBound(source.count)
            // Zero-filling the worst-case tail costs far less than compressing it; it is trimmed afterwards.
            output.append(contentsOf: repeatElement(0, count: bound))
            do {
                let written = try output.withUnsafeMutableBytes { buffer in
                    try compress(source, into: UnsafeMutableRawBufferPointer(rebasing: buffer[start...]))
                }
                output.removeLast(bound - written)
                return written
            } catch {
                output.removeLast(bound)
                throw error
            }
        }
    }

    private func compress(_ source: UnsafeRawBufferPointer, into destination: UnsafeMutableRawBufferPointer) throws -> Int {
        try ZstdError.check(
            ZSTD_compress2(context, destination.baseAddress, destination.count, source.baseAddress, source.count),
            "compress \(source.count) bytes")
    }
}
