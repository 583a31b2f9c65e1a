import CCurl
import Foundation

/// `curl_global_init` exactly once per process; Swift initializes static lets thread-safely on first use.
enum CurlGlobal {
    static let initialized: CURLcode = fk_curl_global_init_all()
}

/// Body and headers of the response being received, reached from libcurl's callbacks through `userdata`.
final class ResponseCollector {
    var body: [UInt8] = []
    var headers: [String: String] = [:]
    /// The largest body kept; a server sending more is cut off (the transfer fails) rather than filling memory.
    var maximumBodyBytes = HTTPClientConfiguration.defaultMaximumResponseBytes
    /// Set when the body passed `maximumBodyBytes`, so the failure can say so.
    var bodyTooLarge = false

    func reset() {
        body = []
        bodyTooLarge = false
        headers.removeAll(keepingCapacity: true)
    }

    func addHeaderLine(_ line: UnsafeRawBufferPointer) {
        var length = line.count
        while length > 0 && (line[length - 1] == 0x0D || line[length - 1] == 0x0A) { length -= 1 }
        let text = String(decoding: UnsafeRawBufferPointer(rebasing: line[0..<length]), as: UTF8.self)
        if text.hasPrefix("HTTP/") {
            // A new status line (after 100 Continue or a redirect): headers so far belonged to another response.
            headers.removeAll(keepingCapacity: true)
            return
        }
        guard let colon = text.firstIndex(of: ":") else { return }
        let name = text[..<colon].trimmingCharacters(in: .whitespaces).lowercased()
        let value = text[text.index(after: colon)...].trimmingCharacters(in: .whitespaces)
        if let existing = headers[name] { headers[name] = existing + ", " + value } else { headers[name] = value }
    }
}

/// The C callbacks libcurl calls; they capture nothing and find their collector through `userdata`.
enum CurlCallbacks {
    static let write: curl_write_callback = { data, size, count, userdata in
        let length = size * count
        guard let userdata else { return 0 }
        let collector = Unmanaged<ResponseCollector>.fromOpaque(userdata).takeUnretainedValue()
        guard length <= collector.maximumBodyBytes - collector.body.count else {
            collector.bodyTooLarge = true
            return 0  // libcurl ends the transfer with CURLE_WRITE_ERROR
        }
        if length > 0, let data { collector.body.append(contentsOf: UnsafeRawBufferPointer(start: data, count: length)) }
        return length
    }

    static let header: curl_write_callback = { data, size, count, userdata in
        let length = size * count
        guard let userdata else { return 0 }
        if length > 0, let data {
            Unmanaged<ResponseCollector>.fromOpaque(userdata).takeUnretainedValue()
                .addHeaderLine(UnsafeRawBufferPointer(start: data, count: length))
        }
        return length
    }
}

/// One libcurl easy handle: owns it (cleanup in deinit), its error buffer and its response collector.
/// Not Sendable: `HTTPClient` keeps it inside a Mutex so one transfer runs at a time.
final class CurlEasy {
    let handle: UnsafeMutableRawPointer
    let collector = ResponseCollector()
    private let errorBuffer: UnsafeMutablePointer<CChar>

    init() throws {
        let global = CurlGlobal.initialized
        guard global == CURLE_OK else {
            throw HTTPClientError(kind: .transport(Int32(global.rawValue)), url: "",
                                  message: "curl_global_init failed: \(String(cString: curl_easy_strerror(global)))")
        }
        guard let handle = curl_easy_init() else {
            throw HTTPClientError(kind: .transport(Int32(CURLE_FAILED_INIT.rawValue)), url: "", message: "curl_easy_init failed")
        }
        self.handle = handle
        errorBuffer = .allocate(capacity: Int(CURL_ERROR_SIZE) + 1)
        errorBuffer.initialize(repeating: 0, count: Int(CURL_ERROR_SIZE) + 1)
    }

    deinit {
        curl_easy_cleanup(handle)
        errorBuffer.deallocate()
    }

    /// Back to default options for a new request; live connections, TLS sessions and DNS cache are kept (keep-alive).
    func resetForRequest() throws {
        curl_easy_reset(handle)
        errorBuffer[0] = 0
        collector.reset()
        try set(CURLOPT_ERRORBUFFER, pointer: errorBuffer)
        try set(CURLOPT_NOSIGNAL, 1)
        let context = Unmanaged.passUnretained(collector).toOpaque()
        try check(fk_curl_setopt_write_callback(handle, CURLOPT_WRITEFUNCTION, CurlCallbacks.write), CURLOPT_WRITEFUNCTION)
        try set(CURLOPT_WRITEDATA, pointer: context)
        try check(fk_curl_setopt_write_callback(handle, CURLOPT_HEADERFUNCTION, CurlCallbacks.header), CURLOPT_HEADERFUNCTION)
        try set(CURLOPT_HEADERDATA, pointer: context)
    }

    func set(_ option: CURLoption, _ value: Int) throws {
        try check(fk_curl_setopt_long(handle, option, value), option)
    }

    /// libcurl copies string options (except POSTFIELDS, which we pass as a pointer instead).
    func set(_ option: CURLoption, _ value: String) throws {
        try check(value.withCString { fk_curl_setopt_pointer(handle, option, $0) }, option)
    }

    func set(_ option: CURLoption, pointer: UnsafeRawPointer?) throws {
        try check(fk_curl_setopt_pointer(handle, option, pointer), option)
    }

    func set(_ option: CURLoption, offset: Int64) throws {
        try check(fk_curl_setopt_off(handle, option, curl_off_t(offset)), option)
    }

    func perform() -> CURLcode { curl_easy_perform(handle) }

    var responseCode: Int {
        var code = 0
        _ = fk_curl_getinfo_long(handle, CURLINFO_RESPONSE_CODE, &code)
        return code
    }

    /// libcurl's detailed message for the last failure, falling back to the generic text for `code`.
    func errorMessage(for code: CURLcode) -> String {
        let detail = String(cString: errorBuffer)
        return detail.isEmpty ? String(cString: curl_easy_strerror(code)) : detail
    }

    private func check(_ code: CURLcode, _ option: CURLoption) throws {
        guard code == CURLE_OK else {
            throw HTTPClientError(kind: .transport(Int32(code.rawValue)), url: "",
                                  message: "curl_easy_setopt(\(option.rawValue)) failed: \(String(cString: curl_easy_strerror(code)))")
        }
    }
}
