import Foundation

/// How often and how patiently `HTTPClient` retries. Transport errors (except pin mismatch and bad URLs), 5xx and
/// 429 are retried with exponential backoff and full jitter; `Retry-After` on 429/503 replaces the computed delay.
public struct RetryPolicy: Sendable {
    /// Total attempts including the first; 1 means no retries.
    public var maxAttempts = 4
    /// Seconds; the backoff cap for retry n (1-based) is `baseDelay * 2^(n-1)`, limited by `maxDelay`.
    public var baseDelay = 0.2
    /// Upper bound in seconds for any single wait, including one asked for by `Retry-After`.
    public var maxDelay = 30.0

    public init(maxAttempts: Int = 4, baseDelay: Double = 0.2, maxDelay: Double = 30.0) {
        self.maxAttempts = maxAttempts
        self.baseDelay = baseDelay
        self.maxDelay = maxDelay
    }

    /// A single attempt.
    public static let none = RetryPolicy(maxAttempts: 1)

    /// Seconds to wait before the next attempt after `attempt` (1-based) failed; `retryAfter` is the server's wish.
    func delay(afterAttempt attempt: Int, retryAfter: Double?) -> Double {
        if let retryAfter { return min(max(retryAfter, 0), maxDelay) }
        let exponent = Double(min(max(attempt - 1, 0), 62))
        let cap = min(maxDelay, baseDelay * pow(2, exponent))
        return cap > 0 ? Double.random(in: 0...cap) : 0
    }

    /// Parses a `Retry-After` value: delta-seconds or an HTTP-date (IMF-fixdate, RFC 850 or asctime). nil if unparsable.
    static func parseRetryAfter(_ value: String, now: Date = Date()) -> Double? {
        let trimmed = value.trimmingCharacters(in: .whitespaces)
        if let seconds = Int(trimmed) { return seconds >= 0 ? Double(seconds) : nil }
        let formatter = DateFormatter()
        formatter.locale = Locale(identifier: "en_US_POSIX")
        formatter.timeZone = TimeZone(identifier: "GMT")
        for format in ["EEE, dd MMM yyyy HH:mm:ss zzz", "EEEE, dd-MMM-yy HH:mm:ss zzz", "EEE MMM d HH:mm:ss yyyy"] {
            formatter.dateFormat = format
            if let date = formatter.date(from: trimmed) { return max(0, date.timeIntervalSince(now)) }
        }
        return nil
    }
}

/// Where and how an `HTTPClient` connects.
public struct HTTPClientConfiguration: Sendable {
    /// Scheme, host and port, e.g. "https://127.0.0.1:8443"; request paths are appended.
    public var baseURL: String
    /// Base64 SHA-256 of the server's SubjectPublicKeyInfo. When set, CA and host-name verification are off and the
    /// pin alone is the trust anchor (our controller certificate is self-signed).
    public var pinnedPublicKeySHA256: String?
    /// Whole-request timeout in seconds (per attempt).
    public var timeoutSeconds: Double = 30
    public var connectTimeoutSeconds: Double = 10
    public var retry = RetryPolicy()
    /// The largest response body accepted; a larger one fails the request instead of filling memory.
    public var maximumResponseBytes = Self.defaultMaximumResponseBytes
    public static let defaultMaximumResponseBytes = 16 << 20
    /// Local address to connect from (e.g. "127.0.0.2" to test per-address limits on loopback); nil lets the kernel pick.
    public var localAddress: String?
    /// Without a pin: PEM CA certificates to verify the server with; nil takes the system bundle (`CABundle`).
    public var caFile: String?

    public init(baseURL: String, pinnedPublicKeySHA256: String? = nil, timeoutSeconds: Double = 30,
                connectTimeoutSeconds: Double = 10, retry: RetryPolicy = RetryPolicy(), localAddress: String? = nil,
                caFile: String? = nil) {
        self.localAddress = localAddress
        self.caFile = caFile
        self.baseURL = baseURL
        self.pinnedPublicKeySHA256 = pinnedPublicKeySHA256
        self.timeoutSeconds = timeoutSeconds
        self.connectTimeoutSeconds = connectTimeoutSeconds
        self.retry = retry
    }
}

/// A completed HTTP exchange (any status; non-2xx is not an error at this level).
public struct HTTPClientResponse: Sendable {
    public let status: Int
    /// Response headers with lowercased names; repeated headers are joined with ", ".
    public let headers: [String: String]
    public let body: [UInt8]
    /// The URL this response came from (for error messages).
    public let url: String

    public init(status: Int, headers: [String: String], body: [UInt8], url: String = "") {
        self.status = status
        self.headers = headers
        self.body = body
        self.url = url
    }

    /// Decodes the body as JSON; throws `HTTPClientError` of kind `.decoding` naming the URL, status and type.
    public func decode<T: Decodable>(_ t: T.Type) throws -> T {
        do {
            return try JSONDecoder().decode(t, from: Data(body))
        } catch {
            let preview = String(decoding: body.prefix(200), as: UTF8.self)
            throw HTTPClientError(kind: .decoding, url: url,
                                  message: "HTTP \(status) body is not a valid \(T.self): \(error) (body starts: \(preview))")
        }
    }

    /// True for 200...299.
    public var isSuccess: Bool { (200...299).contains(status) }
}

/// A request that produced no HTTP response (or an undecodable one).
public struct HTTPClientError: Error, Sendable, CustomStringConvertible {
    /// What went wrong, coarsely; `transport` carries libcurl's CURLcode for everything not singled out.
    public enum Kind: Sendable, Equatable {
        case transport(Int32)
        case connectionFailed
        case timeout
        case pinMismatch
        case tls
        case invalidURL
        case decoding
    }

    public let kind: Kind
    public let url: String
    public let message: String

    public init(kind: Kind, url: String, message: String) {
        self.kind = kind
        self.url = url
        self.message = message
    }

    public var description: String { "request to \(url) failed: \(message)" }

    /// Whether another attempt could plausibly succeed.
    var isRetryable: Bool {
        switch kind {
        case .pinMismatch, .invalidURL, .decoding: return false
        default: return true
        }
    }
}
