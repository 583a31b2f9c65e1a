import ControllerCore
import Crypto
import FleetkeepProtocol
import Foundation
import HTTPServer
import Testing
import TestSupport

/// A licence service over a real SQLite file, with a clock the test moves.
final class LicenceHarness: @unchecked Sendable {
    let directory = TemporaryDirectory(prefix: "fk-licence")
    let store: ControllerStore
    let licences: LicenceService
    let signingKey = Ed25519PrivateKey()
    let clock = ControllerHarness.ClockBox()

    init() throws {
        store = try ControllerStore(path: directory.appending("controller.db"))
        clock.now = 1_800_000_000
        let clock = self.clock
        licences = LicenceService(store: SQLiteLicenceStore(database: store.database), signingKey: signingKey, clock: { clock.now })
    }

    func issue(tier: String = "standard", maxServers: Int = 1) throws -> LicenceKey {
        try licences.issue(customer: Customer(name: "Acme Hosting", email: "ops@acme.example"), tier: tier, maxServers: maxServers, expiresAt: nil).1
    }

    static func machine(_ name: String) -> MachineIdentity {
        MachineIdentity(machineID: name, rootFilesystemUUID: "uuid-" + name, controllerPin: "pin")
    }

    func activate(_ key: LicenceKey, agent: String, machine: String = "m1") throws -> LicenceLease {
        let answer = try licences.activate(agentID: agent, request: ActivationRequest(key: key.text, machine: Self.machine(machine)))
        return try answer.lease.open(verifyingWith: signingKey.publicKey)
    }
}

/// The validation API for outside callers, and what a caller without the key can do to it.
struct LicenceValidationLimitTests {
    /// The licence id is the public part of a key, and keys with that id and any secret are easy to build. Forged
    /// keys sent from several addresses, each within its address's limit, must not use up the genuine key's limit:
    /// it used to be charged per licence id before the secret was looked at, and the customer then got 429.
    @Test func forgedKeysForALicenceDoNotLockItsGenuineKeyOut() throws {
        let harness = try LicenceHarness()
        let genuine = try harness.issue()
        func validate(_ key: String, from address: String) throws -> ValidationResponse {
            try harness.licences.validate(body: Array(try JSONEncoder().encode(["key": key])), remoteAddress: address)
        }
        var limited = 0
        for round in 0..<40 {
            let forged = LicenceKey.generate(licenceID: genuine.licenceID)
            do { _ = try validate(forged.text, from: "198.51.100.\(round % 8)") } catch LicenceError.rateLimited { limited += 1 }
        }
        #expect(limited < 40, "the forged keys were themselves refused by their addresses' limits")
        let answer = try validate(genuine.text, from: "203.0.113.5")
        let opened = try answer.verified(with: harness.signingKey.publicKey)
        #expect(opened.status == "valid")
    }
}

struct LicenceKeyTests {
    @Test func keysRoundTripAndTyposAreCaughtOffline() throws {
        let key = LicenceKey.generate(licenceID: LicenceKey.randomID())
        #expect(key.text.count == 3 + 30 + 5)
        #expect(try LicenceKey(text: key.text) == key)
        // Case, spaces, missing dashes and the look-alikes O/I/L are forgiven.
        let sloppy = " " + key.text.lowercased().replacingOccurrences(of: "-", with: " ").replacingOccurrences(of: "0", with: "o") + "\n"
        #expect(try LicenceKey(text: sloppy) == key)
        // Every single-character substitution is caught by the check characters (25 bits).
        var body = Array(key.text.dropFirst(3).filter { $0 != "-" })
        var caught = 0
        for index in body.indices {
            let original = body[index]
            body[index] = original == "Z" ? "Y" : "Z"
            if (try? LicenceKey(text: String(body))) == nil { caught += 1 }
            body[index] = original
        }
        #expect(caught == body.count)
        // Swapped neighbours too (when they differ).
        let swapIndex = (0..<29).first { body[$0] != body[$0 + 1] } ?? 0
        body.swapAt(swapIndex, swapIndex + 1)
        #expect(throws: ProtocolError.self) { try LicenceKey(text: String(body)) }
        #expect(throws: ProtocolError.self) { try LicenceKey(text: "FK-123") }
        #expect(throws: ProtocolError.self) { try LicenceKey(text: String(repeating: "A", count: 101)) }
        #expect(throws: ProtocolError.self) { try LicenceKey(text: "FK-UUUUU-UUUUU-UUUUU-UUUUU-UUUUU-UUUUU") }
    }
}

struct LicenceModelTests {
    @Test func issueListShowAndStateChangesAreHistory() throws {
        let harness = try LicenceHarness()
        let key = try harness.issue(maxServers: 2)
        let detail = try harness.licences.detail(try harness.licences.find(key.text))
        #expect(detail.customer == Customer(name: "Acme Hosting", email: "ops@acme.example"))
        #expect(detail.features.contains("offsite"))
        #expect(detail.status == "valid")
        // A key with the right id but another secret opens nothing.
        let wrong = LicenceKey.generate(licenceID: key.licenceID)
        #expect(throws: LicenceError.keyNotValid) { try harness.licences.find(wrong.text) }

        _ = try harness.licences.change(key.licenceID, to: .suspended)
        #expect(throws: LicenceError.self) { try harness.licences.change(key.licenceID, to: .suspended) }
        _ = try harness.licences.change(key.licenceID, to: .active)
        _ = try harness.licences.change(key.licenceID, to: .revoked)
        #expect(throws: LicenceError.self) { try harness.licences.change(key.licenceID, to: .active) }
        let history = try harness.licences.detail(try harness.licences.find(key.licenceID)).history.map(\.kind)
        #expect(history == ["issued", "suspended", "resumed", "revoked"])
        #expect(try harness.licences.list().first?.status == "revoked")
    }

    @Test func badInputChangesNothing() throws {
        let harness = try LicenceHarness()
        #expect(throws: LicenceError.unknownTier("gold", known: ["basic", "standard", "unlimited"])) {
            try harness.licences.issue(customer: Customer(name: "A", email: "a@b.example"), tier: "gold", maxServers: 1, expiresAt: nil)
        }
        #expect(throws: LicenceError.self) { try harness.licences.issue(customer: Customer(name: "A", email: "not-an-email"), tier: "basic", maxServers: 1, expiresAt: nil) }
        #expect(throws: LicenceError.self) { try harness.licences.issue(customer: Customer(name: "A", email: "a@b.example"), tier: "basic", maxServers: 0, expiresAt: nil) }
        #expect(throws: LicenceError.self) { try harness.licences.issue(customer: Customer(name: "A\u{7}", email: "a@b.example"), tier: "basic", maxServers: 1, expiresAt: nil) }
        #expect(try harness.licences.list().isEmpty)
        #expect(try harness.store.database.query("SELECT count(*) AS n FROM customers").first?.int("n") == 0)
        // Tiers are data: a new one can be added and used.
        try harness.licences.saveTier(name: "gold", features: ["offsite", "max-accounts:500"], description: "big")
        #expect(throws: LicenceError.self) { try harness.licences.saveTier(name: "bad", features: ["max-accounts:lots"], description: "") }
        _ = try harness.issue(tier: "gold")
        #expect(try harness.licences.list().first?.tier == "gold")
    }

    @Test func seatsMovesAndTheMoveLimit() throws {
        let harness = try LicenceHarness()
        let key = try harness.issue(maxServers: 1)
        let first = try harness.activate(key, agent: "fk-a", machine: "m-a")
        #expect(first.state == "active" && first.agentID == "fk-a" && first.features.contains("offsite"))
        #expect(first.expiresAt == harness.clock.now + 30 * 86400 && first.graceSeconds == 7 * 86400)
        // Seat limit.
        #expect(throws: LicenceError.self) { try harness.activate(key, agent: "fk-b", machine: "m-b") }
        // Activating again on the same machine just renews, with a higher serial.
        #expect(try harness.activate(key, agent: "fk-a", machine: "m-a").serial > first.serial)
        // Three moves in 30 days are fine, the fourth is refused with the time of the next possible move.
        var previous = "fk-a"
        for index in 1...3 {
            harness.clock.now += 86400
            try harness.licences.deactivateServer(key.licenceID, agentID: previous)
            previous = "fk-move\(index)"
            _ = try harness.activate(key, agent: previous, machine: "m\(index)")
        }
        try harness.licences.deactivateServer(key.licenceID, agentID: previous)
        do {
            _ = try harness.activate(key, agent: "fk-fourth", machine: "m4")
            Issue.record("fourth move in 30 days was allowed")
        } catch let error as LicenceError {
            guard case .moveLimit(_, let limit, let days, let next) = error else { Issue.record("\(error)"); return }
            #expect(limit == 3 && days == 30)
            #expect(next == 1_800_000_000 + 86400 + 30 * 86400)
            #expect(error.description.contains("limit 3 per 30 days") && error.httpStatus == 409)
        }
        // Configurable: with a limit of 4 the same move goes through.
        var policy = try harness.licences.policy()
        policy.moveLimit = 4
        try harness.licences.setPolicy(policy)
        _ = try harness.activate(key, agent: "fk-fourth", machine: "m4")
        let kinds = try harness.licences.detail(try harness.licences.find(key.licenceID)).history.map(\.kind)
        #expect(kinds.filter { $0 == "moved" }.count == 4 && kinds.filter { $0 == "activated" }.count == 1)
    }

    @Test func heartbeatsRenewLeasesAndCarryRevocation() throws {
        let harness = try LicenceHarness()
        let key = try harness.issue()
        let first = try harness.activate(key, agent: "fk-a", machine: "m-a")
        let machine = LicenceHarness.machine("m-a")
        let (status, lease) = try harness.licences.renewal(agentID: "fk-a", machine: machine, now: harness.clock.now)
        #expect(status.status == "valid")
        let renewed = try #require(try lease?.open(verifyingWith: harness.signingKey.publicKey))
        #expect(renewed.serial > first.serial)
        // Cached until the renewal time: the same lease, no new serial.
        let (_, again) = try harness.licences.renewal(agentID: "fk-a", machine: machine, now: harness.clock.now + 10)
        #expect(again == lease)
        _ = try harness.licences.change(key.licenceID, to: .revoked)
        try harness.licences.refreshChanges()
        let (revoked, revokedLease) = try harness.licences.renewal(agentID: "fk-a", machine: machine, now: harness.clock.now + 20)
        #expect(revoked.status == "revoked")
        #expect(try revokedLease?.open(verifyingWith: harness.signingKey.publicKey).state == "revoked")
        // Another machine with the same agent key: flagged, no lease.
        let (clone, cloneLease) = try harness.licences.renewal(agentID: "fk-a", machine: LicenceHarness.machine("m-copy"), now: harness.clock.now + 30)
        #expect(clone.status == "invalid" && cloneLease == nil)
        #expect(try harness.licences.store.clonedAgents() == ["fk-a"])
    }
}

struct TokenBucketTests {
    @Test func burstThenRefillAndBoundedMemory() {
        let limiter = TokenBucketLimiter(rate: 2, burst: 3, maxKeys: 10)
        #expect((0..<3).allSatisfy { _ in limiter.take("a", now: 100) == nil })
        #expect(limiter.take("a", now: 100) == 1)
        #expect(limiter.take("b", now: 100) == nil)
        #expect(limiter.take("a", now: 100.6) == nil)
        for index in 0..<50 { _ = limiter.take("k\(index)", now: 200) }
        #expect(limiter.trackedKeys <= 10)
        // Keys whose buckets filled up again are forgotten, so new keys get through later.
        #expect(limiter.take("late", now: 300) == nil)
    }
}
