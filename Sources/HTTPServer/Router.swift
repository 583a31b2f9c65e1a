/// Handles one request. Runs on a libmicrohttpd I/O thread (or a handler-pool thread); handlers run concurrently.
public typealias HTTPHandler = @Sendable (HTTPRequest) throws -> HTTPResponse

/// Exact-path routing table: path -> method -> handler. Built before the server starts, immutable afterwards.
public struct Router: Sendable {
    private var routes: [String: [String: HTTPHandler]] = [:]

    public init() {}

    /// Registers `handler` for `method` (case-sensitive, e.g. "POST") on exactly `path`. A later registration replaces an earlier one.
    public mutating func add(_ method: String, _ path: String, _ handler: @escaping HTTPHandler) {
        routes[path, default: [:]][method] = handler
    }

    /// The outcome of looking a request up.
    enum Match {
        case handler(HTTPHandler)
        case notFound
        case methodNotAllowed(allowed: [String])
    }

    func match(method: String, path: String) -> Match {
        guard let methods = routes[path] else { return .notFound }
        guard let handler = methods[method] else { return .methodNotAllowed(allowed: methods.keys.sorted()) }
        return .handler(handler)
    }
}
