import Crypto
import Foundation
import Synchronization
import Testing

struct DigestTests {
    @Test func sha256MatchesKnownVector() {
        #expect(SHA256.hex(Array("abc".utf8)) == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
        #expect(SHA256.hex([UInt8]()) == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")
    }

    @Test func incrementalHashEqualsOneShot() {
        let data = SecureRandom.bytes(100_000)
        let hasher = SHA256Hasher()
        hasher.update(data[0..<33_333].withUnsafeBytes { Array($0) })
        hasher.update(data[33_333...].withUnsafeBytes { Array($0) })
        #expect(hasher.finalize() == SHA256.hash(data))
    }

    @Test func hmacMatchesRFC4231Case2() {
        let mac = HMACSHA256.authenticate(Array("what do ya want for nothing?".utf8), key: Array("Jefe".utf8))
        #expect(Hex.encode(mac) == "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843")
        #expect(HMACSHA256.equal(mac, mac))
        #expect(!HMACSHA256.equal(mac, HMACSHA256.authenticate([1], key: [2])))
    }

    @Test func preparedKeyMatchesRFC4231AndTheOneShot() {
        let key = HMACSHA256.Key(Array("Jefe".utf8))
        let message = Array("what do ya want for nothing?".utf8)
        // Twice: the second call reuses the pooled context the first one returned, re-keyed by a reset.
        for _ in 0..<2 {
            #expect(Hex.encode(key.authenticate(message)) == "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843")
        }
        let secret = SecureRandom.bytes(32)
        let prepared = HMACSHA256.Key(secret)
        for size in [0, 1, 63, 64, 65, 4096, 100_000] {
            let data = SecureRandom.bytes(size)
            #expect(prepared.authenticate(data) == HMACSHA256.authenticate(data, key: secret), "size \(size)")
        }
    }

    @Test func preparedKeyGivesEachThreadItsOwnContext() {
        let secret = SecureRandom.bytes(32)
        let prepared = HMACSHA256.Key(secret)
        let messages = (0..<64).map { SecureRandom.bytes(100 + $0 * 97) }
        let expected = messages.map { HMACSHA256.authenticate($0, key: secret) }
        let mismatches = Atomic<Int>(0)
        // Many threads at once: a context shared by two of them would mix their messages and give wrong MACs.
        DispatchQueue.concurrentPerform(iterations: 16) { _ in
            for _ in 0..<50 {
                for (message, mac) in zip(messages, expected) where prepared.authenticate(message) != mac {
                    mismatches.add(1, ordering: .relaxed)
                }
            }
        }
        #expect(mismatches.load(ordering: .relaxed) == 0)
    }

    @Test func threadContextsGiveTheKeysMACs() {
        let secret = SecureRandom.bytes(32)
        let messages = (0..<32).map { SecureRandom.bytes($0 * 131) }
        let expected = messages.map { HMACSHA256.authenticate($0, key: secret) }
        let key = HMACSHA256.Key(secret)
        // One context per thread, used for many messages: a context re-keyed wrongly between messages gives a wrong
        // MAC from the second message on.
        let mismatches = Atomic<Int>(0)
        DispatchQueue.concurrentPerform(iterations: 4) { _ in
            let context = key.makeThreadContext()
            for _ in 0..<20 {
                for (message, mac) in zip(messages, expected) where context.authenticate(message) != mac {
                    mismatches.add(1, ordering: .relaxed)
                }
            }
        }
        #expect(mismatches.load(ordering: .relaxed) == 0)
        // RFC 4231 test case 2, through a context.
        let context = HMACSHA256.Key(Array("Jefe".utf8)).makeThreadContext()
        #expect(Hex.encode(context.authenticate(Array("what do ya want for nothing?".utf8)))
                == "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843")
    }

    @Test func preparedCipherInteroperatesWithTheOneShotAndRejectsTampering() throws {
        let secret = SecureRandom.bytes(32)
        let cipher = AES256GCM.Key(secret)
        for size in [0, 1, 15, 16, 17, 4096, 100_000] {
            let message = SecureRandom.bytes(size)
            let aad = size.isMultiple(of: 2) ? [] : Array("header".utf8)
            // Each way round: the prepared key opens what the one-shot sealed, and the other way.
            #expect(try cipher.open(AES256GCM.seal(message, key: secret, aad: aad), aad: aad) == message, "size \(size)")
            #expect(try AES256GCM.open(cipher.seal(message, aad: aad), key: secret, aad: aad) == message, "size \(size)")
            // A context that just failed a tag check serves the next message (pooled contexts are reused).
            var damaged = try cipher.seal(message, aad: aad)
            damaged[damaged.count / 2] ^= 1
            #expect(throws: CryptoError.self) { try cipher.open(damaged, aad: aad) }
            #expect(throws: CryptoError.self) { try cipher.open(try cipher.seal(message, aad: aad), aad: Array("other".utf8)) }
            #expect(try cipher.open(cipher.seal(message, aad: aad), aad: aad) == message)
        }
        // Two seals of one message differ (a fresh nonce each time), so a pooled context never repeats a nonce.
        #expect(try cipher.seal([1, 2, 3]) != cipher.seal([1, 2, 3]))
        #expect(throws: CryptoError.self) { try AES256GCM.Key([1, 2, 3]).seal([1]) }
        #expect(throws: CryptoError.self) { try AES256GCM.Key([1, 2, 3]).open(cipher.seal([1])) }
    }

    @Test func preparedCipherGivesEachThreadItsOwnContext() throws {
        let cipher = AES256GCM.Key(SecureRandom.bytes(32))
        let messages = (0..<32).map { SecureRandom.bytes(50 + $0 * 131) }
        let failures = Atomic<Int>(0)
        DispatchQueue.concurrentPerform(iterations: 16) { _ in
            for _ in 0..<30 {
                for message in messages where (try? cipher.open(cipher.seal(message))) != message {
                    failures.add(1, ordering: .relaxed)
                }
            }
        }
        #expect(failures.load(ordering: .relaxed) == 0)
    }

    @Test func randomBytesDiffer() {
        let a = SecureRandom.bytes(32), b = SecureRandom.bytes(32)
        #expect(a.count == 32 && a != b)
    }

    @Test func encodingsRoundTrip() {
        let bytes = SecureRandom.bytes(67)
        #expect(Hex.decode(Hex.encode(bytes)) == bytes)
        #expect(Base64URL.decode(Base64URL.encode(bytes)) == bytes)
        #expect(!Base64URL.encode(bytes).contains("="))
        #expect(Base64URL.decode("not base64!") == nil)
        #expect(Hex.decode("zz") == nil)
    }
}

struct Ed25519Tests {
    @Test func signAndVerify() throws {
        let key = Ed25519PrivateKey()
        let message = Array("heartbeat".utf8)
        let signature = try key.signature(for: message)
        #expect(signature.count == 64)
        #expect(key.publicKey.isValidSignature(signature, for: message))
        #expect(!key.publicKey.isValidSignature(signature, for: Array("heartbeaT".utf8)))
        var tampered = signature
        tampered[10] ^= 1
        #expect(!key.publicKey.isValidSignature(tampered, for: message))
        #expect(!Ed25519PrivateKey().publicKey.isValidSignature(signature, for: message))
    }

    @Test func rfc8032TestVector1() throws {
        let seed = Hex.decode("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60")!
        let key = try Ed25519PrivateKey(rawRepresentation: seed)
        #expect(Hex.encode(key.publicKey.rawRepresentation) == "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a")
        let signature = try key.signature(for: [UInt8]())
        #expect(Hex.encode(signature).hasPrefix("e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e06522490155"))
    }

    @Test func keyRoundTripsThroughRawBytes() throws {
        let key = Ed25519PrivateKey()
        let again = try Ed25519PrivateKey(rawRepresentation: key.rawRepresentation)
        #expect(again.publicKey == key.publicKey)
    }

    @Test func wrongLengthKeysAreRefused() {
        #expect(throws: CryptoError.self) { try Ed25519PrivateKey(rawRepresentation: [1, 2, 3]) }
        #expect(throws: CryptoError.self) { try Ed25519PublicKey(rawRepresentation: []) }
        #expect(!Ed25519PrivateKey().publicKey.isValidSignature([1, 2], for: [UInt8]()))
    }
}

struct AESGCMTests {
    @Test func roundTripWithAAD() throws {
        let key = SecureRandom.bytes(32)
        for size in [0, 1, 15, 16, 17, 1 << 20] {
            let plaintext = SecureRandom.bytes(size)
            let sealed = try AES256GCM.seal(plaintext, key: key, aad: [7, 7])
            #expect(sealed.count == size + AES256GCM.overhead)
            #expect(try AES256GCM.open(sealed, key: key, aad: [7, 7]) == plaintext)
        }
    }

    @Test func tamperWrongKeyAndWrongAADAreRejected() throws {
        let key = SecureRandom.bytes(32)
        let sealed = try AES256GCM.seal(Array("secret".utf8), key: key)
        var flipped = sealed
        flipped[AES256GCM.nonceSize] ^= 0x40
        #expect(throws: CryptoError.self) { try AES256GCM.open(flipped, key: key) }
        #expect(throws: CryptoError.self) { try AES256GCM.open(sealed, key: SecureRandom.bytes(32)) }
        #expect(throws: CryptoError.self) { try AES256GCM.open(sealed, key: key, aad: [1]) }
        #expect(throws: CryptoError.self) { try AES256GCM.open([1, 2, 3], key: key) }
        #expect(throws: CryptoError.self) { try AES256GCM.seal([1], key: [1, 2]) }
    }

    @Test func noncesAreFresh() throws {
        let key = SecureRandom.bytes(32)
        #expect(try AES256GCM.seal([1], key: key) != AES256GCM.seal([1], key: key))
    }
}

struct KeyDerivationTests {
    @Test func scryptMatchesRFC7914Vector2() throws {
        let key = try PasswordKDF.scrypt(password: Array("password".utf8), salt: Array("NaCl".utf8), n: 1024, r: 8, p: 16, length: 64)
        #expect(Hex.encode(key).hasPrefix("fdbabe1c9d3472007856e7190d01e9fe7c6ad7cbc8237830e77376634b373162"))
    }

    @Test func hkdfMatchesRFC5869Case1() throws {
        let okm = try HKDFSHA256.derive(key: [UInt8](repeating: 0x0b, count: 22), salt: Hex.decode("000102030405060708090a0b0c")!,
                                        info: Hex.decode("f0f1f2f3f4f5f6f7f8f9")!, length: 42)
        #expect(Hex.encode(okm) == "3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf34007208d5b887185865")
    }

    @Test func sealedBoxOpensOnlyForRecipient() throws {
        let recipient = X25519PrivateKey()
        let secret = SecureRandom.bytes(64)
        let box = try SealedBox.seal(secret, to: recipient.publicKey)
        #expect(try SealedBox.open(box, with: recipient) == secret)
        #expect(throws: CryptoError.self) { try SealedBox.open(box, with: X25519PrivateKey()) }
        var damaged = box
        damaged[40] ^= 1
        #expect(throws: CryptoError.self) { try SealedBox.open(damaged, with: recipient) }
        let restored = try X25519PrivateKey(rawRepresentation: recipient.rawRepresentation)
        #expect(try SealedBox.open(box, with: restored) == secret)
    }
}

struct CertificateTests {
    @Test func selfSignedCertificateParsesAndPinMatchesOpenSSL() throws {
        let certificate = try SelfSignedCertificate.generate(commonName: "fleetkeep-controller",
                                                             subjectAltNames: ["localhost", "127.0.0.1"], validDays: 365)
        #expect(certificate.certificatePEM.hasPrefix("-----BEGIN CERTIFICATE-----"))
        #expect(certificate.privateKeyPEM.hasPrefix("-----BEGIN PRIVATE KEY-----"))
        let pin = try SelfSignedCertificate.publicKeySHA256(certificatePEM: certificate.certificatePEM)
        #expect(Data(base64Encoded: pin)?.count == 32)

        // Cross-check with the openssl command line, an independent implementation of the same pin.
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("fk-cert-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: directory) }
        let path = directory.appendingPathComponent("cert.pem").path
        try certificate.certificatePEM.write(toFile: path, atomically: true, encoding: .utf8)
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/bin/sh")
        process.arguments = ["-c", "openssl x509 -in '\(path)' -pubkey -noout | openssl pkey -pubin -outform der | openssl dgst -sha256 -binary | base64; openssl x509 -in '\(path)' -noout -text"]
        let pipe = Pipe()
        process.standardOutput = pipe
        try process.run()
        let output = String(decoding: pipe.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        process.waitUntilExit()
        #expect(output.hasPrefix(pin + "\n"))
        #expect(output.contains("DNS:localhost"))
        #expect(output.contains("IP Address:127.0.0.1"))
        #expect(output.contains("CN = fleetkeep-controller"))
    }

    @Test func garbageCertificateIsRefused() {
        #expect(throws: CryptoError.self) { try SelfSignedCertificate.publicKeySHA256(certificatePEM: "hello") }
    }
}

/// scrypt parameters come from key files that are not authenticated: hostile ones are refused, not run or trapped on.
struct HostileKDFParameterTests {
    @Test func outOfRangeScryptParametersAreRefused() throws {
        for n: UInt64 in [0, 1, 3, 1 << 23, 1 << 53, 9_007_199_254_740_992, .max] {
            #expect(throws: CryptoError.self, "N=\(n)") { _ = try PasswordKDF.scrypt(password: [1], salt: [2], n: n) }
        }
        #expect(throws: CryptoError.self) { _ = try PasswordKDF.scrypt(password: [1], salt: [2], n: 1 << 10, r: .max) }
        #expect(try PasswordKDF.scrypt(password: [1], salt: [2], n: 1 << 10).count == 32)
    }
}
