import Foundation
import CMicroHTTPD
import Synchronization

/// Per-request state living in libmicrohttpd's `con_cls` slot, from the first access-handler call to the
/// completion notification. Touched by the I/O thread that owns the connection, except while the connection is
/// suspended (handler-pool mode), when only the handler thread holding its `HandlerJob` touches it; so no lock.
final class RequestState {
    var body: [UInt8] = []
    var bodyTooLarge = false
    /// The body limit of this request's route.
    var maxBodyBytes = 0
    var responded = false
    /// Set by the handler thread just before it resumes the connection.
    var response: HTTPResponse?
}

/// The part of the server libmicrohttpd's callbacks see (through `void *`): routing, limits, counters.
final class RequestDispatcher: Sendable {
    let router: Router
    let maxBodyBytes: Int
    /// Oversized bodies up to this size (for a route's body limit) are read to their end before the 413 (see `access`).
    static func drainLimit(_ limit: Int) -> Int { max(limit.multipliedReportingOverflow(by: 4).overflow ? .max : limit * 4, 1 << 20) }
    /// Requests whose headers have arrived and whose completion was not yet reported; graceful shutdown waits for 0.
    let inFlight = Atomic<Int>(0)
    /// Connections suspended while a handler runs; libmicrohttpd must not be stopped while this is above 0.
    let suspended = Atomic<Int>(0)
    /// Set by shutdown once it stops waiting for in-flight requests; later requests get 503 instead of a handler thread.
    let stopping = Atomic<Bool>(false)
    /// Cleared when shutdown begins; libmicrohttpd then closes each new connection right after accepting it.
    let acceptingConnections = Atomic<Bool>(true)
    /// Last message libmicrohttpd logged; included in startup errors.
    let lastLogMessage = Mutex<String>("")
    /// Deferred answers not yet given (long polls); shutdown answers them with 503.
    let outstanding = Mutex<[ObjectIdentifier: HTTPResponder]>([:])
    /// Set once at start, before the daemon exists, so the callbacks never see nil.
    private let pool = Mutex<HandlerPool?>(nil)

    /// false: handlers run inline on the libmicrohttpd I/O thread (fastest); true: on `HandlerPool` threads.
    let usesHandlerPool: Bool

    init(router: Router, maxBodyBytes: Int, handlerThreads: Int) {
        self.router = router
        self.maxBodyBytes = maxBodyBytes
        usesHandlerPool = handlerThreads > 0
    }

    func startHandlers(threads: Int) {
        guard threads > 0 else { return }
        let pool = HandlerPool(threads: threads, name: "http-handler") { [self] job in runHandler(job) }
        self.pool.withLock { $0 = pool }
    }

    func stopHandlers() {
        pool.withLock { pool in
            pool?.stop()
            pool = nil
        }
    }

    func access(connection: OpaquePointer, url: UnsafePointer<CChar>, method: UnsafePointer<CChar>,
                uploadData: UnsafePointer<CChar>?, uploadDataSize: UnsafeMutablePointer<Int>,
                context: UnsafeMutablePointer<UnsafeMutableRawPointer?>) -> MHD_Result {
        guard let existing = context.pointee else {
            // First call: headers only. Answering now would make 0.9.75 close keep-alive connections, so only
            // reject bodies we already know are too large. A body up to `drainLimit` is read and dropped first and
            // answered 413 at its end: answering while the client is still sending makes the kernel reset the
            // connection, and the client sees "connection reset" instead of the 413. Anything larger is answered
            // at once and the connection closes, which is what we want for a client sending that much.
            let state = RequestState()
            state.maxBodyBytes = router.bodyLimit(for: String(cString: url)) ?? maxBodyBytes
            context.pointee = Unmanaged.passRetained(state).toOpaque()
            inFlight.add(1, ordering: .relaxed)
            if Self.hasAmbiguousLength(connection) {
                state.responded = true
                return queue(.error(400, "the request's length is ambiguous: two Content-Length headers that disagree, or one next to Transfer-Encoding"), on: connection)
            }
            if let length = MHD_lookup_connection_value(connection, .HEADER_KIND, "Content-Length"),
               let declared = Self.declaredLength(String(cString: length)), declared > state.maxBodyBytes {
                guard declared <= Self.drainLimit(state.maxBodyBytes) else {
                    state.responded = true
                    return queue(bodyTooLargeResponse(state.maxBodyBytes), on: connection)
                }
                state.bodyTooLarge = true
            }
            return .YES
        }
        let state = Unmanaged<RequestState>.fromOpaque(existing).takeUnretainedValue()
        let chunk = uploadDataSize.pointee
        if chunk > 0 {
            uploadDataSize.pointee = 0
            if !state.responded && !state.bodyTooLarge, let uploadData {
                if state.body.count + chunk > state.maxBodyBytes {
                    state.bodyTooLarge = true
                    state.body = []
                } else {
                    state.body.append(contentsOf: UnsafeRawBufferPointer(start: uploadData, count: chunk))
                }
            }
            return .YES
        }
        if let response = state.response {
            // Called again after the handler thread resumed the connection.
            state.response = nil
            return queue(response, on: connection)
        }
        if state.responded { return .YES }
        state.responded = true
        if state.bodyTooLarge { return queue(bodyTooLargeResponse(state.maxBodyBytes), on: connection) }
        let path = String(cString: url), methodName = String(cString: method)
        switch router.match(method: methodName, path: path) {
        case .notFound:
            return queue(.error(404, "no route for \(path)"), on: connection)
        case .methodNotAllowed(let allowed):
            var response = HTTPResponse.error(405, "method \(methodName) not allowed for \(path)")
            response.headers["Allow"] = allowed.joined(separator: ", ")
            return queue(response, on: connection)
        case .deferred(let handler):
            let request = HTTPRequest(method: methodName, path: path,
                                      query: Self.values(of: connection, kind: .GET_ARGUMENT_KIND, lowercaseKeys: false),
                                      headers: Self.values(of: connection, kind: .HEADER_KIND, lowercaseKeys: true),
                                      body: state.body, remoteAddress: BindAddress.describe(fk_mhd_client_address(connection)),
                                      cookies: Self.values(of: connection, kind: .COOKIE_KIND, lowercaseKeys: false))
            state.body = []
            suspended.add(1, ordering: .sequentiallyConsistent)
            if stopping.load(ordering: .sequentiallyConsistent) {
                suspended.subtract(1, ordering: .sequentiallyConsistent)
                return queue(.error(503, "server is shutting down"), on: connection)
            }
            MHD_suspend_connection(connection)
            let parked = ParkedConnection(state: state, connection: connection)
            let responder = HTTPResponder { [self] response in
                parked.state.response = response
                MHD_resume_connection(parked.connection)
                suspended.subtract(1, ordering: .sequentiallyConsistent)
            }
            outstanding.withLock { $0[ObjectIdentifier(responder)] = responder }
            responder.onAnswer = { [weak self] in self?.outstanding.withLock { _ = $0.removeValue(forKey: ObjectIdentifier(responder)) } }
            do {
                if let response = try handler(request, responder) { responder.respond(response) }
            } catch let error as HTTPError {
                responder.respond(.error(error.status, error.message))
            } catch {
                responder.respond(.error(500, "internal server error handling \(methodName) \(path)"))
            }
            return .YES
        case .handler(let handler):
            let request = HTTPRequest(method: methodName, path: path,
                                      query: Self.values(of: connection, kind: .GET_ARGUMENT_KIND, lowercaseKeys: false),
                                      headers: Self.values(of: connection, kind: .HEADER_KIND, lowercaseKeys: true),
                                      body: state.body, remoteAddress: BindAddress.describe(fk_mhd_client_address(connection)),
                                      cookies: Self.values(of: connection, kind: .COOKIE_KIND, lowercaseKeys: false))
            state.body = []
            guard usesHandlerPool else { return queue(Router.run(handler, request), on: connection) }
            guard let pool = pool.withLock({ $0 }) else {
                return queue(.error(503, "server is shutting down"), on: connection)
            }
            // Counted before checking `stopping` (and shutdown sets `stopping` before waiting for the count to reach
            // 0), so no connection can be suspended after shutdown decided to stop libmicrohttpd.
            suspended.add(1, ordering: .sequentiallyConsistent)
            if stopping.load(ordering: .sequentiallyConsistent) {
                suspended.subtract(1, ordering: .sequentiallyConsistent)
                return queue(.error(503, "server is shutting down"), on: connection)
            }
            MHD_suspend_connection(connection)
            pool.submit(HandlerJob(handler: handler, request: request, state: state, connection: connection))
            return .YES
        }
    }

    /// Runs on a handler thread. Resuming is the last touch of the job's state and connection.
    private func runHandler(_ job: HandlerJob) {
        job.state.response = Router.run(job.handler, job.request)
        MHD_resume_connection(job.connection)
        suspended.subtract(1, ordering: .sequentiallyConsistent)
    }

    /// A Content-Length value as a byte count: digits that do not fit in an Int (libmicrohttpd takes lengths up to
    /// 2^64 - 2) are as good as Int.max, not as no length at all, which skipped the early 413.
    static func declaredLength(_ text: String) -> Int? {
        let digits = text.trimmingCharacters(in: .whitespaces)
        guard !digits.isEmpty, digits.utf8.allSatisfy({ $0 >= UInt8(ascii: "0") && $0 <= UInt8(ascii: "9") }) else { return nil }
        return Int(digits) ?? Int.max
    }

    func completed(context: UnsafeMutablePointer<UnsafeMutableRawPointer?>?) {
        guard let context, let state = context.pointee else { return }
        Unmanaged<RequestState>.fromOpaque(state).release()
        context.pointee = nil
        inFlight.subtract(1, ordering: .relaxed)
    }

    func log(_ message: String) {
        lastLogMessage.withLock { $0 = message }
    }

    private func bodyTooLargeResponse(_ limit: Int) -> HTTPResponse {
        .error(413, "request body larger than the limit of \(limit) bytes")
    }

    private struct Collected {
        var values: [String: String] = [:]
        let lowercaseKeys: Bool
    }

    /// The headers that frame a request's body, as received (every copy of each).
    private struct FramingHeaders {
        var contentLengths: [String] = []
        var transferEncoding = false
    }

    /// Whether the request's length is ambiguous: two Content-Length headers that disagree, or one next to
    /// Transfer-Encoding (RFC 9112, 6.3). libmicrohttpd reads the body by the first length; a proxy in front may have
    /// used the other framing, and the rest of the stream would then be taken for a second request (request
    /// smuggling). Only these two headers are looked at: this runs for every request.
    private static func hasAmbiguousLength(_ connection: OpaquePointer) -> Bool {
        var framing = FramingHeaders()
        withUnsafeMutablePointer(to: &framing) { pointer in
            _ = MHD_get_connection_values(connection, .HEADER_KIND, MHDCallbacks.collectFramingHeader, pointer)
        }
        let lengths = Set(framing.contentLengths.map { $0.trimmingCharacters(in: .whitespaces) })
        return lengths.count > 1 || (!lengths.isEmpty && framing.transferEncoding)
    }

    fileprivate static func collectFraming(_ context: UnsafeMutableRawPointer, key: UnsafePointer<CChar>, value: UnsafePointer<CChar>?) {
        let framing = context.assumingMemoryBound(to: FramingHeaders.self)
        if strcasecmp(key, "content-length") == 0 {
            framing.pointee.contentLengths.append(value.map { String(cString: $0) } ?? "")
        } else if strcasecmp(key, "transfer-encoding") == 0 {
            framing.pointee.transferEncoding = true
        }
    }

    private static func values(of connection: OpaquePointer, kind: MHD_ValueKind, lowercaseKeys: Bool) -> [String: String] {
        var collected = Collected(lowercaseKeys: lowercaseKeys)
        withUnsafeMutablePointer(to: &collected) { pointer in
            _ = MHD_get_connection_values(connection, kind, MHDCallbacks.collectValue, pointer)
        }
        return collected.values
    }

    fileprivate static func collect(_ context: UnsafeMutableRawPointer, key: UnsafePointer<CChar>, value: UnsafePointer<CChar>?) {
        let collected = context.assumingMemoryBound(to: Collected.self)
        var name = String(cString: key)
        if collected.pointee.lowercaseKeys { name = name.lowercased() }
        collected.pointee.values[name] = value.map { String(cString: $0) } ?? ""
    }

    private func queue(_ response: HTTPResponse, on connection: OpaquePointer) -> MHD_Result {
        let created = response.body.withUnsafeBytes { bytes in
            MHD_create_response_from_buffer(bytes.count, UnsafeMutableRawPointer(mutating: bytes.baseAddress), .RESPMEM_MUST_COPY)
        }
        guard let mhdResponse = created else { return .NO }
        defer { MHD_destroy_response(mhdResponse) }
        for (name, value) in response.headers {
            _ = MHD_add_response_header(mhdResponse, name, value)
        }
        return MHD_queue_response(connection, UInt32(clamping: response.status), mhdResponse)
    }
}

/// A suspended connection waiting for a deferred answer. `@unchecked Sendable`: while the connection is suspended
/// only the responder touches it, once (see `HTTPResponder`).
struct ParkedConnection: @unchecked Sendable {
    let state: RequestState
    let connection: OpaquePointer
}

/// The C entry points libmicrohttpd calls. They capture nothing: context arrives through the `void *` arguments.
enum MHDCallbacks {
    static let acceptPolicy: MHD_AcceptPolicyCallback = { cls, _, _ in
        guard let cls else { return .NO }
        let dispatcher = Unmanaged<RequestDispatcher>.fromOpaque(cls).takeUnretainedValue()
        return dispatcher.acceptingConnections.load(ordering: .sequentiallyConsistent) ? .YES : .NO
    }

    static let access: MHD_AccessHandlerCallback = { cls, connection, url, method, _, uploadData, uploadDataSize, context in
        guard let cls, let connection, let url, let method, let uploadDataSize, let context else { return .NO }
        let dispatcher = Unmanaged<RequestDispatcher>.fromOpaque(cls).takeUnretainedValue()
        return dispatcher.access(connection: connection, url: url, method: method, uploadData: uploadData,
                                 uploadDataSize: uploadDataSize, context: context)
    }

    static let completed: MHD_RequestCompletedCallback = { cls, _, context, _ in
        guard let cls else { return }
        Unmanaged<RequestDispatcher>.fromOpaque(cls).takeUnretainedValue().completed(context: context)
    }

    static let collectFramingHeader: MHD_KeyValueIterator = { cls, _, key, value in
        guard let cls, let key else { return .YES }
        RequestDispatcher.collectFraming(cls, key: key, value: value)
        return .YES
    }

    static let collectValue: MHD_KeyValueIterator = { cls, _, key, value in
        guard let cls, let key else { return .YES }
        RequestDispatcher.collect(cls, key: key, value: value)
        return .YES
    }

    static let log: MHD_LogCallback = { cls, format, arguments in
        guard let cls, let format, let arguments else { return }
        var buffer = [CChar](repeating: 0, count: 512)
        fk_mhd_format_log(&buffer, buffer.count, format, arguments)
        let message = buffer.withUnsafeBufferPointer { String(cString: $0.baseAddress!) }
        Unmanaged<RequestDispatcher>.fromOpaque(cls).takeUnretainedValue()
            .log(message.trimmingCharacters(in: .whitespacesAndNewlines))
    }
}
