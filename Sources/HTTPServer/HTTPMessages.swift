import Foundation

/// One parsed HTTP request as handed to a route handler. Immutable, so it can cross threads freely.
public struct HTTPRequest: Sendable {
    /// The request method exactly as sent ("GET", "POST", ...).
    public let method: String
    /// The path without the query string, e.g. "/v1/heartbeat".
    public let path: String
    /// Decoded query arguments; a key given without "=" maps to "".
    public let query: [String: String]
    /// Request headers with lowercased names.
    public let headers: [String: String]
    /// The complete request body (empty when none was sent).
    public let body: [UInt8]
    /// Numeric address of the peer, e.g. "127.0.0.1" or "::1".
    public let remoteAddress: String
    /// Cookies as libmicrohttpd parsed them from the Cookie header (name -> value).
    public let cookies: [String: String]

    public init(method: String, path: String, query: [String: String] = [:], headers: [String: String] = [:],
                body: [UInt8] = [], remoteAddress: String = "", cookies: [String: String] = [:]) {
        self.method = method
        self.path = path
        self.query = query
        self.headers = headers
        self.body = body
        self.remoteAddress = remoteAddress
        self.cookies = cookies
    }

    /// Decodes the body as JSON, throwing `HTTPError(400, ...)` that names the expected type when it is malformed.
    public func decodeJSON<T: Decodable>(_ type: T.Type) throws -> T {
        do {
            return try JSONDecoder().decode(type, from: Data(body))
        } catch {
            throw HTTPError(400, "malformed JSON body for \(T.self): \(JSONErrorText.describe(error))")
        }
    }
}

/// A response produced by a handler. Value type; the server copies the body into libmicrohttpd once.
public struct HTTPResponse: Sendable {
    public var status: Int
    public var headers: [String: String]
    public var body: [UInt8]

    public init(status: Int, headers: [String: String] = [:], body: [UInt8] = []) {
        self.status = status
        self.headers = headers
        self.body = body
    }

    /// A JSON body with sorted keys and unescaped slashes, so equal values always give identical bytes.
    /// If `value` cannot be encoded the result is a 500 error response naming the type.
    public static func json<T: Encodable>(_ value: T, status: Int = 200) -> HTTPResponse {
        do {
            let data = try JSONCoding.encoder().encode(value)
            return HTTPResponse(status: status, headers: ["Content-Type": "application/json"], body: [UInt8](data))
        } catch {
            return .error(500, "could not encode \(T.self) as JSON: \(error)")
        }
    }

    /// A text body.
    public static func text(_ s: String, status: Int = 200, contentType: String = "text/plain; charset=utf-8") -> HTTPResponse {
        HTTPResponse(status: status, headers: ["Content-Type": contentType], body: Array(s.utf8))
    }

    /// The uniform error shape `{"error": message}`.
    public static func error(_ status: Int, _ message: String) -> HTTPResponse {
        json(["error": message], status: status)
    }
}

/// Thrown by handlers to answer with a specific status and `{"error": message}`; any other error becomes a 500.
public struct HTTPError: Error, Sendable, CustomStringConvertible {
    public let status: Int
    public let message: String

    public init(_ status: Int, _ message: String) {
        self.status = status
        self.message = message
    }

    public var description: String { "HTTP \(status): \(message)" }
}

/// JSONEncoder configured the same way everywhere (deterministic bytes for signing and comparing).
enum JSONCoding {
    static func encoder() -> JSONEncoder {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        return encoder
    }
}

/// Short, human-readable text for JSON decoding failures (the default description is very long).
enum JSONErrorText {
    static func describe(_ error: any Error) -> String {
        guard let decoding = error as? DecodingError else { return "\(error)" }
        switch decoding {
        case .dataCorrupted(let context): return context.debugDescription
        case .keyNotFound(let key, _): return "missing key '\(key.stringValue)'"
        case .typeMismatch(let type, let context):
            return "wrong type at '\(context.codingPath.map(\.stringValue).joined(separator: "."))', expected \(type)"
        case .valueNotFound(let type, let context):
            return "null at '\(context.codingPath.map(\.stringValue).joined(separator: "."))', expected \(type)"
        @unknown default: return "\(decoding)"
        }
    }
}

/// Answers one deferred request, once: later calls are ignored, so a long poll answered by its timeout and by new work
/// at the same moment gets exactly one answer. Thread-safe.
public final class HTTPResponder: @unchecked Sendable {
    // @unchecked: every field is behind `lock`, and `deliver` is called at most once.
    private let lock = NSCondition()
    private var answered = false
    private var answer: HTTPResponse?
    private let deliver: @Sendable (HTTPResponse) -> Void
    /// Called after the answer went out (the server forgets the responder).
    var onAnswer: (@Sendable () -> Void)?

    init(deliver: @escaping @Sendable (HTTPResponse) -> Void) { self.deliver = deliver }

    /// Sends `response`; true when this call answered, false when the request was answered already.
    @discardableResult
    public func respond(_ response: HTTPResponse) -> Bool {
        lock.lock()
        guard !answered else { lock.unlock(); return false }
        answered = true
        answer = response
        let done = onAnswer
        lock.broadcast()
        lock.unlock()
        deliver(response)
        done?()
        return true
    }

    public var isAnswered: Bool { lock.lock(); defer { lock.unlock() }; return answered }

    func wait() -> HTTPResponse {
        lock.lock()
        defer { lock.unlock() }
        while answer == nil { lock.wait() }
        return answer ?? .error(500, "no answer")
    }
}
