import Crypto
import FleetkeepProtocol
import Foundation
import HTTPClient
import Synchronization

/// The agent's link to its controller: HTTPS pinned to the controller's key, every request signed.
///
/// An enrolled agent signs with a session key: it opens a session with one Ed25519-signed `POST /v1/session`, then
/// signs requests with HMAC-SHA256 until the session nears its end (or the controller refuses it), and opens another.
/// Enrollment signs with Ed25519 directly (`sessions: false`).
public struct ControllerConnection: Sendable {
    let client: HTTPClient
    let key: Ed25519PrivateKey
    let identity: (name: String, value: String)
    let usesSessions: Bool
    private let session = SessionCache()

    init(url: String, pin: String, key: Ed25519PrivateKey, identity: (name: String, value: String), retry: RetryPolicy,
         sessions: Bool = true) throws {
        client = try HTTPClient(configuration: HTTPClientConfiguration(baseURL: url, pinnedPublicKeySHA256: pin,
                                                                       timeoutSeconds: 20, connectTimeoutSeconds: 10, retry: retry))
        self.key = key
        self.identity = identity
        usesSessions = sessions
    }

    /// Sends `value` as JSON, signed afresh on each attempt, and decodes the answer; non-2xx answers become errors.
    func post<Body: Encodable, Answer: Decodable>(_ path: String, _ value: Body, as answer: Answer.Type) throws -> Answer {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        let body = Array(try encoder.encode(value))
        var response = try send(path, body)
        if response.status == 401 && usesSessions {
            // The controller lost or refused the session (expired, or its key changed): open a new one, once.
            session.state.withLock { $0 = nil }
            response = try send(path, body)
        }
        return try Self.decode(response, path: path, as: answer)
    }

    /// Sends `body` exactly as given (the telemetry upload, whose bytes `telemetry preview` shows), signed afresh on
    /// each attempt, and decodes the answer.
    func post<Answer: Decodable>(_ path: String, body: [UInt8], as answer: Answer.Type) throws -> Answer {
        var response = try send(path, body)
        if response.status == 401 && usesSessions {
            session.state.withLock { $0 = nil }
            response = try send(path, body)
        }
        return try Self.decode(response, path: path, as: answer)
    }

    private func send(_ path: String, _ body: [UInt8]) throws -> HTTPClientResponse {
        let headers = ["content-type": "application/json"]
        guard usesSessions else {
            let key = self.key, identity = self.identity
            return try client.send(method: "POST", path: path, body: body, headers: headers) { method, path, body in
                try RequestSigning.sign(method: method, path: path, body: body, key: key, identity: identity, now: FleetkeepClock.now())
            }
        }
        let credentials = try currentSession()
        return try client.send(method: "POST", path: path, body: body, headers: headers) { method, path, body in
            RequestSigning.sign(method: method, path: path, body: body, session: credentials, now: FleetkeepClock.now())
        }
    }

    /// The open session, or a new one when there is none or it is near its end.
    private func currentSession() throws -> SessionCredentials {
        if let current = session.state.withLock({ $0 }), current.renewAfter > Date() { return current.credentials }
        let key = self.key, identity = self.identity
        let response = try client.send(method: "POST", path: APIPath.session, body: Array("{}".utf8),
                                       headers: ["content-type": "application/json"]) { method, path, body in
            try RequestSigning.sign(method: method, path: path, body: body, key: key, identity: identity, now: FleetkeepClock.now())
        }
        let answer = try Self.decode(response, path: APIPath.session, as: SessionResponse.self)
        guard let sessionKey = Base64URL.decode(answer.sessionKey), sessionKey.count == 32 else {
            throw AgentError("controller answered \(APIPath.session) with a malformed session key")
        }
        let credentials = SessionCredentials(token: answer.sessionToken, key: sessionKey, expiresAt: answer.expiresAt)
        // Renew a little early so a request never goes out on a session about to lapse.
        // The lifetime is the controller's number: clamped to a day, so no value can trap or pin a session forever.
        let lifetime = min(max(answer.expiresInSeconds, 0), 86_400)
        let renewAfter = Date().addingTimeInterval(Double(max(lifetime - 60, 0)))
        session.state.withLock { $0 = (credentials, renewAfter) }
        return credentials
    }

    private static func decode<Answer: Decodable>(_ response: HTTPClientResponse, path: String, as answer: Answer.Type) throws -> Answer {
        guard response.isSuccess else {
            let message = (try? JSONDecoder().decode(ErrorBody.self, from: Data(response.body)))?.error
                ?? String(decoding: response.body.prefix(200), as: UTF8.self)
            throw AgentError("controller refused \(path) with HTTP \(response.status): \(message)")
        }
        do {
            return try JSONDecoder().decode(answer, from: Data(response.body))
        } catch {
            throw AgentError("controller answered \(path) with unexpected JSON: \(error)")
        }
    }
}

/// The connection's open session, shared by its copies (a struct holding a Mutex could not be copied).
final class SessionCache: Sendable {
    let state = Mutex<(credentials: SessionCredentials, renewAfter: Date)?>(nil)
}
