import Crypto
import FleetkeepProtocol
import Foundation
import HTTPClient

/// The agent's link to its controller: HTTPS pinned to the controller's key, every request signed.
public struct ControllerConnection: Sendable {
    let client: HTTPClient
    let key: Ed25519PrivateKey
    let identity: (name: String, value: String)

    init(url: String, pin: String, key: Ed25519PrivateKey, identity: (name: String, value: String), retry: RetryPolicy) throws {
        client = try HTTPClient(configuration: HTTPClientConfiguration(baseURL: url, pinnedPublicKeySHA256: pin,
                                                                       timeoutSeconds: 20, connectTimeoutSeconds: 10, retry: retry))
        self.key = key
        self.identity = identity
    }

    /// Sends `value` as JSON, signed afresh on each attempt, and decodes the answer; non-2xx answers become errors.
    func post<Body: Encodable, Answer: Decodable>(_ path: String, _ value: Body, as answer: Answer.Type) throws -> Answer {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        let body = Array(try encoder.encode(value))
        let key = self.key, identity = self.identity
        let response = try client.send(method: "POST", path: path, body: body, headers: ["content-type": "application/json"]) { method, path, body in
            try RequestSigning.sign(method: method, path: path, body: body, key: key, identity: identity)
        }
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
