import CommandLineSupport
import Crypto
import FleetkeepProtocol
import Foundation
import Testing

struct EnrollmentTokenTests {
    let pin = Data(SecureRandom.bytes(32)).base64EncodedString()

    @Test func tokenRoundTripsAsOneString() throws {
        let token = EnrollmentToken(controllerURL: "https://ctl.example:8443", certificatePin: pin, id: "abc", secret: "s3cret")
        #expect(token.text.hasPrefix("fk1."))
        #expect(!token.text.contains(" "))
        #expect(try EnrollmentToken(text: token.text + "\n") == token)
    }

    @Test func damagedTokensGiveClearErrors() {
        #expect(throws: ProtocolError.self) { try EnrollmentToken(text: "hello") }
        #expect(throws: ProtocolError.self) { try EnrollmentToken(text: "fk1.!!!") }
        let plainHTTP = EnrollmentToken(controllerURL: "http://ctl.example", certificatePin: pin, id: "a", secret: "b")
        #expect(throws: ProtocolError.self) { try EnrollmentToken(text: plainHTTP.text) }
        let badPin = EnrollmentToken(controllerURL: "https://ctl.example", certificatePin: "xyz", id: "a", secret: "b")
        #expect(throws: ProtocolError.self) { try EnrollmentToken(text: badPin.text) }
    }
}

struct RequestSigningTests {
    let key = Ed25519PrivateKey()
    let body = Array(#"{"facts":{}}"#.utf8)

    func signed(now: Int64 = 1_000_000) throws -> [String: String] {
        try RequestSigning.sign(method: "POST", path: "/v1/heartbeat", body: body, key: key, identity: (RequestSigning.agentHeader, "fk-x"), now: now)
    }

    @Test func signedRequestVerifies() throws {
        let headers = try signed()
        let result = try RequestSigning.verify(method: "POST", path: "/v1/heartbeat", headers: headers, body: body, publicKey: key.publicKey, now: 1_000_010)
        #expect(result.timestamp == 1_000_000)
        #expect(result.nonce == headers[RequestSigning.nonceHeader])
    }

    @Test func anyChangeBreaksTheSignature() throws {
        let headers = try signed()
        #expect(throws: RequestSigning.Rejection.self) {
            try RequestSigning.verify(method: "POST", path: "/v1/heartbeat", headers: headers, body: body + [32], publicKey: key.publicKey, now: 1_000_000)
        }
        #expect(throws: RequestSigning.Rejection.self) {
            try RequestSigning.verify(method: "POST", path: "/v1/enroll", headers: headers, body: body, publicKey: key.publicKey, now: 1_000_000)
        }
        #expect(throws: RequestSigning.Rejection.self) {
            try RequestSigning.verify(method: "POST", path: "/v1/heartbeat", headers: headers, body: body, publicKey: Ed25519PrivateKey().publicKey, now: 1_000_000)
        }
        var tampered = headers
        tampered[RequestSigning.timestampHeader] = "1000001"
        #expect(throws: RequestSigning.Rejection.self) {
            try RequestSigning.verify(method: "POST", path: "/v1/heartbeat", headers: tampered, body: body, publicKey: key.publicKey, now: 1_000_000)
        }
    }

    @Test func clockSkewIsRefusedWithAClearMessage() throws {
        let headers = try signed(now: 1_000_000)
        do {
            _ = try RequestSigning.verify(method: "POST", path: "/v1/heartbeat", headers: headers, body: body, publicKey: key.publicKey, now: 1_000_000 + 301)
            Issue.record("skewed request accepted")
        } catch let rejection as RequestSigning.Rejection {
            #expect(rejection.status == 401)
            #expect(rejection.message.contains("clock"))
        }
    }

    @Test func agentIDComesFromTheKeyNotTheHost() throws {
        let other = Ed25519PrivateKey()
        #expect(RequestSigning.agentID(for: key.publicKey) != RequestSigning.agentID(for: other.publicKey))
        #expect(RequestSigning.agentID(for: key.publicKey) == RequestSigning.agentID(for: try Ed25519PublicKey(rawRepresentation: key.publicKey.rawRepresentation)))
    }

    @Test func factsRoundTripThroughTheFlatWireForm() {
        let facts = AgentFacts(hostname: "h", osID: "debian", kernelRelease: "6.1", primaryIP: "10.0.0.1", problems: ["kernelVersion": "missing"])
        let again = AgentFacts(fields: facts.fields, problems: facts.problems)
        #expect(again == facts)
        #expect(facts.fields.keys.contains("kernelRelease") && facts.fields.keys.contains("kernelVersion"))
    }
}

struct SessionSigningTests {
    let session = SessionCredentials(token: "s1.fk-abc.2000000000.xyz", key: SecureRandom.bytes(32), expiresAt: 2_000_000_000)
    let body = Array(#"{"facts":{}}"#.utf8)

    @Test func sessionSignedRequestVerifiesWithTheSameCanonicalString() throws {
        let headers = RequestSigning.sign(method: "POST", path: "/v1/heartbeat", body: body, session: session, now: 1_000_000)
        #expect(headers[RequestSigning.sessionHeader] == session.token)
        let result = try RequestSigning.verify(method: "POST", path: "/v1/heartbeat", headers: headers, body: body, sessionKey: session.key, now: 1_000_100)
        #expect(result.nonce == headers[RequestSigning.nonceHeader])
        // The signature is HMAC-SHA256 over exactly the documented canonical string.
        let canonical = "FLEETKEEP-V1\nPOST\n/v1/heartbeat\n1000000\n\(headers[RequestSigning.nonceHeader]!)\n\(SHA256.hex(body))"
        #expect(headers[RequestSigning.signatureHeader] == Base64URL.encode(HMACSHA256.authenticate(Array(canonical.utf8), key: session.key)))
    }

    @Test func wrongKeyChangedBodyAndSkewAreRefused() throws {
        let headers = RequestSigning.sign(method: "POST", path: "/v1/heartbeat", body: body, session: session, now: 1_000_000)
        #expect(throws: RequestSigning.Rejection.self) {
            try RequestSigning.verify(method: "POST", path: "/v1/heartbeat", headers: headers, body: body, sessionKey: SecureRandom.bytes(32), now: 1_000_000)
        }
        #expect(throws: RequestSigning.Rejection.self) {
            try RequestSigning.verify(method: "POST", path: "/v1/heartbeat", headers: headers, body: body + [10], sessionKey: session.key, now: 1_000_000)
        }
        #expect(throws: RequestSigning.Rejection.self) {
            try RequestSigning.verify(method: "POST", path: "/v1/session", headers: headers, body: body, sessionKey: session.key, now: 1_000_000)
        }
        do {
            _ = try RequestSigning.verify(method: "POST", path: "/v1/heartbeat", headers: headers, body: body, sessionKey: session.key, now: 999_000)
            Issue.record("skewed request accepted")
        } catch let rejection as RequestSigning.Rejection {
            #expect(rejection.status == 401)
            #expect(rejection.message.contains("clock"))
        }
    }

    @Test func enrollRequestCarriesTheControllerPin() throws {
        let request = EnrollRequest(tokenID: "i", tokenSecret: "s", controllerPin: "PIN", publicKey: "k", facts: [:], problems: [:])
        let json = try #require(try JSONSerialization.jsonObject(with: JSONEncoder().encode(request)) as? [String: Any])
        #expect(json["controllerPin"] as? String == "PIN")
    }
}

struct OutsideNumberTests {
    /// A timestamp header is any Int64 an attacker likes; the distance to the clock must never trap.
    @Test func extremeTimestampsAreRefusedWithoutTrapping() throws {
        let key = Ed25519PrivateKey()
        for timestamp in [Int64.min, Int64.min + 1, Int64.max, Int64.max - 1, -1, 0] {
            let headers = try RequestSigning.sign(method: "POST", path: "/v1/x", body: [], key: key, identity: ("x-fleetkeep-agent", "a"), now: timestamp)
            #expect(throws: RequestSigning.Rejection.self) {
                _ = try RequestSigning.verify(method: "POST", path: "/v1/x", headers: headers, body: [], publicKey: key.publicKey, now: 1_800_000_000)
            }
        }
        #expect(RequestSigning.clockDistance(.min, now: 1_800_000_000) == nil)
        #expect(RequestSigning.clockDistance(.max, now: -1) == nil)
        #expect(RequestSigning.clockDistance(1_799_999_700, now: 1_800_000_000) == 300)
        #expect(RequestSigning.clockDistance(1_800_000_300, now: 1_800_000_000) == 300)
    }

    @Test func durationsAreWholeSecondsWithinABound() throws {
        #expect(try Arguments.parseDuration("30s", option: "x") == 30)
        #expect(try Arguments.parseDuration("1.5m", option: "x") == 90)
        #expect(try Arguments.parseDuration("0.1s", option: "x") == 1)
        #expect(try Arguments.parseDuration("7d", option: "x") == 604_800)
        for hostile in ["99999999999999999h", "9223372036854775807s", "9223372036854775807", "1e308w", "1e19", "inf", "nan", "-5s", "0",
                        "", "h", "11y", "3700d"] {
            #expect(throws: UsageError.self, "\(hostile)") { _ = try Arguments.parseDuration(hostile, option: "expires") }
        }
        #expect(try Arguments.parseDuration("3650d", option: "x") == 3650 * 86_400)
        #expect(throws: UsageError.self) { _ = try Arguments.parseDuration("2h", option: "x", maximum: 3600) }
    }
}

/// Strict decoding refuses fields a request type does not declare; the declared list must be exactly what the type
/// encodes with every optional set, or a real field would be refused (or an unknown one accepted).
struct StrictRequestFieldTests {
    func encodedKeys<T: Encodable>(_ value: T) throws -> Set<String> {
        let object = try JSONSerialization.jsonObject(with: JSONEncoder().encode(value)) as? [String: Any]
        return Set(object?.keys.map { $0 } ?? [])
    }

    @Test func declaredFieldsAreExactlyTheEncodedOnes() throws {
        let machine = MachineIdentity(machineIDHash: "a", rootFilesystemHash: "b")
        #expect(HeartbeatRequest.fieldNames == (try encodedKeys(HeartbeatRequest(facts: [:], problems: [:], machine: machine))))
        #expect(EnrollRequest.fieldNames == (try encodedKeys(EnrollRequest(tokenID: "", tokenSecret: "", controllerPin: "", publicKey: "", facts: [:], problems: [:]))))
        #expect(EscrowDeposit.fieldNames == (try encodedKeys(EscrowDeposit(sealedKey: "", recoveryPublicKey: ""))))
        #expect(ActivationRequest.fieldNames == (try encodedKeys(ActivationRequest(key: "", machine: machine, address: "192.0.2.1"))))
        #expect(TelemetryUpload.fieldNames == (try encodedKeys(TelemetryUpload(from: 0, to: 0, counters: [:]))))
        #expect(ValidationRequest.fieldNames == (try encodedKeys(ValidationRequest(key: "", nonce: "n"))))
        #expect(EmptyRequest.fieldNames.isEmpty)
    }

    @Test func anUndeclaredFieldIsRefusedAndADeclaredOptionalIsAccepted() throws {
        let withMachine = Data(#"{"facts":{},"problems":{},"machine":{"machineIDHash":"a","rootFilesystemHash":"b"}}"#.utf8)
        #expect(try JSONDecoder().decode(Strict<HeartbeatRequest>.self, from: withMachine).value.machine?.machineIDHash == "a")
        let extra = Data(#"{"facts":{},"problems":{},"mac":"00:11"}"#.utf8)
        #expect(throws: DecodingError.self) { _ = try JSONDecoder().decode(Strict<HeartbeatRequest>.self, from: extra) }
    }
}
