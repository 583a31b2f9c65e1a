import CCurl
import Foundation
import Synchronization

/// libcurl's functions, from the library opened when the first transfer needs it.
///
/// Why not linked: libcurl brings 26 shared libraries of its own (GnuTLS, Kerberos, LDAP, SASL, ...), and loading
/// them at every start cost each command about 20 ms on a cold page cache (a major page fault per library) and 2.5 ms
/// on a warm one, while most runs of the agent (a backup, a restore, a check) never make an HTTP request
/// (BENCHMARKS.md, "Re-runs"). The packages bundle the library and its dependencies all the same
/// (`ops/package`), and the bundled binary's DT_RPATH is searched for it first.
struct CurlLibrary: @unchecked Sendable {
    // @unchecked: immutable function pointers into a library that is never closed.
    typealias Handle = UnsafeMutableRawPointer
    typealias List = UnsafeMutablePointer<curl_slist>

    /// The library's name as Debian and RHEL install it (its soname).
    static let defaultName = "libcurl.so.4"
    /// Opened, its functions found and `curl_global_init` run, once per process, on first use. A failure is not
    /// kept: a long-running program tries again at its next transfer (after libcurl is installed, say).
    static func shared() throws -> CurlLibrary {
        try loaded.withLock { loaded in
            if let loaded { return loaded }
            let library = try load(defaultName).get()
            loaded = library
            return library
        }
    }
    private static let loaded = Mutex<CurlLibrary?>(nil)

    let globalInit: @convention(c) (Int) -> CURLcode
    let easyInit: @convention(c) () -> Handle?
    let easyCleanup: @convention(c) (Handle?) -> Void
    let easyReset: @convention(c) (Handle?) -> Void
    let easyPerform: @convention(c) (Handle?) -> CURLcode
    let easyStrerror: @convention(c) (CURLcode) -> UnsafePointer<CChar>?
    let slistAppend: @convention(c) (List?, UnsafePointer<CChar>?) -> List?
    let slistFreeAll: @convention(c) (List?) -> Void
    /// Variadic: called only through the typed wrappers of shim.h.
    let easySetopt: UnsafeMutableRawPointer
    let easyGetinfo: UnsafeMutableRawPointer

    static func load(_ name: String) -> Result<CurlLibrary, HTTPClientError> {
        func failure(_ message: String) -> Result<CurlLibrary, HTTPClientError> {
            .failure(HTTPClientError(kind: .transport(Int32(CURLE_FAILED_INIT.rawValue)), url: "", message: message))
        }
        guard let library = dlopen(name, RTLD_NOW | RTLD_LOCAL) else {
            let reason = dlerror().map { String(cString: $0) } ?? "not found"
            return failure("cannot load libcurl (\(reason)): install the libcurl4 package (Debian, Ubuntu) or libcurl (RHEL family), "
                + "or reinstall the Fleetkeep package, which carries its own")
        }
        var missing: [String] = []
        func address(_ name: String) -> UnsafeMutableRawPointer? {
            let found = dlsym(library, name)
            if found == nil { missing.append(name) }
            return found
        }
        func function<Function>(_ name: String, as type: Function.Type) -> Function? {
            address(name).map { unsafeBitCast($0, to: type) }
        }
        let globalInit = function("curl_global_init", as: (@convention(c) (Int) -> CURLcode).self)
        let easyInit = function("curl_easy_init", as: (@convention(c) () -> Handle?).self)
        let easyCleanup = function("curl_easy_cleanup", as: (@convention(c) (Handle?) -> Void).self)
        let easyReset = function("curl_easy_reset", as: (@convention(c) (Handle?) -> Void).self)
        let easyPerform = function("curl_easy_perform", as: (@convention(c) (Handle?) -> CURLcode).self)
        let easyStrerror = function("curl_easy_strerror", as: (@convention(c) (CURLcode) -> UnsafePointer<CChar>?).self)
        let slistAppend = function("curl_slist_append", as: (@convention(c) (List?, UnsafePointer<CChar>?) -> List?).self)
        let slistFreeAll = function("curl_slist_free_all", as: (@convention(c) (List?) -> Void).self)
        // Variadic: kept as addresses, for shim.h's typed wrappers.
        let easySetopt = address("curl_easy_setopt")
        let easyGetinfo = address("curl_easy_getinfo")
        guard let globalInit, let easyInit, let easyCleanup, let easyReset, let easyPerform, let easyStrerror, let slistAppend,
              let slistFreeAll, let easySetopt, let easyGetinfo else {
            dlclose(library)
            return failure("\(name) lacks \(missing.joined(separator: ", ")): it is not libcurl 7 or 8; install the libcurl4 package")
        }
        let curl = CurlLibrary(globalInit: globalInit, easyInit: easyInit, easyCleanup: easyCleanup, easyReset: easyReset,
                               easyPerform: easyPerform, easyStrerror: easyStrerror, slistAppend: slistAppend,
                               slistFreeAll: slistFreeAll, easySetopt: easySetopt, easyGetinfo: easyGetinfo)
        let initialized = curl.globalInit(Int(CURL_GLOBAL_ALL))
        guard initialized == CURLE_OK else {
            return .failure(HTTPClientError(kind: .transport(Int32(initialized.rawValue)), url: "",
                                            message: "curl_global_init failed: \(curl.message(for: initialized))"))
        }
        return .success(curl)
    }

    /// libcurl's generic text for `code`.
    func message(for code: CURLcode) -> String {
        easyStrerror(code).map { String(cString: $0) } ?? "curl error \(code.rawValue)"
    }
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
    let curl: CurlLibrary
    let handle: UnsafeMutableRawPointer
    let collector = ResponseCollector()
    private let errorBuffer: UnsafeMutablePointer<CChar>

    init() throws {
        curl = try CurlLibrary.shared()
        guard let handle = curl.easyInit() else {
            throw HTTPClientError(kind: .transport(Int32(CURLE_FAILED_INIT.rawValue)), url: "", message: "curl_easy_init failed")
        }
        self.handle = handle
        errorBuffer = .allocate(capacity: Int(CURL_ERROR_SIZE) + 1)
        errorBuffer.initialize(repeating: 0, count: Int(CURL_ERROR_SIZE) + 1)
    }

    deinit {
        curl.easyCleanup(handle)
        errorBuffer.deallocate()
    }

    /// Back to default options for a new request; live connections, TLS sessions and DNS cache are kept (keep-alive).
    func resetForRequest() throws {
        curl.easyReset(handle)
        errorBuffer[0] = 0
        collector.reset()
        try set(CURLOPT_ERRORBUFFER, pointer: errorBuffer)
        try set(CURLOPT_NOSIGNAL, 1)
        let context = Unmanaged.passUnretained(collector).toOpaque()
        try check(fk_curl_setopt_write_callback(curl.easySetopt, handle, CURLOPT_WRITEFUNCTION, CurlCallbacks.write), CURLOPT_WRITEFUNCTION)
        try set(CURLOPT_WRITEDATA, pointer: context)
        try check(fk_curl_setopt_write_callback(curl.easySetopt, handle, CURLOPT_HEADERFUNCTION, CurlCallbacks.header), CURLOPT_HEADERFUNCTION)
        try set(CURLOPT_HEADERDATA, pointer: context)
    }

    func set(_ option: CURLoption, _ value: Int) throws {
        try check(fk_curl_setopt_long(curl.easySetopt, handle, option, value), option)
    }

    /// libcurl copies string options (except POSTFIELDS, which we pass as a pointer instead).
    func set(_ option: CURLoption, _ value: String) throws {
        try check(value.withCString { fk_curl_setopt_pointer(curl.easySetopt, handle, option, $0) }, option)
    }

    func set(_ option: CURLoption, pointer: UnsafeRawPointer?) throws {
        try check(fk_curl_setopt_pointer(curl.easySetopt, handle, option, pointer), option)
    }

    func set(_ option: CURLoption, offset: Int64) throws {
        try check(fk_curl_setopt_off(curl.easySetopt, handle, option, curl_off_t(offset)), option)
    }

    func perform() -> CURLcode { curl.easyPerform(handle) }

    var responseCode: Int {
        var code = 0
        _ = fk_curl_getinfo_long(curl.easyGetinfo, handle, CURLINFO_RESPONSE_CODE, &code)
        return code
    }

    /// libcurl's detailed message for the last failure, falling back to the generic text for `code`.
    func errorMessage(for code: CURLcode) -> String {
        let detail = String(cString: errorBuffer)
        return detail.isEmpty ? curl.message(for: code) : detail
    }

    private func check(_ code: CURLcode, _ option: CURLoption) throws {
        guard code == CURLE_OK else {
            throw HTTPClientError(kind: .transport(Int32(code.rawValue)), url: "",
                                  message: "curl_easy_setopt(\(option.rawValue)) failed: \(curl.message(for: code))")
        }
    }
}
