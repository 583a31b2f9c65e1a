import Foundation
import HTTPClient
import HTTPServer
import Synchronization
import Testing
import TestSupport

struct ServerTests {
    @Test func getAndPostJSONRoundTrip() throws {
        let running = try RunningServer { router in
            router.add("GET", "/hello") { request in
                .json(["greeting": "hi \(request.query["who"] ?? "?")", "custom": request.headers["x-custom"] ?? "",
                       "from": request.remoteAddress, "path": request.path])
            }
            router.add("POST", "/echo") { request in
                var greeting = try request.decodeJSON(Greeting.self)
                greeting.count += 1
                return .json(greeting, status: 201)
            }
        }
        let client = try running.client()
        let got = try client.send(method: "GET", path: "/hello?who=swift%20test", headers: ["X-Custom": "yes"])
        #expect(got.status == 200)
        #expect(got.headers["content-type"] == "application/json")
        #expect(try got.decode([String: String].self) ==
                ["greeting": "hi swift test", "custom": "yes", "from": "127.0.0.1", "path": "/hello"])
        #expect(String(decoding: got.body, as: UTF8.self).hasPrefix("{\"custom\""), "keys are sorted")

        let posted = try client.sendJSON(method: "POST", path: "/echo", Greeting(name: "a/b ü", count: 41))
        #expect(posted.status == 201)
        #expect(try posted.decode(Greeting.self) == Greeting(name: "a/b ü", count: 42))
        #expect(String(decoding: posted.body, as: UTF8.self).contains("a/b"), "slashes are not escaped")
    }

    @Test func unknownPathIs404AndWrongMethodIs405() throws {
        let running = try RunningServer { router in
            router.add("GET", "/only-get") { _ in .text("ok") }
            router.add("PUT", "/only-get") { _ in .text("ok") }
        }
        let client = try running.client()
        let missing = try client.send(method: "GET", path: "/nope")
        #expect(missing.status == 404)
        #expect(try missing.decode(ErrorBody.self).error.contains("/nope"))
        let wrong = try client.send(method: "DELETE", path: "/only-get")
        #expect(wrong.status == 405)
        #expect(wrong.headers["allow"] == "GET, PUT")
        #expect(try wrong.decode(ErrorBody.self).error.contains("DELETE"))
        #expect(try client.send(method: "GET", path: "/only-get").body == Array("ok".utf8))
    }

    @Test func oversizedBodyGets413WithoutCallingHandler() throws {
        let calls = Atomic<Int>(0)
        let running = try RunningServer(configuration: HTTPServerConfiguration(maxBodyBytes: 1024)) { router in
            router.add("POST", "/upload") { request in
                calls.add(1, ordering: .relaxed)
                return .json(["bytes": request.body.count])
            }
        }
        let client = try running.client()
        let tooBig = try client.send(method: "POST", path: "/upload", body: [UInt8](repeating: 7, count: 4096))
        #expect(tooBig.status == 413)
        #expect(try tooBig.decode(ErrorBody.self).error.contains("1024"))
        #expect(calls.load(ordering: .relaxed) == 0)

        let exact = try client.send(method: "POST", path: "/upload", body: [UInt8](repeating: 7, count: 1024))
        #expect(exact.status == 200)
        #expect(try exact.decode([String: Int].self) == ["bytes": 1024])
        #expect(calls.load(ordering: .relaxed) == 1)
    }

    /// A declared length beyond Int.max (2^63 and up) did not parse as an Int, so the early check was skipped and
    /// the server read and dropped the whole body, gigabytes of it. It must be answered 413 at once.
    @Test(arguments: ["9223372036854775808", "18446744073709551614", "99999999999999999999999"])
    func aContentLengthBeyondIntMaxIsAnsweredAtOnce(length: String) throws {
        let running = try RunningServer(configuration: HTTPServerConfiguration(maxBodyBytes: 1024)) { router in
            router.add("POST", "/upload") { request in .json(["bytes": request.body.count]) }
        }
        let request = "POST /upload HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: \(length)\r\n\r\n" + String(repeating: "x", count: 4096)
        let reply = try RawSocket.exchange(port: Int(running.server.port), Array(request.utf8), timeoutSeconds: 5)
        let parsed = RawSocket.parse(reply)
        #expect(parsed?.status == 413 || parsed?.status == 400, "\(String(decoding: reply.prefix(200), as: UTF8.self))")
    }

    /// Two Content-Length headers that disagree: libmicrohttpd reads the body by the first, a proxy in front may
    /// have used the other, and the rest would be taken for another request. It must be refused (RFC 9112).
    @Test func conflictingContentLengthsAreRefused() throws {
        let calls = Atomic<Int>(0)
        let running = try RunningServer { router in
            router.add("POST", "/upload") { request in
                calls.add(1, ordering: .relaxed)
                return .json(["bytes": request.body.count])
            }
        }
        let request = "POST /upload HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 5\r\nContent-Length: 10\r\nConnection: close\r\n\r\n0123456789"
        let reply = try RawSocket.exchange(port: Int(running.server.port), Array(request.utf8), timeoutSeconds: 5)
        #expect(RawSocket.parse(reply)?.status == 400, "\(String(decoding: reply.prefix(200), as: UTF8.self))")
        #expect(calls.load(ordering: .relaxed) == 0)
        // A length next to chunked encoding frames the body two ways too.
        let both = "POST /upload HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\n01234\r\n0\r\n\r\n"
        let bothReply = try RawSocket.exchange(port: Int(running.server.port), Array(both.utf8), timeoutSeconds: 5)
        #expect(RawSocket.parse(bothReply)?.status == 400, "\(String(decoding: bothReply.prefix(200), as: UTF8.self))")
        #expect(calls.load(ordering: .relaxed) == 0)
        // The same length twice is one length.
        let same = "POST /upload HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 5\r\nContent-Length: 5\r\nConnection: close\r\n\r\n01234"
        let sameReply = try RawSocket.exchange(port: Int(running.server.port), Array(same.utf8), timeoutSeconds: 5)
        #expect(RawSocket.parse(sameReply)?.status == 200, "\(String(decoding: sameReply.prefix(200), as: UTF8.self))")
    }

    @Test func chunkedOversizedBodyGets413() throws {
        // Without Content-Length the limit is enforced while accumulating, so use the curl CLI's chunked upload.
        let curl = try #require(ProcessRunner.which("curl"))
        let calls = Atomic<Int>(0)
        let running = try RunningServer(configuration: HTTPServerConfiguration(maxBodyBytes: 1000)) { router in
            router.add("POST", "/upload") { request in
                calls.add(1, ordering: .relaxed)
                return .json(["bytes": request.body.count])
            }
        }
        let dir = TemporaryDirectory()
        let payload = dir.appending("payload")
        try Data(repeating: 65, count: 5000).write(to: URL(fileURLWithPath: payload))
        let out = try ProcessRunner.run(curl, ["-s", "-o", "/dev/null", "-w", "%{http_code}", "-H", "Transfer-Encoding: chunked",
                                               "--data-binary", "@\(payload)", running.baseURL + "/upload"])
        #expect(out.stdout == "413")
        try Data(repeating: 65, count: 900).write(to: URL(fileURLWithPath: payload))
        let ok = try ProcessRunner.run(curl, ["-s", "-H", "Transfer-Encoding: chunked", "--data-binary", "@\(payload)",
                                              running.baseURL + "/upload"])
        #expect(ok.stdout == "{\"bytes\":900}")
        #expect(calls.load(ordering: .relaxed) == 1)
    }

    @Test func malformedJSONGives400NamingTheType() throws {
        let running = try RunningServer { router in
            router.add("POST", "/echo") { request in .json(try request.decodeJSON(Greeting.self)) }
        }
        let client = try running.client()
        for bad in ["{not json", "{\"name\": 5, \"count\": 1}", "", "{\"name\": \"x\"}"] {
            let response = try client.send(method: "POST", path: "/echo", body: Array(bad.utf8))
            #expect(response.status == 400, "input \(bad)")
            #expect(try response.decode(ErrorBody.self).error.contains("Greeting"), "input \(bad)")
        }
    }

    @Test func handlerErrorsMapToStatus() throws {
        struct Boom: Error {}
        let running = try RunningServer { router in
            router.add("GET", "/boom") { _ in throw Boom() }
            router.add("GET", "/teapot") { _ in throw HTTPError(418, "short and stout") }
        }
        let client = try running.client()
        let boom = try client.send(method: "GET", path: "/boom")
        #expect(boom.status == 500)
        #expect(try boom.decode(ErrorBody.self).error.contains("/boom"))
        let teapot = try client.send(method: "GET", path: "/teapot")
        #expect(teapot.status == 418)
        #expect(try teapot.decode(ErrorBody.self).error == "short and stout")
        // The server is still healthy after handler failures.
        #expect(try client.send(method: "GET", path: "/teapot").status == 418)
    }

    @Test func inlineHandlersOnDifferentIOThreadsOverlap() throws {
        // Busy I/O threads do not accept, so starting each client after the previous handler began puts every
        // connection on its own thread: 4 x 200 ms must take about 200 ms, not 800.
        let active = Atomic<Int>(0), peak = Atomic<Int>(0), entered = Atomic<Int>(0)
        let running = try RunningServer(configuration: HTTPServerConfiguration(threads: 4)) { router in
            router.add("GET", "/slow") { _ in
                let now = active.add(1, ordering: .relaxed).newValue
                peak.max(now, ordering: .relaxed)
                entered.add(1, ordering: .relaxed)
                Thread.sleep(forTimeInterval: 0.2)
                active.subtract(1, ordering: .relaxed)
                return .text("done")
            }
        }
        let base = running.baseURL
        var statuses: [Int] = []
        let elapsed = measure {
            statuses = onThreads(4) { index in
                let deadline = ContinuousClock.now + .seconds(2)
                while entered.load(ordering: .relaxed) < index && ContinuousClock.now < deadline { usleep(500) }
                let client = try? HTTPClient(configuration: HTTPClientConfiguration(baseURL: base, retry: .none))
                return (try? client?.send(method: "GET", path: "/slow").status) ?? -1
            }
        }
        #expect(statuses == [200, 200, 200, 200])
        #expect(peak.load(ordering: .relaxed) == 4)
        #expect(elapsed < 0.5, "4 x 200 ms handlers took \(elapsed)s; they did not run concurrently")
    }

    @Test func handlerPoolRunsSlowHandlersConcurrentlyOnOneIOThread() throws {
        // One I/O thread, four simultaneous clients: only the handler pool can make these overlap.
        let running = try RunningServer(configuration: HTTPServerConfiguration(threads: 1, handlerThreads: 4)) { router in
            router.add("GET", "/slow") { _ in
                Thread.sleep(forTimeInterval: 0.2)
                return .text("done")
            }
            router.add("POST", "/echo") { request in HTTPResponse(status: 200, body: request.body) }
        }
        let base = running.baseURL
        var statuses: [Int] = []
        let elapsed = measure {
            statuses = onThreads(4) { _ in
                let client = try? HTTPClient(configuration: HTTPClientConfiguration(baseURL: base, retry: .none))
                return (try? client?.send(method: "GET", path: "/slow").status) ?? -1
            }
        }
        #expect(statuses == [200, 200, 200, 200])
        #expect(elapsed < 0.5, "4 x 200 ms handlers took \(elapsed)s; they did not run concurrently")
        // Keep-alive reuse across suspend/resume, with bodies.
        let client = try running.client()
        for index in 0..<50 {
            let body = Array("payload \(index)".utf8)
            let response = try client.send(method: "POST", path: "/echo", body: body)
            #expect(response.status == 200 && response.body == body)
        }
    }

    @Test func keepAliveLoopServesManyRequests() throws {
        let running = try RunningServer { router in
            router.add("POST", "/beat") { request in
                let greeting = try request.decodeJSON(Greeting.self)
                return .json(["ok": greeting.count])
            }
        }
        let client = try running.client()
        let body = Array("{\"name\":\"agent-1\",\"count\":7}".utf8)
        let count = 2000
        var good = 0
        let elapsed = try measure {
            for _ in 0..<count {
                let response = try client.send(method: "POST", path: "/beat", body: body, headers: ["X-Signature": "abc"])
                if response.status == 200 && response.body == Array("{\"ok\":7}".utf8) { good += 1 }
            }
        }
        #expect(good == count)
        print("keep-alive loop: \(Int(Double(count) / elapsed)) requests/s")
    }

    @Test(arguments: [0, 2])
    func gracefulShutdownLetsInFlightRequestFinish(handlerThreads: Int) throws {
        let entered = Atomic<Bool>(false)
        let running = try RunningServer(configuration: HTTPServerConfiguration(handlerThreads: handlerThreads)) { router in
            router.add("GET", "/slow") { _ in
                entered.store(true, ordering: .relaxed)
                Thread.sleep(forTimeInterval: 0.4)
                return .text("finished")
            }
        }
        let base = running.baseURL
        let results = onThreads(2) { index -> String in
            if index == 0 {
                let client = try? HTTPClient(configuration: HTTPClientConfiguration(baseURL: base, retry: .none))
                do {
                    let response = try client!.send(method: "GET", path: "/slow")
                    return "\(response.status) \(String(decoding: response.body, as: UTF8.self))"
                } catch { return "error \(error)" }
            }
            while !entered.load(ordering: .relaxed) { usleep(1000) }
            running.server.shutdown()
            return "shut down"
        }
        #expect(results[0] == "200 finished")
        let late = try HTTPClient(configuration: HTTPClientConfiguration(baseURL: base, retry: .none))
        #expect(throws: HTTPClientError.self) { try late.send(method: "GET", path: "/slow") }
    }
}
