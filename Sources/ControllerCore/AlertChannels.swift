import Crypto
import FleetkeepProtocol
import Foundation
import HTTPClient

/// Sends one notification (the events of one evaluation) to one channel; throws when it was not accepted.
public protocol AlertSender: Sendable {
    func send(_ events: [AlertEvent], deliveryID: Int64, now: Int64) throws
}

/// Channel refusals and delivery failures, with what to do.
public struct AlertError: Error, CustomStringConvertible, Sendable, Equatable {
    public let message: String
    public init(_ message: String) { self.message = message }
    public var description: String { message }
}

/// The JSON body of a webhook delivery (see docs/PROTOCOL.md, "Alert webhooks").
public struct WebhookPayload: Codable, Sendable, Equatable {
    public var version = 1
    /// The delivery id: the same on every retry of this notification, so a receiver can drop repeats.
    public let delivery: Int64
    public let sentAt: Int64
    /// Which controller sent it (its URL, else its host name).
    public let controller: String
    public let events: [AlertEvent]
}

/// Webhooks: a JSON POST signed with HMAC-SHA256 under the channel's shared secret.
///
/// `X-Fleetkeep-Signature: v1=<hex HMAC-SHA256(secret, "<X-Fleetkeep-Timestamp>.<body>")>`: the timestamp is signed
/// with the body, so a captured delivery cannot be replayed later under a fresh timestamp.
public struct WebhookSender: AlertSender {
    public static let timestampHeader = "X-Fleetkeep-Timestamp"
    public static let signatureHeader = "X-Fleetkeep-Signature"
    public static let deliveryHeader = "X-Fleetkeep-Delivery"
    public static let eventHeader = "X-Fleetkeep-Event"

    let url: String
    let secret: String
    let controller: String
    let caFile: String?
    /// Attempts inside one delivery (with backoff); the delivery queue retries further with longer waits.
    let retry: RetryPolicy

    public init(url: String, secret: String, controller: String, caFile: String? = nil,
                retry: RetryPolicy = RetryPolicy(maxAttempts: 3, baseDelay: 0.5, maxDelay: 5)) {
        self.url = url
        self.secret = secret
        self.controller = controller
        self.caFile = caFile
        self.retry = retry
    }

    public static func signature(secret: String, timestamp: Int64, body: [UInt8]) -> String {
        "v1=" + Hex.encode(HMACSHA256.authenticate(Array("\(timestamp).".utf8) + body, key: Array(secret.utf8)))
    }

    /// Checks a URL an operator gives: http or https, a host, no user name or password in it.
    public static func validate(url: String) -> String? {
        guard url.utf8.count <= 2048, let components = URLComponents(string: url), let scheme = components.scheme?.lowercased(),
              ["http", "https"].contains(scheme) else {
            return "the webhook must be an http:// or https:// URL of at most 2048 bytes"
        }
        guard let host = components.host, !host.isEmpty else { return "the webhook URL has no host" }
        guard components.user == nil, components.password == nil else { return "put no user name or password in the webhook URL" }
        return nil
    }

    public func send(_ events: [AlertEvent], deliveryID: Int64, now: Int64) throws {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        let body = [UInt8](try encoder.encode(WebhookPayload(delivery: deliveryID, sentAt: now, controller: controller, events: events)))
        var configuration = HTTPClientConfiguration(baseURL: url, timeoutSeconds: 10, connectTimeoutSeconds: 5, retry: retry)
        configuration.caFile = caFile
        configuration.maximumResponseBytes = 64 * 1024
        let kinds = Set(events.map(\.event.rawValue)).sorted().joined(separator: ",")
        do {
            let client = try HTTPClient(configuration: configuration)
            let response = try client.send(method: "POST", path: "", body: body, headers: [
                "Content-Type": "application/json",
                "User-Agent": "fleetkeep-controller/\(FleetkeepVersion.controller)",
                Self.deliveryHeader: String(deliveryID),
                Self.eventHeader: kinds,
                Self.timestampHeader: String(now),
                Self.signatureHeader: Self.signature(secret: secret, timestamp: now, body: body),
            ])
            guard response.isSuccess else {
                let excerpt = AlertText.printable(String(decoding: response.body.prefix(200), as: UTF8.self), limit: 200)
                throw AlertError("webhook answered HTTP \(response.status)\(excerpt.isEmpty ? "" : ": \(excerpt)")")
            }
        } catch let error as HTTPClientError {
            throw AlertError("webhook failed: \(error.message)")
        }
    }
}

/// Email through an SMTP server, sent by libcurl (`SMTPClient`).
public struct EmailSender: AlertSender {
    let server: MailServer
    let from: String
    let to: [String]
    let controller: String

    public init(server: MailServer, from: String, to: [String], controller: String) {
        self.server = server
        self.from = from
        self.to = to
        self.controller = controller
    }

    public func send(_ events: [AlertEvent], deliveryID: Int64, now: Int64) throws {
        let host = AlertText.printable(ProcessInfo.processInfo.hostName, limit: 64).filter { $0.isLetter || $0.isNumber || $0 == "." || $0 == "-" }
        let message = MailMessage.text(from: from, to: to, subject: Self.subject(events), body: Self.body(events, controller: controller),
                                       date: Date(timeIntervalSince1970: TimeInterval(now)),
                                       messageID: "fleetkeep-\(deliveryID)-\(Hex.encode(SecureRandom.bytes(8)))@\(host.isEmpty ? "fleetkeep" : host)",
                                       extraHeaders: [("X-Fleetkeep-Delivery", String(deliveryID))])
        do { try SMTPClient.send(message, via: server) } catch let error as MailError { throw AlertError(error.message) }
    }

    static func label(_ kind: AlertEvent.Kind) -> String {
        switch kind {
        case .firing: "FIRING"
        case .resolved: "RESOLVED"
        case .test: "TEST"
        }
    }

    static func subject(_ events: [AlertEvent]) -> String {
        guard let first = events.first else { return "[fleetkeep] no alerts" }
        if events.count == 1 { return "[fleetkeep] \(label(first.event)): \(first.subject)" }
        let firing = events.filter { $0.event == .firing }.count, resolved = events.filter { $0.event == .resolved }.count
        let counts = [firing > 0 ? "\(firing) firing" : nil, resolved > 0 ? "\(resolved) resolved" : nil].compactMap { $0 }.joined(separator: ", ")
        return "[fleetkeep] \(counts.isEmpty ? "\(events.count) events" : counts): \(first.subject)"
    }

    static func body(_ events: [AlertEvent], controller: String) -> String {
        var lines: [String] = []
        for event in events {
            lines.append("\(label(event.event))  \(event.subject)")
            lines.append("    \(event.detail)")
            let since = AlertText.time(event.since)
            switch event.event {
            case .resolved: lines.append("    held from \(since) until \(event.resolvedAt.map(AlertText.time) ?? "now")")
            case .firing: lines.append("    holding since \(since)")
            case .test: break
            }
            lines.append("    agent \(event.agentID), alert \(event.condition) (\(event.key))")
            lines.append("")
        }
        lines.append("-- ")
        lines.append("fleetkeep-controller at \(controller). `fleetkeep-controller alerts list` shows every alert that is firing.")
        return lines.joined(separator: "\n")
    }
}

/// Builds the sender of a stored channel.
public enum AlertChannels {
    public static func sender(for channel: AlertChannel, controller: String) throws -> any AlertSender {
        switch channel.kind {
        case .webhook:
            guard let secret = channel.secret, !secret.isEmpty else {
                throw AlertError("webhook channel \(channel.name) has no secret; remove it and add it again")
            }
            return WebhookSender(url: channel.settings.url, secret: secret, controller: controller, caFile: channel.settings.caFile)
        case .email:
            guard let from = channel.settings.from, let to = channel.settings.to, !to.isEmpty else {
                throw AlertError("email channel \(channel.name) has no sender or recipients; remove it and add it again")
            }
            let server = MailServer(url: channel.settings.url, username: channel.settings.username, password: channel.secret,
                                    tls: channel.settings.tls.flatMap(MailTLS.init) ?? .opportunistic, caFile: channel.settings.caFile)
            return EmailSender(server: server, from: from, to: to, controller: controller)
        }
    }

    /// What `channel list` shows of a secret: its length and the start of its SHA-256, never the secret.
    public static func fingerprint(_ secret: String?) -> String {
        guard let secret, !secret.isEmpty else { return "none" }
        return "sha256:\(SHA256.hex(Array(secret.utf8)).prefix(12)) (\(secret.utf8.count) bytes)"
    }
}

/// Text for humans built from data agents sent: no control characters (no terminal escapes, no header tricks),
/// bounded length.
enum AlertText {
    static func printable(_ text: String, limit: Int) -> String {
        var out = String.UnicodeScalarView()
        var bytes = 0
        for scalar in text.unicodeScalars {
            let kept: Unicode.Scalar = scalar.properties.generalCategory == .control ? " " : scalar
            bytes += UTF8.width(kept)
            if bytes > limit { return String(out) + "…" }
            out.append(kept)
        }
        return String(out)
    }

    static func time(_ at: Int64) -> String {
        ISO8601DateFormatter().string(from: Date(timeIntervalSince1970: TimeInterval(at)))
    }

    /// "40 s", "12 min", "27 h", "3 d 4 h".
    static func age(_ seconds: Int64) -> String {
        let seconds = max(0, seconds)
        if seconds < 120 { return "\(seconds) s" }
        if seconds < 3600 { return "\(seconds / 60) min" }
        if seconds < 2 * 86_400 { return "\(seconds / 3600) h" }
        return "\(seconds / 86_400) d \((seconds % 86_400) / 3600) h"
    }
}
