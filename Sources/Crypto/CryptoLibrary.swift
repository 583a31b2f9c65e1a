import CCrypto

/// Process-wide setup of OpenSSL's libcrypto.
public enum CryptoLibrary {
    /// Tells OpenSSL not to free its global state in an `atexit` handler. Our programs exit while other threads
    /// (an SSH connection being freed, a timer) may still be inside libcrypto, and OpenSSL's cleanup then pulls
    /// the locks out from under them: `offsite push` crashed with SIGSEGV at exit once in this project's test runs (main thread in OpenSSL's cleanup,
    /// another thread in a libcrypto lock).
    /// The kernel reclaims the memory anyway. Call it first thing in `main`, before any other OpenSSL use.
    public static func disableCleanupAtExit() {
        _ = OPENSSL_init_crypto(UInt64(OPENSSL_INIT_NO_ATEXIT), nil)
    }
}
