import CZstd
import Foundation

/// A zstd failure with the library's message and what we were doing.
public struct ZstdError: Error, CustomStringConvertible, Sendable {
    public let operation: String
    public let message: String
    public var description: String { "zstd \(operation): \(message)" }

    static func check(_ code: Int, _ operation: String) throws -> Int {
        if ZSTD_isError(code) != 0 { throw ZstdError(operation: operation, message: String(cString: ZSTD_getErrorName(code))) }
        return code
    }
}

/// A reusable compression context. Keep one per thread: it is not safe to share, so it is not Sendable.
public final class ZstdCompressor {
    private let context: OpaquePointer
    public let level: Int32

    public init(level: Int32 = 3) {
        guard let context = ZSTD_createCCtx() else { fatalError("ZSTD_createCCtx: out of memory") }
        self.context = context
        self.level = level
    }

    deinit { ZSTD_freeCCtx(context) }

    /// One zstd frame holding `input` (with its content size recorded, so decompression can check it).
    public func compress<D: ContiguousBytes>(_ input: D) throws -> [UInt8] {
        try input.withUnsafeBytes { source in
            let bound = ZSTD_compressBound(source.count)
            return try [UInt8](unsafeUninitializedCapacity: bound) { output, count in
                count = try ZstdError.check(
                    ZSTD_compressCCtx(context, output.baseAddress, bound, source.baseAddress, source.count, level), "compress")
            }
        }
    }
}

/// A reusable decompression context, one per thread.
public final class ZstdDecompressor {
    private let context: OpaquePointer

    public init() {
        guard let context = ZSTD_createDCtx() else { fatalError("ZSTD_createDCtx: out of memory") }
        self.context = context
    }

    deinit { ZSTD_freeDCtx(context) }

    /// Decompresses one frame. Refuses frames that claim (or turn out) to be larger than `maxOutputSize`,
    /// so a damaged or hostile input cannot make us allocate without bound.
    public func decompress<D: ContiguousBytes>(_ input: D, maxOutputSize: Int) throws -> [UInt8] {
        try input.withUnsafeBytes { source in
            let declared = ZSTD_getFrameContentSize(source.baseAddress, source.count)
            if declared == ZSTD_CONTENTSIZE_ERROR {
                throw ZstdError(operation: "decompress", message: "input is not a zstd frame (damaged data?)")
            }
            let capacity: Int
            if declared == ZSTD_CONTENTSIZE_UNKNOWN {
                capacity = maxOutputSize
            } else {
                guard declared <= UInt64(maxOutputSize) else {
                    throw ZstdError(operation: "decompress", message: "frame declares \(declared) bytes, more than the allowed \(maxOutputSize)")
                }
                capacity = Int(declared)
            }
            return try [UInt8](unsafeUninitializedCapacity: max(capacity, 1)) { output, count in
                count = try ZstdError.check(
                    ZSTD_decompressDCtx(context, output.baseAddress, capacity, source.baseAddress, source.count), "decompress")
            }
        }
    }
}

/// One-shot helpers for callers that do not keep a context.
public enum Zstd {
    public static func compress<D: ContiguousBytes>(_ input: D, level: Int32 = 3) throws -> [UInt8] {
        try ZstdCompressor(level: level).compress(input)
    }

    public static func decompress<D: ContiguousBytes>(_ input: D, maxOutputSize: Int) throws -> [UInt8] {
        try ZstdDecompressor().decompress(input, maxOutputSize: maxOutputSize)
    }
}
