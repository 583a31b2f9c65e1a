import Foundation
@testable import HTTPClient
import HTTPServer
import Synchronization
import Testing
import TestSupport

struct ClientTests {
    @Test func retryHonoursRetryAfterSeconds() throws {
        let calls = Atomic<Int>(0)
        let running = try RunningServer { router in
            router.add("GET", "/busy") { _ in
                if calls.add(1, ordering: .relaxed).newValue == 1 {
                    return HTTPResponse(status: 503, headers: ["Retry-After": "1"], body: [])
                }
                return .text("ready")
            }
        }
        let client = try running.client(retry: RetryPolicy(maxAttempts: 3, baseDelay: 0.01))
        var response: HTTPClientResponse?
        let elapsed = try measure { response = try client.send(method: "GET", path: "/busy") }
        #expect(response?.status == 200)
        #expect(calls.load(ordering: .relaxed) == 2)
        #expect(elapsed >= 0.95, "Retry-After: 1 was not honoured (\(elapsed)s)")
        #expect(elapsed < 3)
    }

    @Test func retriesExhaustedReturnLastStatusAndAuthorizeRunsPerAttempt() throws {
        let seen = Mutex<[String]>([])
        let running = try RunningServer { router in
            router.add("POST", "/fail") { request in
                seen.withLock { $0.append(request.headers["x-attempt"] ?? "none") }
                return .error(502, "upstream down")
            }
        }
        let counter = Atomic<Int>(0)
        let client = try running.client(retry: RetryPolicy(maxAttempts: 3, baseDelay: 0.01, maxDelay: 0.05))
        let response = try client.send(method: "POST", path: "/fail", body: Array("{}".utf8)) { method, path, body in
            #expect(method == "POST" && path == "/fail" && body == Array("{}".utf8))
            return ["X-Attempt": "\(counter.add(1, ordering: .relaxed).newValue)"]
        }
        #expect(response.status == 502)
        #expect(try response.decode(ErrorBody.self).error == "upstream down")
        #expect(seen.withLock { $0 } == ["1", "2", "3"])
    }

    @Test func clientErrorsAreNotRetried() throws {
        let calls = Atomic<Int>(0)
        let running = try RunningServer { router in
            router.add("GET", "/bad") { _ in
                calls.add(1, ordering: .relaxed)
                throw HTTPError(400, "bad input")
            }
        }
        let client = try running.client(retry: RetryPolicy(maxAttempts: 4, baseDelay: 0.01))
        #expect(try client.send(method: "GET", path: "/bad").status == 400)
        #expect(calls.load(ordering: .relaxed) == 1)
    }

    @Test func connectionRefusedNamesTheURL() throws {
        // A port that was just in use and is now closed.
        let server = try HTTPServer(configuration: HTTPServerConfiguration(), router: Router())
        try server.start()
        let port = server.port
        server.shutdown()
        let client = try HTTPClient(configuration: HTTPClientConfiguration(
            baseURL: "http://127.0.0.1:\(port)", retry: RetryPolicy(maxAttempts: 2, baseDelay: 0.01)))
        let error = #expect(throws: HTTPClientError.self) { try client.send(method: "GET", path: "/status") }
        #expect(error?.kind == .connectionFailed)
        #expect(error?.url == "http://127.0.0.1:\(port)/status")
        #expect(error?.description.contains("http://127.0.0.1:\(port)/status") == true)
    }

    @Test func slowServerTimesOut() throws {
        let running = try RunningServer { router in
            router.add("GET", "/slow") { _ in
                Thread.sleep(forTimeInterval: 1.0)
                return .text("late")
            }
        }
        let client = try running.client(timeout: 0.3)
        let error = #expect(throws: HTTPClientError.self) { try client.send(method: "GET", path: "/slow") }
        #expect(error?.kind == .timeout)
    }

    @Test func invalidBaseURLIsRejected() throws {
        let error = #expect(throws: HTTPClientError.self) {
            _ = try HTTPClient(configuration: HTTPClientConfiguration(baseURL: "ftp://example"))
        }
        #expect(error?.description.contains("ftp://example") == true)
    }

    @Test func decodeFailureNamesTypeAndURL() throws {
        let running = try RunningServer { router in router.add("GET", "/text") { _ in .text("not json") } }
        let response = try running.client().send(method: "GET", path: "/text")
        let error = #expect(throws: HTTPClientError.self) { try response.decode(Greeting.self) }
        #expect(error?.kind == .decoding)
        #expect(error?.description.contains("Greeting") == true)
        #expect(error?.description.contains("/text") == true)
    }

    @Test func retryAfterParsing() {
        let now = Date(timeIntervalSince1970: 1_445_412_470)   // Wed, 21 Oct 2015 07:27:50 GMT
        #expect(RetryPolicy.parseRetryAfter("120") == 120)
        #expect(RetryPolicy.parseRetryAfter(" 0 ") == 0)
        #expect(RetryPolicy.parseRetryAfter("Wed, 21 Oct 2015 07:28:00 GMT", now: now) == 10)
        #expect(RetryPolicy.parseRetryAfter("Wed, 21 Oct 2015 07:00:00 GMT", now: now) == 0)
        #expect(RetryPolicy.parseRetryAfter("-5") == nil)
        #expect(RetryPolicy.parseRetryAfter("soon") == nil)
    }

    @Test func backoffIsBoundedFullJitter() {
        let policy = RetryPolicy(maxAttempts: 10, baseDelay: 0.1, maxDelay: 1.0)
        for attempt in 1...10 {
            let cap = min(1.0, 0.1 * pow(2, Double(attempt - 1)))
            for _ in 0..<50 {
                let delay = policy.delay(afterAttempt: attempt, retryAfter: nil)
                #expect(delay >= 0 && delay <= cap)
            }
        }
        #expect(policy.delay(afterAttempt: 1, retryAfter: 100) == 1.0, "Retry-After is capped by maxDelay")
        #expect(policy.delay(afterAttempt: 1, retryAfter: 0.5) == 0.5)
    }
}

/// A server (a hostile or broken controller) that answers with an endless body must not fill the agent's memory.
struct ResponseSizeLimitTests {
    @Test func aBodyLargerThanTheLimitFailsTheRequestWithAClearError() throws {
        let server = try RunningServer { router in
            router.add("GET", "/big") { _ in HTTPResponse(status: 200, body: [UInt8](repeating: 7, count: 3 << 20)) }
            router.add("GET", "/small") { _ in .text("ok") }
        }
        var configuration = HTTPClientConfiguration(baseURL: server.baseURL, retry: .none)
        configuration.maximumResponseBytes = 1 << 20
        let client = try HTTPClient(configuration: configuration)
        do {
            _ = try client.send(method: "GET", path: "/big")
            Issue.record("a 3 MiB body was accepted with a 1 MiB limit")
        } catch let error as HTTPClientError {
            #expect(error.message.contains("larger than the limit"), "\(error)")
        }
        // The same client still works, with no leftover bytes from the refused answer.
        let small = try client.send(method: "GET", path: "/small")
        #expect(small.body == Array("ok".utf8))
    }
}
