import CCurl
import Foundation
@testable import HTTPClient
import Testing

/// libcurl is opened when the first transfer needs it (`CurlLibrary`), so a server without it, or with something
/// else under its name, must get an error that says what to install, not a crash at start or at the first request.
struct CurlLibraryTests {
    @Test func aMissingLibcurlIsAnErrorThatSaysWhatToInstall() throws {
        let result = CurlLibrary.load("libfleetkeep-no-such-curl.so.4")
        guard case .failure(let error) = result else {
            Issue.record("a library that does not exist was loaded")
            return
        }
        #expect(error.message.contains("cannot load libcurl"))
        #expect(error.message.contains("libfleetkeep-no-such-curl.so.4"), "dlopen's reason names the file: \(error.message)")
        #expect(error.message.contains("libcurl4"), "the next step is named: \(error.message)")
    }

    @Test func aLibraryWithoutLibcurlsFunctionsIsRefusedAndNamesThem() throws {
        // libz is on every machine that has libcurl (libcurl needs it) and has none of its functions.
        let result = CurlLibrary.load("libz.so.1")
        guard case .failure(let error) = result else {
            Issue.record("libz was taken for libcurl")
            return
        }
        #expect(error.message.contains("curl_easy_init"), "\(error.message)")
        #expect(error.message.contains("curl_easy_setopt"), "\(error.message)")
    }

    @Test func theRealLibraryLoadsAndTransfers() throws {
        let curl = try CurlLibrary.load(CurlLibrary.defaultName).get()
        #expect(curl.message(for: CURLE_OK) == "No error")
        // A whole request through the loaded functions: the variadic setopt wrappers included.
        let easy = try CurlEasy()
        try easy.resetForRequest()
        try easy.set(CURLOPT_URL, "file:///proc/self/status")
        let code = easy.perform()
        #expect(code == CURLE_OK, "\(easy.errorMessage(for: code))")
        #expect(String(decoding: easy.collector.body, as: UTF8.self).contains("Name:"))
    }
}
