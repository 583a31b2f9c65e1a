import Foundation

/// Where this server keeps its CA certificates, for TLS verified against CAs (webhooks, SMTP), not pinned.
///
/// The packaged programs carry their own libcurl, whose compiled-in CA path is Debian's; on a RHEL-family server that
/// file does not exist, and every verified connection would fail. So the bundle is looked up at run time.
public enum CABundle {
    /// Variables that name a bundle explicitly, in the order they are honoured: OpenSSL's, then curl's.
    public static let environmentVariables = ["SSL_CERT_FILE", "CURL_CA_BUNDLE"]

    /// Known locations, first match wins: Debian and Ubuntu; RHEL, CentOS, AlmaLinux, Rocky and CloudLinux (the
    /// compatibility link, then the file it points to); SUSE; Alpine and the BSDs.
    public static let candidates = [
        "/etc/ssl/certs/ca-certificates.crt",
        "/etc/pki/tls/certs/ca-bundle.crt",
        "/etc/pki/ca-trust/extracted/pem/tls-ca-bundle.pem",
        "/etc/ssl/ca-bundle.pem",
        "/etc/ssl/cert.pem",
    ]

    /// The CA bundle to verify servers with: the file named by `SSL_CERT_FILE` or `CURL_CA_BUNDLE` when it is a
    /// readable regular file, else the first readable regular file among `candidates` below `root`, else nil
    /// (libcurl's compiled-in default then applies). A variable naming a missing file is passed over, not trusted
    /// blindly: the system bundle is still the right answer for a typo'd path.
    /// - Parameters:
    ///   - environment: the variables to honour (the process environment by default).
    ///   - root: the directory the known locations are taken relative to ("/" by default; tests pass a scratch tree).
    public static func systemPath(environment: [String: String] = ProcessInfo.processInfo.environment,
                                  root: String = "/") -> String? {
        for variable in environmentVariables {
            if let path = environment[variable], !path.isEmpty, isReadableRegularFile(path) { return path }
        }
        let prefix = root.hasSuffix("/") ? String(root.dropLast()) : root
        return candidates.lazy.map { prefix + $0 }.first(where: isReadableRegularFile)
    }

    /// A directory or a dangling link in a known place is not a bundle.
    private static func isReadableRegularFile(_ path: String) -> Bool {
        var status = stat()
        guard stat(path, &status) == 0, status.st_mode & S_IFMT == S_IFREG else { return false }
        return access(path, R_OK) == 0
    }
}
