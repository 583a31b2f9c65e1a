import Testing
import Zstd

struct ZstdTests {
    private let text = Array(String(repeating: "<?php echo 'hello world'; ?>\n<p>Grüße, 世界</p>\n", count: 2000).utf8)

    private func randomBytes(_ count: Int) -> [UInt8] {
        var generator = SystemRandomNumberGenerator()
        return (0..<count).map { _ in UInt8.random(in: 0...255, using: &generator) }
    }

    @Test func textRoundTripsShrinksAndContextsAreReusable() throws {
        let compressor = ZstdCompressor()
        let decompressor = ZstdDecompressor()
        let compressed = try compressor.compress(text)
        #expect(compressed.count < text.count / 10)
        #expect(try decompressor.decompress(compressed, maxOutputSize: text.count) == text)
        #expect(try compressor.compress(text) == compressed)
        let other = Array("something else entirely".utf8)
        #expect(try decompressor.decompress(try compressor.compress(other), maxOutputSize: 100) == other)
        #expect(try decompressor.decompress(compressed, maxOutputSize: text.count) == text)
    }

    @Test(arguments: [1, 100, 4096, 1 << 20])
    func randomDataRoundTrips(size: Int) throws {
        let data = randomBytes(size)
        let compressed = try Zstd.compress(data, level: 1)
        #expect(try Zstd.decompress(compressed, maxOutputSize: size) == data)
    }

    @Test func levelsAreClampedAndAllRoundTrip() throws {
        for level: Int32 in [-1000, -5, 1, 19, 1000] {
            let compressor = ZstdCompressor(level: level)
            #expect(try Zstd.decompress(try compressor.compress(text), maxOutputSize: text.count) == text, "level \(level)")
        }
    }

    @Test func emptyInputRoundTripsButEmptyFrameIsAnError() throws {
        let compressed = try Zstd.compress([UInt8]())
        #expect(!compressed.isEmpty)
        #expect(try Zstd.decompress(compressed, maxOutputSize: 0) == [])
        do {
            _ = try Zstd.decompress([UInt8](), maxOutputSize: 10)
            Issue.record("zero bytes decoded as a frame")
        } catch let error as ZstdError {
            #expect(error.message.contains("empty"))
        }
    }

    @Test func appendingFollowsExistingBytes() throws {
        var output: [UInt8] = [1, 2, 3]
        let size = try ZstdCompressor().compress(text, appendingTo: &output)
        #expect(output.count == 3 + size)
        #expect(output.prefix(3) == [1, 2, 3])
        #expect(try Zstd.decompress(output.dropFirst(3), maxOutputSize: text.count) == text)
    }

    @Test func garbageAndTruncatedInputAreErrors() throws {
        do {
            _ = try Zstd.decompress(Array("definitely not zstd".utf8), maxOutputSize: 100)
            Issue.record("garbage decoded")
        } catch let error as ZstdError {
            #expect(error.message.contains("not a zstd frame"))
            #expect(error.operation.contains("19 bytes"))
        }
        let compressed = try Zstd.compress(randomBytes(5000) + text)
        for cut in [1, 4, compressed.count / 2, compressed.count - 5] {
            #expect(throws: ZstdError.self, "cut at \(cut)") {
                try Zstd.decompress(compressed.prefix(cut), maxOutputSize: 1 << 20)
            }
        }
    }

    /// Flipping any one byte must never produce different bytes silently: it is an error or (for a bit zstd
    /// ignores) the original data.
    @Test func everyFlippedByteIsCaught() throws {
        let original = Array("The quick brown fox jumps over the lazy dog. 0123456789 ".utf8) + Array(text.prefix(300))
        let compressed = try Zstd.compress(original)
        let decompressor = ZstdDecompressor()
        var errors = 0
        for position in compressed.indices {
            var damaged = compressed
            damaged[position] ^= 0x5a
            if let result = try? decompressor.decompress(damaged, maxOutputSize: 1 << 20) {
                #expect(result == original, "byte \(position) flipped decoded to different data")
            } else {
                errors += 1
            }
        }
        #expect(errors >= compressed.count - 2)
        #expect(try decompressor.decompress(compressed, maxOutputSize: original.count) == original)
    }

    @Test func frameDeclaringTooMuchIsRefusedUpFront() throws {
        let compressed = try Zstd.compress([UInt8](repeating: 0, count: 1 << 20))
        do {
            _ = try Zstd.decompress(compressed, maxOutputSize: 1000)
            Issue.record("an oversized frame was decoded")
        } catch let error as ZstdError {
            #expect(error.message.contains("declares 1048576 bytes"))
            #expect(error.message.contains("allowed 1000"))
        }
        #expect(try Zstd.decompress(compressed, maxOutputSize: 1 << 20).count == 1 << 20)
        #expect(throws: ZstdError.self) { try Zstd.decompress(compressed, maxOutputSize: -1) }
    }

    /// Concatenated frames take the bounded streaming path: the bound holds there too.
    @Test func concatenatedFramesAreDecodedWithinTheBound() throws {
        let compressor = ZstdCompressor()
        let first = Array(text.prefix(3000))
        let second = randomBytes(200_000)
        var both = try compressor.compress(first)
        try compressor.compress(second, appendingTo: &both)
        let decompressor = ZstdDecompressor()
        #expect(try decompressor.decompress(both, maxOutputSize: first.count + second.count) == first + second)
        do {
            _ = try decompressor.decompress(both, maxOutputSize: first.count + second.count - 1)
            Issue.record("output beyond the bound")
        } catch let error as ZstdError {
            #expect(error.message.contains("beyond the allowed"))
        }
        // A truncated second frame is reported, and the context stays usable afterwards.
        #expect(throws: ZstdError.self) { try decompressor.decompress(both.dropLast(10), maxOutputSize: 1 << 20) }
        #expect(try decompressor.decompress(both, maxOutputSize: 1 << 20) == first + second)
    }
}

/// Compression against a prefix: the delta of a day's database dump against yesterday's.
struct ZstdPrefixTests {
    @Test func aSmallEditCostsLittleAgainstThePreviousVersionAndNeedsItBack() throws {
        var generator = SystemRandomNumberGenerator()
        let yesterday = (0..<3000).map { row in "(\(row),'customer\(UInt32.random(in: 0...99999, using: &generator))','pending','2026-01-01'),\n" }.joined()
        var rows = yesterday.split(separator: "\n").map(String.init)
        for index in stride(from: 7, to: rows.count, by: 100) { rows[index] = rows[index].replacingOccurrences(of: "pending", with: "paid") }
        let today = Array((rows.joined(separator: "\n") + "\n").utf8)
        let base = Array(yesterday.utf8)
        let compressor = ZstdCompressor()
        let delta = try compressor.compress(today, prefix: base)
        let alone = try compressor.compress(today)
        #expect(delta.count * 10 < alone.count, "delta \(delta.count) bytes, alone \(alone.count)")
        let decompressor = ZstdDecompressor()
        #expect(try decompressor.decompress(delta, maxOutputSize: today.count, prefix: base) == today)
        // Without its prefix (or with another one) the frame does not give the content back.
        #expect((try? decompressor.decompress(delta, maxOutputSize: today.count)) != today)
        #expect((try? decompressor.decompress(delta, maxOutputSize: today.count, prefix: Array(repeating: UInt8(65), count: base.count))) != today)
        // A prefixed decode that fails before using its prefix (the frame declares more than allowed) must not
        // leave the prefix attached: were it still there, the delta would now decode without being given it.
        #expect(throws: ZstdError.self) { try decompressor.decompress(delta, maxOutputSize: 10, prefix: base) }
        #expect((try? decompressor.decompress(delta, maxOutputSize: today.count)) != today)
        // The context is clean afterwards: a plain frame decompresses as before.
        #expect(try decompressor.decompress(alone, maxOutputSize: today.count) == today)
        #expect(try decompressor.decompress(try compressor.compress(base), maxOutputSize: base.count) == base)
    }
}
