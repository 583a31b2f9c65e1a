@testable import BackupEngine
import Foundation
import Testing
import TestSupport

/// Names that are not UTF-8 (Latin-1 uploads, broken zip files) and names Swift's String would merge.
struct FileNameTests {
    static let awkwardNames: [[UInt8]] = [
        Array("caf".utf8) + [0xE9] + Array(".txt".utf8),   // Latin-1 é
        [0xE6, 0x97],                                       // a truncated 3-byte sequence
        [0xC0, 0xAF],                                       // an overlong "/"
        [0xED, 0xA0, 0x80],                                 // a UTF-16 surrogate written as UTF-8
        [0xF4, 0x8F, 0xB0, 0xAF] + Array("x".utf8),         // a real U+10FC2F: the escape range itself
        [0xFF, 0xFE, 0x41],
        Array("café.txt".precomposedStringWithCanonicalMapping.utf8),
        Array("café.txt".decomposedStringWithCanonicalMapping.utf8),
    ]

    @Test(arguments: awkwardNames)
    func bytesSurviveTheRoundTrip(name: [UInt8]) {
        let text = FileName.string(from: name)
        #expect(FileName.bytes(of: text) == name)
        #expect(!FileName.hasForgedEscape(text))
        #expect(throws: Never.self) { try validateTreeName(text) }
    }

    @Test func randomBytesRoundTripAndStayDistinct() {
        var seen: [[UInt8]: [UInt8]] = [:]
        for _ in 0..<5000 {
            let name = (0..<Int.random(in: 1...12)).map { _ in UInt8.random(in: 1...255) }.filter { $0 != 0x2F }
            guard !name.isEmpty else { continue }
            let back = FileName.bytes(of: FileName.string(from: name))
            #expect(back == name)
            // One-to-one: two different byte names never give the same string bytes.
            let key = Array(FileName.string(from: name).utf8)
            if let other = seen[key] { #expect(other == name) }
            seen[key] = name
        }
    }

    @Test func anEscapedAsciiByteIsRefused() {
        let forged = "a" + String(Unicode.Scalar(0x10FC2F)!) + "etc"
        #expect(FileName.hasForgedEscape(forged))
        #expect(throws: RepositoryError.self) { try validateTreeName(forged) }
        #expect(FileName.printable(FileName.string(from: [0x61, 0xE9])) == "a\\xe9")
    }

    /// Trees store raw bytes, so a forged escape written into a tree reads back as the bytes of the scalar itself:
    /// it cannot turn into a "/" on the way to the file system.
    @Test func aForgedEscapeInATreeCannotBecomeASlash() throws {
        let forged = "..\u{10FC2F}etc\u{10FC2F}passwd"
        let decoded = try Tree(decoding: Tree(nodes: [TreeNode(name: forged, kind: .file, mode: 0o100644)]).encoded(), what: "tree")
        let name = try #require(decoded.nodes.first?.name)
        #expect(!FileName.hasForgedEscape(name))
        #expect(!FileName.bytes(of: name).contains(0x2F))
        #expect(throws: Never.self) { try validateTreeName(name) }
    }

    /// A file created with exactly `name` in the directory whose path bytes are `directory`, through the C API.
    func create(_ name: [UInt8], in directory: [UInt8], contents: [UInt8]) throws {
        let path = directory + [0x2F] + name + [0]
        let descriptor = path.withUnsafeBufferPointer { $0.withMemoryRebound(to: CChar.self) { open($0.baseAddress!, O_WRONLY | O_CREAT | O_EXCL, 0o640) } }
        #expect(descriptor >= 0)
        _ = contents.withUnsafeBytes { write(descriptor, $0.baseAddress, $0.count) }
        close(descriptor)
    }

    /// The raw names in `directory`, through readdir.
    func listing(_ directory: String) -> Set<[UInt8]> {
        guard let handle = opendir(directory) else { return [] }
        defer { closedir(handle) }
        var names = Set<[UInt8]>()
        while let entry = readdir(handle) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) { Array($0.prefix { $0 != 0 }) }
            if name != [0x2E] && name != [0x2E, 0x2E] { names.insert(name) }
        }
        return names
    }

    func contents(of name: [UInt8], in directory: [UInt8]) -> [UInt8]? {
        let path = directory + [0x2F] + name + [0]
        let descriptor = path.withUnsafeBufferPointer { $0.withMemoryRebound(to: CChar.self) { open($0.baseAddress!, O_RDONLY) } }
        guard descriptor >= 0 else { return nil }
        defer { close(descriptor) }
        var buffer = [UInt8](repeating: 0, count: 1 << 16)
        let count = read(descriptor, &buffer, buffer.count)
        return count >= 0 ? Array(buffer[0..<count]) : nil
    }

    @Test func awkwardNamesAreBackedUpAndRestoredByteForByte() throws {
        let scene = try EngineScene(accounts: 1, sizeMB: 1)
        let repository = try scene.initialize()
        let source = scene.scratch.appending("source")
        try FileManager.default.createDirectory(atPath: source, withIntermediateDirectories: true)
        for (index, name) in Self.awkwardNames.enumerated() {
            try create(name, in: Array(source.utf8), contents: Array("file \(index)\n".utf8))
        }
        // A directory with a Latin-1 name holding a file, and a symlink whose target is not UTF-8.
        let directoryName: [UInt8] = Array("d".utf8) + [0xFF]
        let directoryPath = Array(source.utf8) + [0x2F] + directoryName + [0]
        #expect(directoryPath.withUnsafeBufferPointer { $0.withMemoryRebound(to: CChar.self) { mkdir($0.baseAddress!, 0o755) } } == 0)
        try create(Array("inner".utf8), in: Array(source.utf8) + [0x2F] + directoryName, contents: Array("inner\n".utf8))
        let linkTarget = Self.awkwardNames[0]  // "caf\xe9.txt"
        let linkPath = Array(source.utf8) + Array("/link".utf8) + [0]
        let targetBytes = linkTarget + [0]
        #expect(targetBytes.withUnsafeBufferPointer { target in linkPath.withUnsafeBufferPointer { link in
            target.withMemoryRebound(to: CChar.self) { t in link.withMemoryRebound(to: CChar.self) { symlink(t.baseAddress!, $0.baseAddress!) } }
        } } == 0)

        let snapshot = try repository.backup(directory: source, options: BackupOptions(tags: ["kind": "files"]))
        #expect(snapshot.summary.errors.isEmpty, "\(snapshot.summary.errors)")
        #expect(snapshot.summary.filesRead == Self.awkwardNames.count + 1)

        let target = scene.scratch.appending("restored")
        let restored = try repository.restore(snapshot, target: target)
        #expect(restored.errors.isEmpty, "\(restored.errors)")
        #expect(listing(target) == listing(source))
        for (index, name) in Self.awkwardNames.enumerated() {
            #expect(contents(of: name, in: Array(target.utf8)) == Array("file \(index)\n".utf8), "\(name)")
        }
        #expect(contents(of: Array("inner".utf8), in: Array(target.utf8) + [0x2F] + directoryName) == Array("inner\n".utf8))
        var buffer = [CChar](repeating: 0, count: 256)
        let count = readlink(target + "/link", &buffer, buffer.count)
        #expect(count >= 0 && buffer[0..<count].map { UInt8(bitPattern: $0) } == linkTarget)

        // An unchanged re-run reads nothing: every name, NFC and NFD alike, matched its own parent entry.
        let again = try repository.backup(directory: source, options: BackupOptions(tags: ["kind": "files"]))
        #expect(again.summary.filesRead == 0, "\(again.summary)")
        #expect(again.tree == snapshot.tree)
        #expect(try repository.verify(readData: true).isHealthy)
    }
}
