import Foundation
import HTTPClient
import HTTPServer
import Testing
import TestSupport

struct TLSTests {
    @Test func httpsWithCorrectPinSucceedsAndWrongPinFails() throws {
        let dir = TemporaryDirectory()
        let tls = try makeSelfSignedTLS(in: dir.path)
        let configuration = HTTPServerConfiguration(tlsCertificatePath: tls.certPath, tlsPrivateKeyPath: tls.keyPath)
        let running = try RunningServer(configuration: configuration, scheme: "https") { router in
            router.add("POST", "/echo") { request in .json(try request.decodeJSON(Greeting.self)) }
        }

        let good = try running.client(pin: tls.pinBase64)
        for count in 0..<3 {   // several requests over the same kept-alive TLS connection
            let response = try good.sendJSON(method: "POST", path: "/echo", Greeting(name: "tls", count: count))
            #expect(response.status == 200)
            #expect(try response.decode(Greeting.self) == Greeting(name: "tls", count: count))
        }

        let wrongPin = Data(repeating: 1, count: 32).base64EncodedString()
        let bad = try running.client(retry: RetryPolicy(maxAttempts: 3, baseDelay: 0.01), pin: wrongPin)
        let error = #expect(throws: HTTPClientError.self) {
            try bad.sendJSON(method: "POST", path: "/echo", Greeting(name: "x", count: 1))
        }
        #expect(error?.kind == .pinMismatch)
        #expect(error?.description.contains("pinned") == true)
        #expect(error?.description.contains(running.baseURL) == true)
    }

    @Test func plainClientAgainstTLSServerFailsCleanly() throws {
        let dir = TemporaryDirectory()
        let tls = try makeSelfSignedTLS(in: dir.path)
        let running = try RunningServer(configuration: HTTPServerConfiguration(tlsCertificatePath: tls.certPath,
                                                                               tlsPrivateKeyPath: tls.keyPath),
                                        scheme: "https") { router in router.add("GET", "/x") { _ in .text("x") } }
        // Without a pin the self-signed certificate is not trusted by the system CA store.
        let unpinned = try running.client()
        let error = #expect(throws: HTTPClientError.self) { try unpinned.send(method: "GET", path: "/x") }
        #expect(error?.description.contains(running.baseURL) == true)
        // A plain-HTTP client talking to the TLS port gets a transport error, not a hang or crash.
        let plain = try HTTPClient(configuration: HTTPClientConfiguration(
            baseURL: "http://127.0.0.1:\(running.server.port)", timeoutSeconds: 3, retry: .none))
        #expect(throws: HTTPClientError.self) { try plain.send(method: "GET", path: "/x") }
    }

    @Test func malformedPinIsRejected() throws {
        let error = #expect(throws: HTTPClientError.self) {
            _ = try HTTPClient(configuration: HTTPClientConfiguration(baseURL: "https://127.0.0.1:1", pinnedPublicKeySHA256: "not-a-pin"))
        }
        #expect(error?.description.contains("not-a-pin") == true)
    }
}
