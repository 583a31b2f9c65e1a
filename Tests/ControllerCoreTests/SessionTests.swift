import ControllerCore
import Crypto
import FleetkeepProtocol
import Foundation
import HTTPServer
import Testing
import TestSupport

private func errorText(_ response: HTTPResponse) -> String { String(decoding: response.body, as: UTF8.self) }

/// The cheaper per-request scheme: an Ed25519-signed session handshake, then HMAC-signed requests.
struct SessionTests {
    func openSession(_ harness: ControllerHarness, key: Ed25519PrivateKey) throws -> SessionCredentials {
        let body = Array("{}".utf8)
        let response = harness.send(APIPath.session, body: body, headers: try harness.heartbeatHeaders(key: key, body: body, path: APIPath.session))
        #expect(response.status == 200, "\(errorText(response))")
        let answer = try JSONDecoder().decode(SessionResponse.self, from: Data(response.body))
        #expect(answer.expiresInSeconds == SessionTickets.lifetime)
        return SessionCredentials(token: answer.sessionToken, key: try #require(Base64URL.decode(answer.sessionKey)), expiresAt: answer.expiresAt)
    }

    func heartbeat(_ harness: ControllerHarness, _ session: SessionCredentials, facts: [String: String] = ["hostname": "web1"],
                   at time: Int64? = nil) throws -> (HTTPResponse, [String: String], [UInt8]) {
        let body = Array(try JSONEncoder().encode(HeartbeatRequest(facts: facts, problems: [:])))
        let headers = RequestSigning.sign(method: "POST", path: APIPath.heartbeat, body: body, session: session, now: time ?? harness.clock.now)
        return (harness.send(APIPath.heartbeat, body: body, headers: headers), headers, body)
    }

    @Test func sessionSignedHeartbeatIsStored() throws {
        let (harness, key) = try ControllerHarness.enrolled()
        let session = try openSession(harness, key: key)
        harness.clock.now += 10
        let (response, _, _) = try heartbeat(harness, session, facts: ["hostname": "web1", "kernelRelease": "5.14"])
        #expect(response.status == 200, "\(errorText(response))")
        let agent = try #require(try harness.store.agents().first)
        #expect(agent.lastSeen == harness.clock.now)
        #expect(agent.facts["kernelRelease"] == "5.14")
    }

    @Test func aSessionCannotBeOpenedWithoutTheAgentKey() throws {
        let (harness, key) = try ControllerHarness.enrolled()
        let body = Array("{}".utf8)
        // Unsigned, signed by a stranger claiming this agent's id, and signed with another session.
        #expect(harness.send(APIPath.session, body: body, headers: [:]).status == 401)
        var forged = try harness.heartbeatHeaders(key: Ed25519PrivateKey(), body: body, path: APIPath.session)
        forged[RequestSigning.agentHeader] = RequestSigning.agentID(for: key.publicKey)
        #expect(harness.send(APIPath.session, body: body, headers: forged).status == 401)
        let session = try openSession(harness, key: key)
        let chained = RequestSigning.sign(method: "POST", path: APIPath.session, body: body, session: session, now: harness.clock.now)
        #expect(harness.send(APIPath.session, body: body, headers: chained).status == 401)
    }

    @Test func tamperedExpiredReplayedAndForeignSessionsAreRefusedWithoutChanges() throws {
        let (harness, key) = try ControllerHarness.enrolled()
        let otherKey = Ed25519PrivateKey()
        let session = try openSession(harness, key: key)
        let (first, headers, body) = try heartbeat(harness, session)
        #expect(first.status == 200)
        let before = try harness.snapshot()

        // Replay of an accepted request.
        let replay = harness.send(APIPath.heartbeat, body: body, headers: headers)
        #expect(replay.status == 409)
        #expect(errorText(replay).contains("replayed"))

        // A token rewritten to name another agent or a later expiry no longer matches its key.
        for forgedToken in [session.token.replacingOccurrences(of: RequestSigning.agentID(for: key.publicKey), with: RequestSigning.agentID(for: otherKey.publicKey)),
                            session.token.replacingOccurrences(of: String(session.expiresAt), with: String(session.expiresAt + 86400))] {
            let forged = SessionCredentials(token: forgedToken, key: session.key, expiresAt: session.expiresAt)
            let (response, _, _) = try heartbeat(harness, forged)
            #expect(response.status == 401 || response.status == 403, "\(errorText(response))")
        }
        // A guessed key, a garbage token, and a skewed clock.
        let (guessed, _, _) = try heartbeat(harness, SessionCredentials(token: session.token, key: SecureRandom.bytes(32), expiresAt: 0))
        #expect(guessed.status == 401)
        let (garbage, _, _) = try heartbeat(harness, SessionCredentials(token: "s1.nonsense", key: session.key, expiresAt: 0))
        #expect(garbage.status == 401)
        #expect(errorText(garbage).contains("malformed"))
        let (skewed, _, _) = try heartbeat(harness, session, at: harness.clock.now + 900)
        #expect(skewed.status == 401)
        #expect(errorText(skewed).contains("clock"))
        #expect(try harness.snapshot() == before)

        // After its lifetime the session is refused with a message saying to open a new one.
        harness.clock.now += SessionTickets.lifetime + 1
        let (expired, _, _) = try heartbeat(harness, session)
        #expect(expired.status == 401)
        #expect(errorText(expired).contains("expired"))
        #expect(try harness.snapshot() == before)
        // A new session works again.
        #expect(try heartbeat(harness, try openSession(harness, key: key)).0.status == 200)
    }

    @Test func removingAnAgentEndsItsSessions() throws {
        let (harness, key) = try ControllerHarness.enrolled()
        let session = try openSession(harness, key: key)
        #expect(try heartbeat(harness, session).0.status == 200)
        #expect(try harness.service.removeAgent(RequestSigning.agentID(for: key.publicKey)))
        let (refused, _, _) = try heartbeat(harness, session)
        #expect(refused.status == 403)
        #expect(errorText(refused).contains("removed"))
    }

    @Test func sessionsFromAnotherControllerSecretAreRefused() throws {
        let (harness, key) = try ControllerHarness.enrolled()
        let agentID = RequestSigning.agentID(for: key.publicKey)
        let foreign = SessionTickets(secret: SecureRandom.bytes(32)).mint(agentID: agentID, now: harness.clock.now)
        let (response, _, _) = try heartbeat(harness, foreign)
        #expect(response.status == 401)
    }

    @Test func aTokenForAnotherControllerIsRefused() throws {
        let harness = try ControllerHarness()
        let token = try harness.store.createToken(expiresIn: 3600, now: Date(timeIntervalSince1970: TimeInterval(harness.clock.now)))
        let before = try harness.snapshot()
        let key = Ed25519PrivateKey()
        let body = try harness.enrollBody(key: key, token: token, pin: Base64URL.encode(SecureRandom.bytes(32)))
        let headers = try RequestSigning.sign(method: "POST", path: APIPath.enroll, body: body, key: key,
                                              identity: (RequestSigning.keyHeader, Base64URL.encode(key.publicKey.rawRepresentation)), now: harness.clock.now)
        let response = harness.send(APIPath.enroll, body: body, headers: headers)
        #expect(response.status == 403)
        #expect(errorText(response).contains("another controller"))
        #expect(try harness.snapshot() == before)
    }
}

struct ReplayGuardTests {
    @Test func nonceIsAdmittedOncePerAgentAndForgottenAfterTheWindow() {
        let guardian = ReplayGuard(window: 300)
        #expect(guardian.admit(agentID: "a", nonce: "n1", timestamp: 1000, now: 1000))
        #expect(!guardian.admit(agentID: "a", nonce: "n1", timestamp: 1000, now: 1001))
        #expect(guardian.admit(agentID: "b", nonce: "n1", timestamp: 1000, now: 1001))
        for index in 0..<100 { _ = guardian.admit(agentID: "a", nonce: "x\(index)", timestamp: 1010, now: 1010) }
        #expect(guardian.count == 102)
        // Long after the window only the new entry is kept: memory is bounded by rate x window.
        #expect(guardian.admit(agentID: "c", nonce: "n", timestamp: 2000, now: 2000))
        #expect(guardian.count == 1)
    }
}

struct RestartReplayTests {
    @Test func aHeartbeatCapturedBeforeARestartIsRefusedAfterIt() throws {
        let harness = try ControllerHarness()
        let token = try harness.store.createToken(expiresIn: 3600, now: Date(timeIntervalSince1970: TimeInterval(harness.clock.now)))
        let key = Ed25519PrivateKey()
        #expect(try harness.enroll(key: key, token: token).status == 200)
        let body = Array(try JSONEncoder().encode(HeartbeatRequest(facts: ["hostname": "web1"], problems: [:])))
        let captured = try harness.heartbeatHeaders(key: key, body: body)
        #expect(harness.send(APIPath.heartbeat, body: body, headers: captured).status == 200)

        // A new service on the same database (a restart): its nonce cache is empty, the stored floor is not.
        let clock = harness.clock
        let restarted = ControllerService(store: harness.store, certificatePin: ControllerHarness.pin, clock: { clock.now + 5 })
        let replay = restarted.router.handle(HTTPRequest(method: "POST", path: APIPath.heartbeat, headers: captured, body: body))
        #expect(replay.status == 409)
        #expect(String(decoding: replay.body, as: UTF8.self).contains("restarted"))
        let fresh = try harness.heartbeatHeaders(key: key, body: body, at: clock.now + 5)
        #expect(restarted.router.handle(HTTPRequest(method: "POST", path: APIPath.heartbeat, headers: fresh, body: body)).status == 200)
    }
}

struct RestartReplayOfSessionsAndFloorsTests {
    func restart(_ harness: ControllerHarness, after seconds: Int64) -> ControllerService {
        let clock = harness.clock
        return ControllerService(store: harness.store, certificatePin: ControllerHarness.pin, sessionSecret: ControllerHarness.sessionSecret,
                                 clock: { clock.now + seconds })
    }

    /// A captured session handshake must not hand out a fresh session key after a restart empties the nonce cache.
    @Test func aSessionOpeningCapturedBeforeARestartIsRefusedAfterIt() throws {
        let (harness, key) = try ControllerHarness.enrolled()
        let body = Array("{}".utf8)
        let captured = try harness.heartbeatHeaders(key: key, body: body, path: APIPath.session)
        #expect(harness.send(APIPath.session, body: body, headers: captured).status == 200)

        let restarted = restart(harness, after: 5)
        let replay = restarted.router.handle(HTTPRequest(method: "POST", path: APIPath.session, headers: captured, body: body))
        #expect(replay.status == 409, "\(errorText(replay))")
        #expect(!errorText(replay).contains("sessionKey"))
        // A new handshake, signed now, still opens a session.
        let fresh = try harness.heartbeatHeaders(key: key, body: body, at: harness.clock.now + 5, path: APIPath.session)
        #expect(restarted.router.handle(HTTPRequest(method: "POST", path: APIPath.session, headers: fresh, body: body)).status == 200)
    }

    /// An agent whose clock ran ahead (within the allowed skew) must not raise the post-restart replay floor past the
    /// controller's clock: once its clock is corrected, its heartbeats are accepted after a restart.
    @Test func aHeartbeatSignedAheadOfTheControllerClockDoesNotLockOutLaterOnesAfterARestart() throws {
        let (harness, key) = try ControllerHarness.enrolled()
        let session = try SessionTests().openSession(harness, key: key)
        let (ahead, _, _) = try SessionTests().heartbeat(harness, session, at: harness.clock.now + 280)
        #expect(ahead.status == 200)

        let restarted = restart(harness, after: 10)
        let body = Array(try JSONEncoder().encode(HeartbeatRequest(facts: ["hostname": "web1"], problems: [:])))
        let corrected = RequestSigning.sign(method: "POST", path: APIPath.heartbeat, body: body, session: session, now: harness.clock.now + 10)
        let answer = restarted.router.handle(HTTPRequest(method: "POST", path: APIPath.heartbeat, headers: corrected, body: body))
        #expect(answer.status == 200, "\(errorText(answer))")
    }

    /// Every session-signed request, not only heartbeats, is held to the floor: a request captured before the
    /// agent's last stored heartbeat (here one asking for the escrow recipient; telemetry and job polls alike) used
    /// to be accepted once more after a restart emptied the nonce cache.
    @Test func anySessionRequestCapturedBeforeARestartIsRefusedAfterIt() throws {
        let (harness, key) = try ControllerHarness.enrolled()
        let session = try SessionTests().openSession(harness, key: key)
        let body = Array("{}".utf8)
        let captured = RequestSigning.sign(method: "POST", path: APIPath.escrowRecipient, body: body, session: session, now: harness.clock.now)
        #expect(harness.send(APIPath.escrowRecipient, body: body, headers: captured).status == 200)
        let (beat, _, _) = try SessionTests().heartbeat(harness, session, at: harness.clock.now + 1)
        #expect(beat.status == 200)
        let restarted = restart(harness, after: 5)
        let replay = restarted.router.handle(HTTPRequest(method: "POST", path: APIPath.escrowRecipient, headers: captured, body: body))
        #expect(replay.status == 409, "\(errorText(replay))")
        let fresh = RequestSigning.sign(method: "POST", path: APIPath.escrowRecipient, body: body, session: session, now: harness.clock.now + 5)
        #expect(restarted.router.handle(HTTPRequest(method: "POST", path: APIPath.escrowRecipient, headers: fresh, body: body)).status == 200)
    }

    /// The floor still refuses a session-signed heartbeat captured before the restart.
    @Test func aSessionHeartbeatCapturedBeforeARestartIsRefusedAfterIt() throws {
        let (harness, key) = try ControllerHarness.enrolled()
        let session = try SessionTests().openSession(harness, key: key)
        let (first, captured, body) = try SessionTests().heartbeat(harness, session)
        #expect(first.status == 200)
        let restarted = restart(harness, after: 5)
        let replay = restarted.router.handle(HTTPRequest(method: "POST", path: APIPath.heartbeat, headers: captured, body: body))
        #expect(replay.status == 409)
    }
}

struct ProblemsInventoryTests {
    @Test func problemKeysMustBeDeclaredFactsAndValuesBounded() throws {
        let (harness, key) = try ControllerHarness.enrolled()
        let before = try harness.snapshot()
        for problems in [["customerEmail": "x"], ["osID": String(repeating: "x", count: DataInventory.longestValue + 1)]] {
            let body = Array(try JSONEncoder().encode(HeartbeatRequest(facts: ["hostname": "web1"], problems: problems)))
            let response = harness.send(APIPath.heartbeat, body: body, headers: try harness.heartbeatHeaders(key: key, body: body))
            #expect(response.status == 400)
            #expect(errorText(response).contains(problems.keys.first ?? "?"))
        }
        #expect(try harness.snapshot() == before)
        let stored = try #require(try harness.store.agents().first)
        #expect(stored.problems.isEmpty)
    }

    @Test func unknownTopLevelFieldsAreRefused() throws {
        let (harness, key) = try ControllerHarness.enrolled()
        let before = try harness.snapshot()
        let body = Array(#"{"facts":{"hostname":"web1"},"problems":{},"customerEmail":"a@b"}"#.utf8)
        let response = harness.send(APIPath.heartbeat, body: body, headers: try harness.heartbeatHeaders(key: key, body: body))
        #expect(response.status == 400)
        #expect(errorText(response).contains("customerEmail"))
        #expect(try harness.snapshot() == before)
    }
}
