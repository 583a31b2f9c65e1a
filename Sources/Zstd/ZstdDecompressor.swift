import Foundation
import CZstd

/// A reusable decompression context (`ZSTD_DCtx`). Not Sendable: keep one per thread.
///
/// Output is always bounded by `maxOutputSize`: a frame that declares a larger size is refused before anything is
/// allocated, and a frame that does not declare its size is decoded in steps that stop at the bound. A damaged or
/// hostile input therefore costs at most `maxOutputSize` bytes of memory and ends in a `ZstdError`, never a crash.
public final class ZstdDecompressor {
    /// Made at the first use: a backup makes one per listing thread, and an unchanged re-run of a small account
    /// often decompresses nothing (hundreds of accounts: creating the contexts was 2% of such a run).
    private var created: OpaquePointer?

    private var context: OpaquePointer {
        if let created { return created }
        guard let made = ZSTD_createDCtx() else { fatalError("ZSTD_createDCtx: out of memory") }
        created = made
        return made
    }

    public init() {}

    deinit { if let created { ZSTD_freeDCtx(created) } }

    /// Decompresses `input` (one frame, or several concatenated) into at most `maxOutputSize` bytes.
    public func decompress<D: ContiguousBytes>(_ input: D, maxOutputSize: Int) throws -> [UInt8] {
        try input.withUnsafeBytes { source in
            let what = "decompress \(source.count) bytes"
            guard maxOutputSize >= 0 else {
                throw ZstdError(operation: what, message: "maxOutputSize is negative (\(maxOutputSize))")
            }
            guard !source.isEmpty else {
                throw ZstdError(operation: what, message: "input is empty, not a zstd frame")
            }
            let declared = ZSTD_getFrameContentSize(source.baseAddress, source.count)
            if declared == ZSTD_CONTENTSIZE_ERROR {
                throw ZstdError(operation: what, message: "input is not a zstd frame (bad magic number or truncated header)")
            }
            if declared != ZSTD_CONTENTSIZE_UNKNOWN && declared > UInt64(maxOutputSize) {
                throw ZstdError(operation: what,
                                message: "frame declares \(declared) bytes of output, more than the allowed \(maxOutputSize)")
            }
            // The fast path: one frame of known size, decoded straight into an exactly sized array.
            if declared != ZSTD_CONTENTSIZE_UNKNOWN,
               ZSTD_findFrameCompressedSize(source.baseAddress, source.count) == source.count {
                let size = Int(declared)
                return try [UInt8](unsafeUninitializedCapacity: max(size, 1)) { output, count in
                    let produced = try ZstdError.check(
                        ZSTD_decompressDCtx(context, output.baseAddress, size, source.baseAddress, source.count), what)
                    guard produced == size else {
                        throw ZstdError(operation: what, message: "frame declares \(size) bytes but holds \(produced) (damaged)")
                    }
                    count = produced
                }
            }
            return try decompressInSteps(source, maxOutputSize: maxOutputSize, what: what)
        }
    }

    /// Decompresses one frame made by `ZstdCompressor.compress(_:prefix:)` with the same `prefix`. A wrong prefix
    /// gives wrong bytes or an error, never a crash: callers check the result (the repository checks its id).
    public func decompress<D: ContiguousBytes, P: ContiguousBytes>(_ input: D, maxOutputSize: Int, prefix: P) throws -> [UInt8] {
        try prefix.withUnsafeBytes { reference in
            _ = ZSTD_DCtx_reset(context, ZSTD_reset_session_only)
            _ = try ZstdError.check(ZSTD_DCtx_refPrefix(context, reference.baseAddress, reference.count), "reference a \(reference.count)-byte prefix")
            defer {
                // Drop the prefix even when decoding failed before using it (a frame declaring too much output, say):
                // a session reset alone keeps it attached, and the next frame would read memory that is gone.
                _ = ZSTD_DCtx_reset(context, ZSTD_reset_session_only)
                _ = ZSTD_DCtx_refPrefix(context, nil, 0)
            }
            return try decompress(input, maxOutputSize: maxOutputSize)
        }
    }

    /// Frames without a declared size, or several frames back to back: stream, growing the output up to the bound.
    private func decompressInSteps(_ source: UnsafeRawBufferPointer, maxOutputSize: Int, what: String) throws -> [UInt8] {
        _ = ZSTD_DCtx_reset(context, ZSTD_reset_session_only)
        let step = ZSTD_DStreamOutSize()
        var result: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: step)
        var inBuffer = ZSTD_inBuffer(src: source.baseAddress, size: source.count, pos: 0)
        var lastHint = 0
        while true {
            let produced: Int = try chunk.withUnsafeMutableBytes { buffer in
                var outBuffer = ZSTD_outBuffer(dst: buffer.baseAddress, size: buffer.count, pos: 0)
                lastHint = try ZstdError.check(ZSTD_decompressStream(context, &outBuffer, &inBuffer), what)
                return outBuffer.pos
            }
            guard result.count + produced <= maxOutputSize else {
                _ = ZSTD_DCtx_reset(context, ZSTD_reset_session_only)
                throw ZstdError(operation: what, message: "output grows beyond the allowed \(maxOutputSize) bytes")
            }
            result.append(contentsOf: chunk[0..<produced])
            // Done when all input is consumed, the last frame is complete, and zstd has nothing more buffered.
            if inBuffer.pos == inBuffer.size && lastHint == 0 && produced < step { return result }
            if inBuffer.pos == inBuffer.size && produced == 0 {
                _ = ZSTD_DCtx_reset(context, ZSTD_reset_session_only)
                throw ZstdError(operation: what, message: "input ends in the middle of a frame (truncated)")
            }
        }
    }
}
