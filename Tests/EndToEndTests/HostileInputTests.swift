import Crypto
import Foundation
import FleetkeepProtocol
import HTTPClient
import Testing
import TestSupport

/// Hostile requests against the real controller process: extreme integers, lengths and encodings in every signed
/// header and in the JSON bodies, and requests libmicrohttpd itself cannot parse. Every one must get a 4xx with a
/// JSON error, and the controller must keep serving (same process, a correct heartbeat still accepted).
struct HostileInputTests {
    static let extremeValues: [String] = [
        "-9223372036854775808", "9223372036854775807", "9223372036854775808", "-9223372036854775809",
        "18446744073709551616", "0", "-1", "-0", "+1", "1e400", "1.5", "0x10", "NaN", "inf", "-inf", " ", "",
        String(repeating: "9", count: 4000), String(repeating: "A", count: 8000), String(repeating: "9", count: 40000),
        "%00", "%ff%fe", "\u{202E}1700000000", "ü", "😀", "\u{FFFD}", "s1.fk-00.-9223372036854775808.AAAA",
        "s1.fk-00.9223372036854775807.AAAAAAAAAAAAAAAA", "s1.fk-00.99999999999999999999.AAAA", "s1....",
        "fk-" + String(repeating: "0", count: 5000), "../../../etc/passwd", "=", "====", "*/*",
    ]

    static let signedHeaders = ["x-fleetkeep-timestamp", "x-fleetkeep-nonce", "x-fleetkeep-signature", "x-fleetkeep-agent",
                                "x-fleetkeep-key", "x-fleetkeep-session"]
    static let signedPaths = ["/v1/enroll", "/v1/heartbeat", "/v1/session", "/v1/escrow/recipient", "/v1/escrow"]

    /// Ed25519 headers whose canonical string uses the timestamp text exactly as sent, so an extreme timestamp that
    /// parses carries a valid signature and reaches the clock check instead of failing the signature first.
    /// `identity` is the agent header, or for enrollment the key header with the key being registered.
    static func signed(key: Ed25519PrivateKey, identity: (String, String), _ path: String, _ body: [UInt8],
                       timestampText: String) throws -> [String: String] {
        let nonce = Base64URL.encode(SecureRandom.bytes(16))
        let canonical = Array("FLEETKEEP-V1\nPOST\n\(path)\n\(timestampText)\n\(nonce)\n\(SHA256.hex(body))".utf8)
        return [identity.0: identity.1, "x-fleetkeep-timestamp": timestampText, "x-fleetkeep-nonce": nonce,
                "x-fleetkeep-signature": Base64URL.encode(try key.signature(for: canonical)), "content-type": "application/json"]
    }

    /// A correct request for `path`, signed, with its timestamp text: each case below changes one header of it.
    static func validRequest(_ path: String, agent: SignedRequestEndToEndTests.Agent, enrollmentToken: EnrollmentToken,
                             timestampText: String) throws -> (body: [UInt8], headers: [String: String]) {
        switch path {
        case "/v1/enroll":
            let key = Ed25519PrivateKey()
            let publicKey = Base64URL.encode(key.publicKey.rawRepresentation)
            let body = Array(try JSONEncoder().encode(EnrollRequest(tokenID: enrollmentToken.id, tokenSecret: enrollmentToken.secret,
                                                                    controllerPin: enrollmentToken.certificatePin, publicKey: publicKey,
                                                                    facts: ["hostname": "hostile"], problems: [:])))
            return (body, try signed(key: key, identity: ("x-fleetkeep-key", publicKey), path, body, timestampText: timestampText))
        case "/v1/heartbeat":
            let body = Array(#"{"facts":{"hostname":"hostile"},"problems":{}}"#.utf8)
            return (body, try signed(key: agent.key, identity: ("x-fleetkeep-agent", agent.id), path, body, timestampText: timestampText))
        case "/v1/escrow":
            let body = Array(#"{"sealedKey":"AAAA","recoveryPublicKey":"AAAA"}"#.utf8)
            return (body, try signed(key: agent.key, identity: ("x-fleetkeep-agent", agent.id), path, body, timestampText: timestampText))
        default:
            let body = Array("{}".utf8)
            return (body, try signed(key: agent.key, identity: ("x-fleetkeep-agent", agent.id), path, body, timestampText: timestampText))
        }
    }

    func expectJSONClientError(_ response: HTTPClientResponse, _ what: @autoclosure () -> String) {
        #expect((400..<500).contains(response.status), "\(what()): HTTP \(response.status) \(String(decoding: response.body.prefix(200), as: UTF8.self))")
        let decoded = try? JSONSerialization.jsonObject(with: Data(response.body)) as? [String: Any]
        #expect(decoded?["error"] is String, "\(what()): body is not a JSON error: \(String(decoding: response.body.prefix(200), as: UTF8.self))")
    }

    @Test func extremeHeaderValuesAreRefusedWith4xxAndTheControllerKeepsServing() throws {
        let controller = try RunningController()
        let state = TemporaryDirectory(prefix: "fk-e2e-state")
        let agent = try SignedRequestEndToEndTests().enrolledAgent(controller, state: state)
        let client = try controller.client()
        let token = try EnrollmentToken(text: try controller.token())
        let pid = controller.server.pid

        for path in Self.signedPaths {
            for header in Self.signedHeaders {
                // libcurl drops a header whose value is blank, and these headers are optional for this path: without
                // them the request is the correct one, rightly accepted.
                let optional = header == "x-fleetkeep-session" || (header == "x-fleetkeep-key" && path != "/v1/enroll")
                    || (header == "x-fleetkeep-agent" && path == "/v1/enroll")
                for value in Self.extremeValues where !(value.trimmingCharacters(in: .whitespaces).isEmpty && optional) {
                    let timestampText = header == "x-fleetkeep-timestamp" ? value : String(Int64(Date().timeIntervalSince1970))
                    var (body, headers) = try Self.validRequest(path, agent: agent, enrollmentToken: token, timestampText: timestampText)
                    headers[header] = value
                    let response = try client.send(method: "POST", path: path, body: body, headers: headers)
                    expectJSONClientError(response, "\(path) \(header)=\(value.prefix(40))")
                }
            }
        }
        #expect(controller.server.isRunning && controller.server.pid == pid)
        // The token was never consumed, and the same requests unchanged are accepted: the refusals came from the values.
        for path in ["/v1/enroll", "/v1/heartbeat", "/v1/session"] {
            let (body, headers) = try Self.validRequest(path, agent: agent, enrollmentToken: token,
                                                        timestampText: String(Int64(Date().timeIntervalSince1970)))
            let fine = try client.send(method: "POST", path: path, body: body, headers: headers)
            #expect(fine.status == 200, "\(path): \(String(decoding: fine.body, as: UTF8.self))")
        }
    }

    @Test func extremeJSONNumbersLengthsAndEncodingsAreRefusedWith4xx() throws {
        let controller = try RunningController()
        let state = TemporaryDirectory(prefix: "fk-e2e-state")
        let agent = try SignedRequestEndToEndTests().enrolledAgent(controller, state: state)
        let client = try controller.client()
        let pid = controller.server.pid

        var bodies: [[UInt8]] = [
            #"{"facts":{"hostname":1e400},"problems":{}}"#, #"{"facts":{"hostname":-9223372036854775809},"problems":{}}"#,
            #"{"facts":{"hostname":9223372036854775807},"problems":{}}"#, #"{"facts":{},"problems":{},"x":1e999999999999}"#,
            #"{"facts":{"hostname":"a"},"problems":{"kernelRelease":-0.0}}"#, #"{"facts":{"hostname":"a"},"problems":{"notAFact":"x"}}"#,
            #"{"facts":{"hostname":"\ud800"},"problems":{}}"#, #"{"facts":{"hostname":"a"},"problems":{"osID":"\#(String(repeating: "x", count: 5000))"}}"#,
            #"{"facts":{"hostname":"\#(String(repeating: "é", count: 3000))"},"problems":{}}"#,
            #"{"facts":null,"problems":null}"#, #"{"facts":[],"problems":[]}"#, "[]", "null", "0", "-9223372036854775808", "",
            #"{"recoveryPublicKey":9223372036854775808,"sealedKey":-1}"#, #"{"recoveryPublicKey":"x","sealedKey":1e308}"#,
            #"{"tokenID":1e400,"tokenSecret":-1,"controllerPin":0,"publicKey":9223372036854775807,"facts":{},"problems":{}}"#,
        ].map { Array($0.utf8) }
        bodies.append(Array(repeating: UInt8(ascii: "["), count: 100_000))
        bodies.append(Array(String(repeating: #"{"a":"#, count: 20_000).utf8))
        bodies.append(Array(#"{"facts":{"hostname":""#.utf8) + [0xFF, 0xFE, 0xC0, 0x80] + Array(#""},"problems":{}}"#.utf8))
        bodies.append(Array(String(repeating: "9", count: 500_000).utf8))

        for path in Self.signedPaths {
            for body in bodies {
                let headers = try SignedRequestEndToEndTests.ed25519Headers(agent, path, body)
                let response = try client.send(method: "POST", path: path, body: body, headers: headers)
                expectJSONClientError(response, "\(path) body \(String(decoding: body.prefix(60), as: UTF8.self))")
            }
        }
        #expect(controller.server.isRunning && controller.server.pid == pid)
        let body = Array(#"{"facts":{"hostname":"hostile"},"problems":{}}"#.utf8)
        let fine = try client.send(method: "POST", path: "/v1/heartbeat", body: body,
                                   headers: try SignedRequestEndToEndTests.ed25519Headers(agent, "/v1/heartbeat", body))
        #expect(fine.status == 200, "\(String(decoding: fine.body, as: UTF8.self))")
    }

    /// Requests that libmicrohttpd refuses before any handler runs. Its fixed answers are HTML; the controller must
    /// answer JSON, as docs/PROTOCOL.md promises for every error.
    @Test func requestsTheHTTPLibraryCannotParseGetJSONErrors() throws {
        let controller = try RunningController(plainHTTP: true)
        let pid = controller.server.pid
        let requests: [(String, [UInt8])] = [
            ("header line without a colon", Array("GET /v1/health HTTP/1.1\r\nHost: x\r\nBad Header Line\r\n\r\n".utf8)),
            ("negative Content-Length", Array("POST /v1/heartbeat HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n".utf8)),
            ("Content-Length past 2^64", Array("POST /v1/heartbeat HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999999999999999\r\n\r\n".utf8)),
            ("Content-Length not a number", Array("POST /v1/heartbeat HTTP/1.1\r\nHost: x\r\nContent-Length: 12abc\r\n\r\n".utf8)),
            ("malformed chunk", Array("POST /v1/heartbeat HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nZZZ\r\nabc\r\n0\r\n\r\n".utf8)),
            ("header larger than the connection's memory",
             Array("GET /v1/health HTTP/1.1\r\nHost: x\r\nX-Fleetkeep-Nonce: \(String(repeating: "A", count: 200_000))\r\n\r\n".utf8)),
            ("timestamp that is not UTF-8",
             Array("POST /v1/heartbeat HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nX-Fleetkeep-Agent: fk-1\r\nX-Fleetkeep-Timestamp: ".utf8)
                + [0xFF, 0xFE, 0x80] + Array("\r\n\r\n{}".utf8)),
        ]
        for (name, request) in requests {
            let reply = try RawSocket.exchange(port: controller.port, request)
            let parsed = try #require(RawSocket.parse(reply), "\(name): no HTTP reply: \(String(decoding: reply.prefix(200), as: UTF8.self))")
            #expect((400..<500).contains(parsed.status), "\(name): HTTP \(parsed.status)")
            #expect(parsed.headers.lowercased().contains("content-type: application/json"), "\(name): \(parsed.headers)")
            let decoded = try? JSONSerialization.jsonObject(with: Data(parsed.body)) as? [String: Any]
            #expect(decoded?["error"] is String, "\(name): body is not a JSON error: \(String(decoding: parsed.body.prefix(200), as: UTF8.self))")
        }
        #expect(controller.server.isRunning && controller.server.pid == pid)
        let health = try controller.client().send(method: "GET", path: "/v1/health")
        #expect(health.status == 200)
    }
}

/// Durations on the command line that do not fit the arithmetic they feed are usage errors (exit 2), not traps.
struct HostileDurationTests {
    @Test func hugeDurationsAreUsageErrors() throws {
        let data = TemporaryDirectory(prefix: "fk-e2e-controller")
        #expect(try ProcessRunner.run(RunningController.bin + "/fleetkeep-controller", ["init", "--data", data.path]).status == 0)
        let cases: [(String, [String], String)] = [
            ("fleetkeep-controller", ["token", "create", "--expires", "9223372036854775807s", "--url", "https://x:1", "--data", data.path], "--expires"),
            ("fleetkeep-controller", ["token", "create", "--expires", "1e308w", "--url", "https://x:1", "--data", data.path], "--expires"),
            ("fleetkeep-controller", ["serve", "--listen", "127.0.0.1:0", "--heartbeat-interval", "99999999999999999h", "--data", data.path], "--heartbeat-interval"),
            ("fleetkeep-controller", ["init", "--heartbeat-interval", "9e18", "--data", data.path + "/other"], "--heartbeat-interval"),
            ("fleetkeep-agent", ["run", "--interval", "99999999999999999h", "--state", data.path + "/agent"], "--interval"),
        ]
        for (program, arguments, option) in cases {
            let result = try ProcessRunner.run(RunningController.bin + "/" + program, arguments)
            #expect(result.status == 2, "\(program) \(arguments): exit \(result.status) \(result.stderr)")
            #expect(result.stderr.contains(option), "\(result.stderr)")
        }
    }
}
