import CCrypto
import Foundation

/// A self-signed X.509 certificate (EC P-256, SHA-256) for the controller's TLS listener.
/// Agents never trust it through a CA: they pin the SHA-256 of its public key, carried in the enrollment token.
public struct SelfSignedCertificate: Sendable {
    public let certificatePEM: String
    /// PKCS#8 PEM of the private key. Callers store it with mode 0600.
    public let privateKeyPEM: String

    /// Creates a fresh key pair and certificate. `subjectAltNames` are host names or IP addresses.
    public static func generate(commonName: String, subjectAltNames: [String], validDays: Int) throws -> SelfSignedCertificate {
        let key = try generateP256Key()
        guard let certificate = X509_new() else { throw CryptoError.openssl("certificate allocation") }
        defer { X509_free(certificate) }
        try check(X509_set_version(certificate, 2), "certificate version")
        // A random positive 63-bit serial keeps certificates from two `init` runs distinct.
        let serial = SecureRandom.bytes(8).reduce(0) { ($0 << 8) | Int($1) } & Int(Int64.max)
        try check(ASN1_INTEGER_set(X509_get_serialNumber(certificate), serial), "certificate serial")
        guard X509_gmtime_adj(X509_getm_notBefore(certificate), -3600) != nil,
              X509_gmtime_adj(X509_getm_notAfter(certificate), validDays * 86400) != nil else {
            throw CryptoError.openssl("certificate validity")
        }
        try check(X509_set_pubkey(certificate, key.pointer), "certificate public key")
        guard let name = X509_get_subject_name(certificate) else { throw CryptoError.openssl("certificate subject") }
        try check(X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC, commonName, -1, -1, 0), "certificate common name")
        try check(X509_set_issuer_name(certificate, name), "certificate issuer")
        let altNames = subjectAltNames.map { isIPAddress($0) ? "IP:\($0)" : "DNS:\($0)" }.joined(separator: ",")
        if !altNames.isEmpty {
            guard let extensionValue = X509V3_EXT_conf_nid(nil, nil, NID_subject_alt_name, altNames) else {
                throw CryptoError.openssl("certificate subjectAltName '\(altNames)'")
            }
            defer { X509_EXTENSION_free(extensionValue) }
            try check(X509_add_ext(certificate, extensionValue, -1), "certificate subjectAltName")
        }
        guard X509_sign(certificate, key.pointer, EVP_sha256()) > 0 else { throw CryptoError.openssl("certificate signature") }
        let certificatePEM = try writePEM("certificate PEM") { PEM_write_bio_X509($0, certificate) }
        let keyPEM = try writePEM("private key PEM") { PEM_write_bio_PrivateKey($0, key.pointer, nil, nil, 0, nil, nil) }
        return SelfSignedCertificate(certificatePEM: certificatePEM, privateKeyPEM: keyPEM)
    }

    /// Base64 SHA-256 of the certificate's SubjectPublicKeyInfo (DER): the value curl pins as `sha256//<this>`.
    public static func publicKeySHA256(certificatePEM: String) throws -> String {
        let bytes = Array(certificatePEM.utf8)
        guard let bio = BIO_new_mem_buf(bytes, Int32(bytes.count)) else { throw CryptoError.openssl("certificate read") }
        defer { BIO_free(bio) }
        guard let certificate = PEM_read_bio_X509(bio, nil, nil, nil) else {
            throw CryptoError(operation: "certificate read", message: "not a PEM certificate: \(CryptoError.openssl("PEM").message)")
        }
        defer { X509_free(certificate) }
        guard let publicKey = X509_get0_pubkey(certificate) else { throw CryptoError.openssl("certificate public key") }
        var derPointer: UnsafeMutablePointer<UInt8>?
        let length = i2d_PUBKEY(publicKey, &derPointer)
        guard length > 0, let derPointer else { throw CryptoError.openssl("public key DER") }
        defer { CRYPTO_free(derPointer, #fileID, #line) }
        let digest = SHA256.hash(UnsafeRawBufferPointer(start: derPointer, count: Int(length)))
        return Data(digest).base64EncodedString()
    }

    private static func generateP256Key() throws -> PKey {
        guard let context = EVP_PKEY_CTX_new_from_name(nil, "EC", nil) else { throw CryptoError.openssl("P-256 key generation") }
        defer { EVP_PKEY_CTX_free(context) }
        try check(EVP_PKEY_keygen_init(context), "P-256 keygen init")
        try check(EVP_PKEY_CTX_set_group_name(context, "P-256"), "P-256 curve")
        var key: OpaquePointer?
        try check(EVP_PKEY_generate(context, &key), "P-256 keygen")
        guard let key else { throw CryptoError.openssl("P-256 keygen") }
        return PKey(key)
    }

    private static func writePEM(_ operation: String, _ write: (OpaquePointer) -> Int32) throws -> String {
        guard let bio = BIO_new(BIO_s_mem()) else { throw CryptoError.openssl(operation) }
        defer { BIO_free(bio) }
        try check(write(bio), operation)
        let pending = Int(BIO_ctrl_pending(bio))
        var buffer = [UInt8](repeating: 0, count: pending)
        guard BIO_read(bio, &buffer, Int32(pending)) == Int32(pending) else { throw CryptoError.openssl(operation) }
        return String(decoding: buffer, as: UTF8.self)
    }

    private static func isIPAddress(_ text: String) -> Bool {
        var v4 = in_addr(), v6 = in6_addr()
        return inet_pton(AF_INET, text, &v4) == 1 || inet_pton(AF_INET6, text, &v6) == 1
    }
}
