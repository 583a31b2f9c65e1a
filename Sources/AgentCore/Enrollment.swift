import Crypto
import FleetkeepProtocol
import Foundation
import HTTPClient

/// Joining a controller with a single-use token.
public enum Enrollment {
    /// Generates the agent key, registers it with the controller named in the token (pinning its certificate),
    /// and saves the identity. Nothing is written unless the controller accepted the enrollment.
    public static func enroll(tokenText: String, state: AgentState, facts: AgentFacts) throws -> AgentState.Enrollment {
        let token: EnrollmentToken
        do { token = try EnrollmentToken(text: tokenText) } catch { throw AgentError("\(error)") }
        if state.isEnrolled {
            throw AgentError("\(state.directory) already holds an enrolled agent; use another --state directory or remove it first")
        }
        let key = Ed25519PrivateKey()
        let connection = try ControllerConnection(url: token.controllerURL, pin: token.certificatePin, key: key,
                                                  identity: (RequestSigning.keyHeader, Base64URL.encode(key.publicKey.rawRepresentation)),
                                                  retry: RetryPolicy(maxAttempts: 3, baseDelay: 0.5, maxDelay: 5), sessions: false)
        let request = EnrollRequest(tokenID: token.id, tokenSecret: token.secret, controllerPin: token.certificatePin, publicKey: Base64URL.encode(key.publicKey.rawRepresentation),
                                    facts: facts.fields, problems: facts.problems)
        let answer: EnrollResponse
        do {
            answer = try connection.post(APIPath.enroll, request, as: EnrollResponse.self)
        } catch let error as HTTPClientError {
            throw AgentError("cannot enroll with \(token.controllerURL): \(error.message)")
        }
        try state.prepareDirectory()
        try state.saveKey(key)
        let enrollment = AgentState.Enrollment(agentID: answer.agentID, controllerURL: token.controllerURL,
                                               certificatePin: token.certificatePin, enrolledAt: Date(),
                                               heartbeatIntervalSeconds: answer.heartbeatIntervalSeconds,
                                               controllerSigningKey: answer.controllerSigningKey)
        try state.save(enrollment)
        try state.save(AgentState.Status(licence: answer.licence))
        return enrollment
    }

    /// A signed connection for an enrolled agent.
    public static func connection(state: AgentState, retry: RetryPolicy = .none) throws -> ControllerConnection {
        let enrollment = try state.loadEnrollment()
        return try ControllerConnection(url: enrollment.controllerURL, pin: enrollment.certificatePin, key: try state.loadKey(),
                                        identity: (RequestSigning.agentHeader, enrollment.agentID), retry: retry)
    }
}
