import Foundation
import Testing
import Zstd

struct ZstdTests {
    @Test func textRoundTripsAndShrinks() throws {
        let text = Array(String(repeating: "<?php echo 'hello world'; ?>\n", count: 2000).utf8)
        let compressor = ZstdCompressor()
        let compressed = try compressor.compress(text)
        #expect(compressed.count < text.count / 10)
        #expect(try ZstdDecompressor().decompress(compressed, maxOutputSize: text.count) == text)
        // The context is reusable.
        #expect(try compressor.compress(text) == compressed)
    }

    @Test func randomDataRoundTrips() throws {
        var generator = SystemRandomNumberGenerator()
        let data = (0..<100_000).map { _ in UInt8.random(in: 0...255, using: &generator) }
        let compressed = try Zstd.compress(data)
        #expect(try Zstd.decompress(compressed, maxOutputSize: data.count) == data)
    }

    @Test func emptyInputRoundTrips() throws {
        let compressed = try Zstd.compress([UInt8]())
        #expect(try Zstd.decompress(compressed, maxOutputSize: 0) == [])
    }

    @Test func corruptInputIsAnError() throws {
        #expect(throws: ZstdError.self) { try Zstd.decompress([1, 2, 3, 4, 5, 6, 7, 8], maxOutputSize: 100) }
        var compressed = try Zstd.compress(Array(repeating: UInt8(7), count: 10_000) + Array(0..<255))
        compressed[compressed.count / 2] ^= 0xff
        compressed[compressed.count - 3] ^= 0xff
        #expect(throws: ZstdError.self) { try Zstd.decompress(compressed, maxOutputSize: 20_000) }
    }

    @Test func oversizeFrameIsRefused() throws {
        let compressed = try Zstd.compress([UInt8](repeating: 0, count: 1 << 20))
        do {
            _ = try Zstd.decompress(compressed, maxOutputSize: 1000)
            Issue.record("expected refusal")
        } catch let error as ZstdError {
            #expect(error.message.contains("more than the allowed 1000"))
        }
    }
}
