import CCurl
import Foundation
import Synchronization

/// An HTTP(S) client on one libcurl easy handle: requests are serialized and reuse the kept-alive connection.
/// Retries follow `configuration.retry`; the lock is not held while waiting between attempts.
public final class HTTPClient: Sendable {
    /// Signature of the per-attempt hook that returns extra headers (e.g. a fresh signature/timestamp/nonce).
    public typealias Authorizer = @Sendable (_ method: String, _ path: String, _ body: [UInt8]) throws -> [String: String]

    public let configuration: HTTPClientConfiguration
    private let easy: Mutex<CurlEasy>
    private let base: String

    public init(configuration: HTTPClientConfiguration) throws {
        let lowered = configuration.baseURL.lowercased()
        guard lowered.hasPrefix("http://") || lowered.hasPrefix("https://") else {
            throw HTTPClientError(kind: .invalidURL, url: configuration.baseURL, message: "base URL must start with http:// or https://")
        }
        if let pin = configuration.pinnedPublicKeySHA256, Data(base64Encoded: pin)?.count != 32 {
            throw HTTPClientError(kind: .invalidURL, url: configuration.baseURL,
                                  message: "pinned public key '\(pin)' is not base64 of a 32-byte SHA-256 digest")
        }
        self.configuration = configuration
        var base = configuration.baseURL
        while base.hasSuffix("/") { base.removeLast() }
        self.base = base
        easy = Mutex(try CurlEasy())
    }

    /// Sends one request, retrying per policy. `path` may carry a query string. Returns the response for any HTTP
    /// status (the last one once retries for 5xx/429 are used up); throws `HTTPClientError` when no response came,
    /// or whatever `authorize` throws.
    public func send(method: String, path: String, body: [UInt8]? = nil, headers: [String: String] = [:],
                     authorize: Authorizer? = nil) throws -> HTTPClientResponse {
        // An empty path is the configured URL exactly as given (a webhook's own path and query).
        let url = path.isEmpty ? configuration.baseURL : path.hasPrefix("/") ? base + path : base + "/" + path
        let attempts = max(1, configuration.retry.maxAttempts)
        var attempt = 1
        while true {
            var allHeaders = headers
            if let authorize {
                for (name, value) in try authorize(method, path, body ?? []) { allHeaders[name] = value }
            }
            let retryAfter: Double?
            do {
                let response = try perform(method: method, url: url, body: body, headers: allHeaders)
                guard response.status >= 500 || response.status == 429, attempt < attempts else { return response }
                retryAfter = (response.status == 429 || response.status == 503)
                    ? response.headers["retry-after"].flatMap { RetryPolicy.parseRetryAfter($0) } : nil
            } catch let error as HTTPClientError {
                guard error.isRetryable, attempt < attempts else { throw error }
                retryAfter = nil
            }
            let wait = configuration.retry.delay(afterAttempt: attempt, retryAfter: retryAfter)
            if wait > 0 { Thread.sleep(forTimeInterval: wait) }
            attempt += 1
        }
    }

    /// Convenience: JSON-encodes `value` (sorted keys) as the body and sets Content-Type.
    public func sendJSON<T: Encodable>(method: String, path: String, _ value: T, headers: [String: String] = [:],
                                       authorize: Authorizer? = nil) throws -> HTTPClientResponse {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        var headers = headers
        headers["Content-Type"] = "application/json"
        return try send(method: method, path: path, body: [UInt8](try encoder.encode(value)), headers: headers, authorize: authorize)
    }

    private func perform(method: String, url: String, body: [UInt8]?, headers: [String: String]) throws -> HTTPClientResponse {
        let configuration = self.configuration
        return try easy.withLock { easy -> HTTPClientResponse in
            try easy.resetForRequest()
            easy.collector.maximumBodyBytes = configuration.maximumResponseBytes
            try easy.set(CURLOPT_URL, url)
            try easy.set(CURLOPT_TIMEOUT_MS, Int(configuration.timeoutSeconds * 1000))
            try easy.set(CURLOPT_CONNECTTIMEOUT_MS, Int(configuration.connectTimeoutSeconds * 1000))
            try easy.set(CURLOPT_HTTP_VERSION, Int(CURL_HTTP_VERSION_1_1))
            if let local = configuration.localAddress { try easy.set(CURLOPT_INTERFACE, "host!" + local) }
            // No redirect is followed; a URL cannot switch to another protocol.
            try easy.set(CURLOPT_PROTOCOLS_STR, "http,https")
            if let pin = configuration.pinnedPublicKeySHA256 {
                try easy.set(CURLOPT_PINNEDPUBLICKEY, "sha256//" + pin)
                try easy.set(CURLOPT_SSL_VERIFYPEER, 0)
                try easy.set(CURLOPT_SSL_VERIFYHOST, 0)
            } else if let ca = configuration.caFile ?? CABundle.systemPath() {
                // Our libcurl may be the bundled one, whose compiled-in CA path is Debian's (see CABundle).
                try easy.set(CURLOPT_CAINFO, ca)
            }

            // "Expect:" stops libcurl waiting for 100 Continue before sending bodies larger than 1 KiB.
            var list: UnsafeMutablePointer<curl_slist>? = easy.curl.slistAppend(nil, "Expect:")
            defer { easy.curl.slistFreeAll(list) }
            var hasContentType = false
            for (name, value) in headers {
                if name.lowercased() == "content-type" { hasContentType = true }
                list = easy.curl.slistAppend(list, value.isEmpty ? "\(name);" : "\(name): \(value)")
            }
            if body != nil && !hasContentType { list = easy.curl.slistAppend(list, "Content-Type: application/json") }
            try easy.set(CURLOPT_HTTPHEADER, pointer: list)

            let code: CURLcode = try (body ?? []).withUnsafeBytes { bytes in
                switch (method, body) {
                case ("GET", nil):
                    try easy.set(CURLOPT_HTTPGET, 1)
                case ("HEAD", nil):
                    try easy.set(CURLOPT_NOBODY, 1)
                case (_, nil) where method != "POST":
                    try easy.set(CURLOPT_CUSTOMREQUEST, method)
                default:
                    // Body passed by pointer (not copied); it outlives perform() because we are inside withUnsafeBytes.
                    try easy.set(CURLOPT_POST, 1)
                    try easy.set(CURLOPT_POSTFIELDSIZE_LARGE, offset: Int64(bytes.count))
                    try easy.set(CURLOPT_POSTFIELDS, pointer: bytes.count > 0 ? bytes.baseAddress : UnsafeRawPointer(emptyBody.utf8Start))
                    if method != "POST" { try easy.set(CURLOPT_CUSTOMREQUEST, method) }
                }
                return easy.perform()
            }
            guard code == CURLE_OK else { throw Self.error(for: code, url: url, method: method, easy: easy, configuration: configuration) }
            let response = HTTPClientResponse(status: easy.responseCode, headers: easy.collector.headers,
                                              body: easy.collector.body, url: url)
            easy.collector.reset()
            return response
        }
    }

    private static func error(for code: CURLcode, url: String, method: String, easy: CurlEasy,
                              configuration: HTTPClientConfiguration) -> HTTPClientError {
        let detail = easy.errorMessage(for: code)
        let kind: HTTPClientError.Kind
        let message: String
        switch code {
        case CURLE_SSL_PINNEDPUBKEYNOTMATCH:
            kind = .pinMismatch
            message = "server public key does not match the pinned sha256//\(configuration.pinnedPublicKeySHA256 ?? "") (\(detail))"
        case CURLE_OPERATION_TIMEDOUT:
            kind = .timeout
            message = "\(method) timed out: \(detail)"
        case CURLE_COULDNT_CONNECT, CURLE_COULDNT_RESOLVE_HOST:
            kind = .connectionFailed
            message = "\(method) could not connect: \(detail)"
        case CURLE_WRITE_ERROR where easy.collector.bodyTooLarge:
            kind = .transport(Int32(code.rawValue))
            message = "\(method) answer is larger than the limit of \(easy.collector.maximumBodyBytes) bytes; refused"
        case CURLE_URL_MALFORMAT, CURLE_UNSUPPORTED_PROTOCOL:
            kind = .invalidURL
            message = "invalid URL: \(detail)"
        case CURLE_SSL_CONNECT_ERROR, CURLE_PEER_FAILED_VERIFICATION, CURLE_SSL_CERTPROBLEM, CURLE_SSL_CIPHER:
            kind = .tls
            message = "\(method) TLS handshake failed: \(detail)"
        default:
            kind = .transport(Int32(code.rawValue))
            message = "\(method) failed (curl error \(code.rawValue)): \(detail)"
        }
        return HTTPClientError(kind: kind, url: url, message: message)
    }
}

/// A valid pointer for zero-length POST bodies (libcurl needs non-NULL POSTFIELDS to send "Content-Length: 0").
private let emptyBody: StaticString = ""
