@testable import AgentCore
import Foundation
import Testing
import TestSupport

/// `IdleMemory` drops the pages of clean read-only file mappings, and must never touch a mapping that holds private
/// (copied-on-write) pages: dropping those would lose data, as it would for relocated RELRO pages.
struct IdleMemoryTests {
    @Test func dropsCleanReadOnlyFileMappingsAndKeepsPrivatePages() throws {
        let directory = TemporaryDirectory()
        let path = directory.path + "/mapped"
        let size = 1 << 20
        #expect(FileManager.default.createFile(atPath: path, contents: Data((0..<size).map { UInt8(truncatingIfNeeded: $0 * 7 + 1) })))
        let descriptor = open(path, O_RDONLY | O_CLOEXEC)
        try #require(descriptor >= 0)
        defer { close(descriptor) }

        // A clean read-only mapping, every page touched.
        let clean = try #require(mmap(nil, size, PROT_READ, MAP_PRIVATE, descriptor, 0).flatMap { $0 == MAP_FAILED ? nil : $0 })
        defer { munmap(clean, size) }
        var sum = 0
        for offset in stride(from: 0, to: size, by: 4096) { sum &+= Int(clean.load(fromByteOffset: offset, as: UInt8.self)) }
        #expect(sum != 0)
        // A mapping written to and then made read-only, as the dynamic linker leaves RELRO: its pages are private.
        let relocated = try #require(mmap(nil, size, PROT_READ | PROT_WRITE, MAP_PRIVATE, descriptor, 0).flatMap { $0 == MAP_FAILED ? nil : $0 })
        defer { munmap(relocated, size) }
        for offset in stride(from: 0, to: size, by: 4096) { relocated.storeBytes(of: 0xA5, toByteOffset: offset, as: UInt8.self) }
        #expect(mprotect(relocated, size, PROT_READ) == 0)

        #expect(try residentKilobytes(of: clean) >= 1000)
        let released = IdleMemory.releaseCleanFilePages()
        #expect(released >= size)
        #expect(try residentKilobytes(of: clean) == 0)
        // The private pages are still ours, with what was written to them.
        for offset in stride(from: 0, to: size, by: 4096) {
            #expect(relocated.load(fromByteOffset: offset, as: UInt8.self) == 0xA5)
        }
        // The dropped mapping reads the file again.
        #expect(clean.load(fromByteOffset: 4096 * 3 + 1, as: UInt8.self) == UInt8(truncatingIfNeeded: (4096 * 3 + 1) * 7 + 1))
    }

    /// The `Rss:` line of the mapping that starts at `address`, from /proc/self/smaps.
    private func residentKilobytes(of address: UnsafeMutableRawPointer) throws -> Int {
        // Read to the end: /proc files report a size of 0, and readers that trust the size get nothing.
        let handle = try #require(FileHandle(forReadingAtPath: "/proc/self/smaps"))
        defer { try? handle.close() }
        let smaps = String(decoding: try handle.readToEnd() ?? Data(), as: UTF8.self)
        let start = String(UInt(bitPattern: address), radix: 16)
        var inMapping = false
        for line in smaps.split(separator: "\n") {
            if let range = line.split(separator: " ").first, range.contains("-") {
                inMapping = range.split(separator: "-").first.map { $0.drop { $0 == "0" } == start.drop { $0 == "0" } } ?? false
            } else if inMapping, line.hasPrefix("Rss:") {
                return Int(line.split(separator: " ").dropFirst().first ?? "") ?? -1
            }
        }
        throw TestFailure("no mapping at \(start) in /proc/self/smaps")
    }
}
