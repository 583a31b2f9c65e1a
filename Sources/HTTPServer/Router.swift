/// Handles one request. Runs on a libmicrohttpd I/O thread (or a handler-pool thread); handlers run concurrently.
public typealias HTTPHandler = @Sendable (HTTPRequest) throws -> HTTPResponse

/// Handles one request whose answer may come later: it returns a response now, or nil after keeping `responder` to
/// answer from another thread (a long poll). It runs on an I/O thread and must not block.
public typealias DeferredHTTPHandler = @Sendable (HTTPRequest, HTTPResponder) throws -> HTTPResponse?

/// Exact-path routing table: path -> method -> handler. Built before the server starts, immutable afterwards.
public struct Router: Sendable {
    private var routes: [String: [String: HTTPHandler]] = [:]
    private var deferredRoutes: [String: [String: DeferredHTTPHandler]] = [:]
    private var bodyLimits: [String: Int] = [:]

    public init() {}

    /// Lets requests to exactly `path` carry bodies up to `bytes` instead of the server's `maxBodyBytes`.
    public mutating func setBodyLimit(_ bytes: Int, for path: String) {
        bodyLimits[path] = max(0, bytes)
    }

    func bodyLimit(for path: String) -> Int? { bodyLimits[path] }

    /// Registers `handler` for `method` (case-sensitive, e.g. "POST") on exactly `path`. A later registration replaces an earlier one.
    public mutating func add(_ method: String, _ path: String, _ handler: @escaping HTTPHandler) {
        routes[path, default: [:]][method] = handler
    }

    /// Registers a handler that may answer later, through its `HTTPResponder` (see `DeferredHTTPHandler`).
    public mutating func addDeferred(_ method: String, _ path: String, _ handler: @escaping DeferredHTTPHandler) {
        deferredRoutes[path, default: [:]][method] = handler
        routes[path, default: [:]][method] = { _ in throw HTTPError(500, "deferred route called directly") }
    }

    /// Replaces the handler for `method` on `path` with `wrapper(handler)`, to measure or guard it without the route's
    /// owner knowing. Deferred routes and paths without such a handler are left as they are.
    public mutating func wrap(_ method: String, _ path: String, _ wrapper: (@escaping HTTPHandler) -> HTTPHandler) {
        guard deferredRoutes[path]?[method] == nil, let handler = routes[path]?[method] else { return }
        routes[path]?[method] = wrapper(handler)
    }

    /// The outcome of looking a request up.
    enum Match {
        case deferred(DeferredHTTPHandler)
        case handler(HTTPHandler)
        case notFound
        case methodNotAllowed(allowed: [String])
    }

    func match(method: String, path: String) -> Match {
        guard let methods = routes[path] else { return .notFound }
        guard let handler = methods[method] else { return .methodNotAllowed(allowed: methods.keys.sorted()) }
        if let deferred = deferredRoutes[path]?[method] { return .deferred(deferred) }
        return .handler(handler)
    }

    /// Routes and runs one request in the calling thread, mapping errors exactly as the server does
    /// (`HTTPError` to its status, anything else to 500). Lets tests drive handlers without a socket.
    public func handle(_ request: HTTPRequest) -> HTTPResponse {
        switch match(method: request.method, path: request.path) {
        case .notFound:
            return .error(404, "no route for \(request.path)")
        case .methodNotAllowed(let allowed):
            var response = HTTPResponse.error(405, "method \(request.method) not allowed for \(request.path)")
            response.headers["Allow"] = allowed.joined(separator: ", ")
            return response
        case .handler(let handler):
            return Self.run(handler, request)
        case .deferred(let handler):
            // Tests without a socket: wait for the answer on this thread.
            let responder = HTTPResponder { _ in }
            let immediate: HTTPResponse?
            do { immediate = try handler(request, responder) } catch let error as HTTPError {
                return .error(error.status, error.message)
            } catch {
                return .error(500, "internal server error handling \(request.method) \(request.path)")
            }
            return immediate ?? responder.wait()
        }
    }

    /// Runs a handler, turning a thrown `HTTPError` into its status and anything else into a plain 500.
    static func run(_ handler: HTTPHandler, _ request: HTTPRequest) -> HTTPResponse {
        do {
            return try handler(request)
        } catch let error as HTTPError {
            return .error(error.status, error.message)
        } catch {
            // Internal details stay in the server; handlers that want to explain throw HTTPError.
            return .error(500, "internal server error handling \(request.method) \(request.path)")
        }
    }
}
