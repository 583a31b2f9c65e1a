import Foundation

/// Failure while creating test TLS material with the `openssl` command-line tool.
public struct TLSFilesError: Error, CustomStringConvertible {
    public let step: String
    public let output: String
    public var description: String { "makeSelfSignedTLS: \(step) failed: \(output)" }
}

/// Writes a self-signed EC P-256 certificate for 127.0.0.1/localhost into `dir` using the `openssl` CLI and returns
/// the file paths plus the base64 SHA-256 of the certificate's SubjectPublicKeyInfo (libcurl's "sha256//" pin).
public func makeSelfSignedTLS(in dir: String) throws -> (certPath: String, keyPath: String, pinBase64: String) {
    guard let openssl = ProcessRunner.which("openssl") else {
        throw TLSFilesError(step: "finding openssl", output: "openssl is not on PATH")
    }
    let certPath = dir + "/cert.pem", keyPath = dir + "/key.pem"
    let made = try ProcessRunner.run(openssl, [
        "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", keyPath, "-out", certPath, "-days", "2", "-subj", "/CN=127.0.0.1",
        "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost",
    ])
    guard made.status == 0 else { throw TLSFilesError(step: "openssl req", output: made.stderr) }
    let pin = try ProcessRunner.run("/bin/sh", ["-c",
        "'\(openssl)' x509 -in '\(certPath)' -pubkey -noout | '\(openssl)' pkey -pubin -outform der"
        + " | '\(openssl)' dgst -sha256 -binary | base64"])
    let pinBase64 = pin.stdout.trimmingCharacters(in: .whitespacesAndNewlines)
    guard pin.status == 0, Data(base64Encoded: pinBase64)?.count == 32 else {
        throw TLSFilesError(step: "computing the public key pin", output: pin.stderr + pin.stdout)
    }
    return (certPath, keyPath, pinBase64)
}
