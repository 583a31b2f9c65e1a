import Crypto
import Foundation
import HTTPClient
import Testing
import TestSupport

/// Signed requests against the real controller over HTTPS, built here from docs/PROTOCOL.md (not from the protocol
/// module), so the documented canonical string is checked too.
struct SignedRequestEndToEndTests {
    struct Agent {
        let id: String
        let key: Ed25519PrivateKey
    }

    func enrolledAgent(_ controller: RunningController, state: TemporaryDirectory) throws -> Agent {
        let enrolled = try agent(["enroll", try controller.token(), "--state", state.path + "/agent"])
        #expect(enrolled.status == 0, "\(enrolled.stderr)")
        let keyText = try String(contentsOfFile: state.path + "/agent/agent.key", encoding: .utf8)
        let key = try Ed25519PrivateKey(rawRepresentation: try #require(Base64URL.decode(keyText.trimmingCharacters(in: .whitespacesAndNewlines))))
        let enrollment = try #require(try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: state.path + "/agent/enrollment.json"))) as? [String: Any])
        return Agent(id: try #require(enrollment["agentID"] as? String), key: key)
    }

    static func canonical(_ path: String, _ timestamp: Int64, _ nonce: String, _ body: [UInt8]) -> [UInt8] {
        Array("FLEETKEEP-V1\nPOST\n\(path)\n\(timestamp)\n\(nonce)\n\(SHA256.hex(body))".utf8)
    }

    static func ed25519Headers(_ agent: Agent, _ path: String, _ body: [UInt8], timestamp: Int64 = Int64(Date().timeIntervalSince1970)) throws -> [String: String] {
        let nonce = Base64URL.encode(SecureRandom.bytes(16))
        let signature = try agent.key.signature(for: canonical(path, timestamp, nonce, body))
        return ["x-fleetkeep-agent": agent.id, "x-fleetkeep-timestamp": String(timestamp), "x-fleetkeep-nonce": nonce,
                "x-fleetkeep-signature": Base64URL.encode(signature), "content-type": "application/json"]
    }

    static func sessionHeaders(token: String, key: [UInt8], _ path: String, _ body: [UInt8]) -> [String: String] {
        let timestamp = Int64(Date().timeIntervalSince1970)
        let nonce = Base64URL.encode(SecureRandom.bytes(16))
        return ["x-fleetkeep-session": token, "x-fleetkeep-timestamp": String(timestamp), "x-fleetkeep-nonce": nonce,
                "x-fleetkeep-signature": Base64URL.encode(HMACSHA256.authenticate(canonical(path, timestamp, nonce, body), key: key)),
                "content-type": "application/json"]
    }

    func text(_ response: HTTPClientResponse) -> String { String(decoding: response.body, as: UTF8.self) }

    @Test func tamperedReplayedSkewedAndRemovedAreRefused() throws {
        let controller = try RunningController()
        let state = TemporaryDirectory(prefix: "fk-e2e-state")
        let agent = try enrolledAgent(controller, state: state)
        let client = try controller.client()
        let body = Array(#"{"facts":{"hostname":"signed-e2e"},"problems":{}}"#.utf8)

        let headers = try Self.ed25519Headers(agent, "/v1/heartbeat", body)
        let accepted = try client.send(method: "POST", path: "/v1/heartbeat", body: body, headers: headers)
        #expect(accepted.status == 200, "\(text(accepted))")

        let replayed = try client.send(method: "POST", path: "/v1/heartbeat", body: body, headers: headers)
        #expect(replayed.status == 409)
        #expect(text(replayed).contains("replayed"))

        var tampered = try Self.ed25519Headers(agent, "/v1/heartbeat", body)
        tampered["x-fleetkeep-signature"] = Base64URL.encode(SecureRandom.bytes(64))
        let badSignature = try client.send(method: "POST", path: "/v1/heartbeat", body: body, headers: tampered)
        #expect(badSignature.status == 401)
        #expect(text(badSignature).contains("signature"))

        let skewed = try client.send(method: "POST", path: "/v1/heartbeat", body: body,
                                     headers: try Self.ed25519Headers(agent, "/v1/heartbeat", body, timestamp: Int64(Date().timeIntervalSince1970) - 3600))
        #expect(skewed.status == 401)
        #expect(text(skewed).contains("clock"))

        // The session scheme: one Ed25519-signed handshake, then HMAC-signed requests.
        let empty = Array("{}".utf8)
        let opened = try client.send(method: "POST", path: "/v1/session", body: empty, headers: try Self.ed25519Headers(agent, "/v1/session", empty))
        #expect(opened.status == 200, "\(text(opened))")
        let session = try #require(try JSONSerialization.jsonObject(with: Data(opened.body)) as? [String: Any])
        let token = try #require(session["sessionToken"] as? String)
        let sessionKeyText = try #require(session["sessionKey"] as? String)
        let sessionKey = try #require(Base64URL.decode(sessionKeyText))
        let viaSession = try client.send(method: "POST", path: "/v1/heartbeat", body: body,
                                         headers: Self.sessionHeaders(token: token, key: sessionKey, "/v1/heartbeat", body))
        #expect(viaSession.status == 200, "\(text(viaSession))")
        let wrongKey = try client.send(method: "POST", path: "/v1/heartbeat", body: body,
                                       headers: Self.sessionHeaders(token: token, key: SecureRandom.bytes(32), "/v1/heartbeat", body))
        #expect(wrongKey.status == 401)

        // `agents remove`, run as a separate process, reaches the running server within about a second.
        #expect(try controller.controller(["agents", "remove", agent.id]).status == 0)
        var refused = 0
        for _ in 0..<30 where refused != 403 {
            Thread.sleep(forTimeInterval: 0.2)
            refused = try client.send(method: "POST", path: "/v1/heartbeat", body: body,
                                      headers: Self.sessionHeaders(token: token, key: sessionKey, "/v1/heartbeat", body)).status
        }
        #expect(refused == 403)
        #expect(try client.send(method: "POST", path: "/v1/heartbeat", body: body, headers: try Self.ed25519Headers(agent, "/v1/heartbeat", body)).status == 403)
    }

    @Test func plainHTTPOnlyOnLoopback() throws {
        let data = TemporaryDirectory(prefix: "fk-e2e-controller")
        #expect(try ProcessRunner.run(RunningController.bin + "/fleetkeep-controller", ["init", "--data", data.path]).status == 0)
        let refused = try ProcessRunner.run(RunningController.bin + "/fleetkeep-controller",
                                            ["serve", "--data", data.path, "--listen", "0.0.0.0:0", "--plain-http"])
        #expect(refused.status == 2)
        #expect(refused.stderr.contains("--plain-http"))
        let again = try ProcessRunner.run(RunningController.bin + "/fleetkeep-controller", ["init", "--data", data.path])
        #expect(again.status == 1)
        #expect(again.stderr.contains("refusing to overwrite"))
    }
}
