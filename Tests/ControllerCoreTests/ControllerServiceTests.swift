import ControllerCore
import Crypto
import FleetkeepProtocol
import Foundation
import HTTPServer
import Testing
import TestSupport

/// Drives the controller's handlers through its router with real SQLite files, no network.
final class ControllerHarness: @unchecked Sendable {
    /// A harness with one agent enrolled, and that agent's key.
    static func enrolled() throws -> (ControllerHarness, Ed25519PrivateKey) {
        let harness = try ControllerHarness()
        let token = try harness.store.createToken(expiresIn: 3600, now: Date(timeIntervalSince1970: TimeInterval(harness.clock.now)))
        let key = Ed25519PrivateKey()
        #expect(try harness.enroll(key: key, token: token).status == 200)
        return (harness, key)
    }

    let directory = TemporaryDirectory(prefix: "fk-controller")
    let store: ControllerStore
    let service: ControllerService
    let router: Router
    var now: Int64 = 1_800_000_000

    init() throws {
        store = try ControllerStore(path: directory.appending("controller.db"))
        let clockBox = ClockBox()
        service = ControllerService(store: store, certificatePin: Self.pin, sessionSecret: Self.sessionSecret, clock: { clockBox.now })
        router = service.router
        self.clock = clockBox
        clockBox.now = now
    }
    let clock: ClockBox
    static let pin = Base64URL.encode(SHA256.hash(Array("this controller".utf8)))
    /// Fixed, as a serving controller derives it from its signing key: sessions survive a restart.
    static let sessionSecret = SHA256.hash(Array("this controller's session secret".utf8))

    final class ClockBox: @unchecked Sendable { var now: Int64 = 0 }  // tests set it from one thread

    func send(_ path: String, body: [UInt8], headers: [String: String]) -> HTTPResponse {
        router.handle(HTTPRequest(method: "POST", path: path, headers: headers, body: body))
    }

    func enrollBody(key: Ed25519PrivateKey, token: (id: String, secret: String), facts: [String: String] = ["hostname": "web1"],
                    pin: String = ControllerHarness.pin) throws -> [UInt8] {
        Array(try JSONEncoder().encode(EnrollRequest(tokenID: token.id, tokenSecret: token.secret, controllerPin: pin,
                                                     publicKey: Base64URL.encode(key.publicKey.rawRepresentation), facts: facts, problems: [:])))
    }

    func enroll(key: Ed25519PrivateKey, token: (id: String, secret: String), facts: [String: String] = ["hostname": "web1"]) throws -> HTTPResponse {
        let body = try enrollBody(key: key, token: token, facts: facts)
        let headers = try RequestSigning.sign(method: "POST", path: APIPath.enroll, body: body, key: key,
                                              identity: (RequestSigning.keyHeader, Base64URL.encode(key.publicKey.rawRepresentation)), now: clock.now)
        return send(APIPath.enroll, body: body, headers: headers)
    }

    func heartbeatHeaders(key: Ed25519PrivateKey, body: [UInt8], at time: Int64? = nil, path: String = APIPath.heartbeat) throws -> [String: String] {
        try RequestSigning.sign(method: "POST", path: path, body: body, key: key,
                                identity: (RequestSigning.agentHeader, RequestSigning.agentID(for: key.publicKey)), now: time ?? clock.now)
    }

    func snapshot() throws -> String {
        // Facts sorted: two equal dictionaries may print their entries in different orders (per-instance hashing).
        let agents = try store.agents().map { "\($0.agentID) \($0.lastSeen ?? -1) \($0.facts.sorted { $0.key < $1.key }) \($0.problems.sorted { $0.key < $1.key }) \($0.removed)" }
        let tokens = try store.database.query("SELECT id, used_at FROM tokens ORDER BY id").map { "\($0.string("id") ?? "") \($0.int("used_at") ?? -1)" }
        return (agents + tokens).joined(separator: "\n")
    }
}

private func errorText(_ response: HTTPResponse) -> String { String(decoding: response.body, as: UTF8.self) }

struct EnrollmentTests {
    @Test func tokenEnrollsOnceAndIdentityIsTheKey() throws {
        let harness = try ControllerHarness()
        let token = try harness.store.createToken(expiresIn: 3600, now: Date(timeIntervalSince1970: TimeInterval(harness.clock.now)))
        let key = Ed25519PrivateKey()
        let response = try harness.enroll(key: key, token: token)
        #expect(response.status == 200)
        let answer = try JSONDecoder().decode(EnrollResponse.self, from: Data(response.body))
        #expect(answer.agentID == RequestSigning.agentID(for: key.publicKey))

        // A used token is refused, and nothing changes.
        let before = try harness.snapshot()
        let reused = try harness.enroll(key: Ed25519PrivateKey(), token: token)
        #expect(reused.status == 401)
        #expect(errorText(reused).contains("already used"))
        #expect(try harness.snapshot() == before)

        // A clone of the same host with its own key and token is a second agent.
        let second = try harness.store.createToken(expiresIn: 3600, now: Date(timeIntervalSince1970: TimeInterval(harness.clock.now)))
        #expect(try harness.enroll(key: Ed25519PrivateKey(), token: second).status == 200)
        #expect(try harness.store.agents().count == 2)
    }

    @Test func expiredUnknownAndForeignTokensAreRefused() throws {
        let harness = try ControllerHarness()
        let expired = try harness.store.createToken(expiresIn: 60, now: Date(timeIntervalSince1970: TimeInterval(harness.clock.now - 3600)))
        let before = try harness.snapshot()
        let response = try harness.enroll(key: Ed25519PrivateKey(), token: expired)
        #expect(response.status == 401)
        #expect(errorText(response).contains("expired"))
        // A token made by another controller: its id and secret are unknown here.
        let other = try ControllerHarness()
        let foreign = try other.store.createToken(expiresIn: 3600)
        let refused = try harness.enroll(key: Ed25519PrivateKey(), token: foreign)
        #expect(refused.status == 401)
        #expect(errorText(refused).contains("not known to this controller"))
        // Right id, wrong secret.
        let good = try harness.store.createToken(expiresIn: 3600, now: Date(timeIntervalSince1970: TimeInterval(harness.clock.now)))
        #expect(try harness.enroll(key: Ed25519PrivateKey(), token: (good.id, "wrong")).status == 401)
        #expect(try harness.snapshot().contains(good.id + " -1"))
        #expect(try harness.store.agents().isEmpty)
        _ = before
    }

    @Test func enrollmentMustBeSignedByTheRegisteredKey() throws {
        let harness = try ControllerHarness()
        let token = try harness.store.createToken(expiresIn: 3600, now: Date(timeIntervalSince1970: TimeInterval(harness.clock.now)))
        let key = Ed25519PrivateKey(), impostor = Ed25519PrivateKey()
        let body = try harness.enrollBody(key: key, token: token)
        let headers = try RequestSigning.sign(method: "POST", path: APIPath.enroll, body: body, key: impostor,
                                              identity: (RequestSigning.keyHeader, Base64URL.encode(key.publicKey.rawRepresentation)), now: harness.clock.now)
        #expect(harness.send(APIPath.enroll, body: body, headers: headers).status == 401)
        #expect(try harness.store.agents().isEmpty)
    }

    @Test func undeclaredFactIsRefusedAtIngestion() throws {
        let harness = try ControllerHarness()
        let token = try harness.store.createToken(expiresIn: 3600, now: Date(timeIntervalSince1970: TimeInterval(harness.clock.now)))
        let response = try harness.enroll(key: Ed25519PrivateKey(), token: token, facts: ["hostname": "a", "customerEmail": "x@y"])
        #expect(response.status == 400)
        #expect(errorText(response).contains("customerEmail"))
        #expect(try harness.store.agents().isEmpty)
    }
}

struct HeartbeatTests {
    func body(_ facts: [String: String] = ["hostname": "web1", "kernelRelease": "6.1.0"]) throws -> [UInt8] {
        Array(try JSONEncoder().encode(HeartbeatRequest(facts: facts, problems: [:])))
    }

    @Test func signedHeartbeatUpdatesFactsAndLastSeen() throws {
        let (harness, key) = try ControllerHarness.enrolled()
        harness.clock.now += 30
        let body = try body()
        let response = harness.send(APIPath.heartbeat, body: body, headers: try harness.heartbeatHeaders(key: key, body: body))
        #expect(response.status == 200)
        let agent = try #require(try harness.store.agents().first)
        #expect(agent.lastSeen == harness.clock.now)
        #expect(agent.facts["kernelRelease"] == "6.1.0")
    }

    @Test func tamperedReplayedSkewedAndUnknownRequestsAreRefusedWithoutChanges() throws {
        let (harness, key) = try ControllerHarness.enrolled()
        let body = try body()
        let headers = try harness.heartbeatHeaders(key: key, body: body)
        #expect(harness.send(APIPath.heartbeat, body: body, headers: headers).status == 200)
        let before = try harness.snapshot()

        let replay = harness.send(APIPath.heartbeat, body: body, headers: headers)
        #expect(replay.status == 409)
        #expect(errorText(replay).contains("replayed"))

        var tampered = headers
        tampered[RequestSigning.signatureHeader] = Base64URL.encode(SecureRandom.bytes(64))
        #expect(harness.send(APIPath.heartbeat, body: body, headers: tampered).status == 401)

        let otherBody = try self.body(["hostname": "evil"])
        #expect(harness.send(APIPath.heartbeat, body: otherBody, headers: headers).status == 401)

        let skewed = harness.send(APIPath.heartbeat, body: body, headers: try harness.heartbeatHeaders(key: key, body: body, at: harness.clock.now - 600))
        #expect(skewed.status == 401)
        #expect(errorText(skewed).contains("clock"))

        let stranger = Ed25519PrivateKey()
        #expect(harness.send(APIPath.heartbeat, body: body, headers: try harness.heartbeatHeaders(key: stranger, body: body)).status == 403)

        #expect(harness.send(APIPath.heartbeat, body: body, headers: [:]).status == 401)
        #expect(try harness.snapshot() == before)
    }

    @Test func malformedJSONAndUndeclaredFieldsAre400() throws {
        let (harness, key) = try ControllerHarness.enrolled()
        let before = try harness.snapshot()
        let garbage = Array("{not json".utf8)
        let response = harness.send(APIPath.heartbeat, body: garbage, headers: try harness.heartbeatHeaders(key: key, body: garbage))
        #expect(response.status == 400)
        #expect(errorText(response).contains("malformed JSON"))
        let extra = try body(["hostname": "a", "mac": "00:11"])
        let refused = harness.send(APIPath.heartbeat, body: extra, headers: try harness.heartbeatHeaders(key: key, body: extra))
        #expect(refused.status == 400)
        #expect(errorText(refused).contains("'mac'"))
        #expect(try harness.snapshot() == before)
    }

    @Test func removedAgentIsRefused() throws {
        let (harness, key) = try ControllerHarness.enrolled()
        let body = try body()
        #expect(harness.send(APIPath.heartbeat, body: body, headers: try harness.heartbeatHeaders(key: key, body: body)).status == 200)
        #expect(try harness.service.removeAgent(RequestSigning.agentID(for: key.publicKey)))
        #expect(harness.send(APIPath.heartbeat, body: body, headers: try harness.heartbeatHeaders(key: key, body: body)).status == 403)
    }

    @Test func reportMarksAgentsStaleAfterThreeMissedIntervals() throws {
        let (harness, _) = try ControllerHarness.enrolled()
        try harness.store.setSetting("heartbeat_interval", "60")
        #expect(try FleetReport.rows(store: harness.store, now: harness.clock.now + 170).first?.status == "online")
        #expect(try FleetReport.rows(store: harness.store, now: harness.clock.now + 181).first?.status == "stale")
        #expect(FleetReport.table(try FleetReport.rows(store: harness.store, now: harness.clock.now)).contains("web1"))
    }
}
