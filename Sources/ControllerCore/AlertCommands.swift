import CommandLineSupport
import Crypto
import FleetkeepProtocol
import Foundation
import HTTPClient

/// `fleetkeep-controller alerts ...`: what is firing, the channels, and a test message.
public enum AlertCommands {
    public static let usage = """
      alerts list [--all] [--json]                       firing alerts (--all: also those resolved in the last 7 days)
      alerts test --channel NAME                         send a test message through one channel now
      alerts channel list [--json]                       channels, secrets shown as fingerprints, last delivery
      alerts channel add NAME --webhook URL [--secret-file FILE] [--ca-file FILE]
                                                         a signed JSON POST; without --secret-file a secret is made and shown once
      alerts channel add NAME --smtp smtp://HOST:587 --from ADDR --to ADDR[,ADDR...] [--username USER --password-file FILE]
                         [--tls try|required] [--ca-file FILE]   email; STARTTLS where the server offers it (try) or always
      alerts channel remove NAME
    """

    public static func alerts(_ raw: [String]) throws -> Int32 {
        let arguments = try Arguments(raw, options: ["data", "channel", "webhook", "secret-file", "ca-file", "smtp", "from", "to", "username",
                                                     "password-file", "tls"], flags: ["json", "all"])
        let (store, _) = try ControllerSetup.open(paths: ControllerCommands.paths(arguments))
        let now = FleetkeepClock.now()
        let service = try AlertService.open(store: store, startedAt: now, controllerName: try ControllerSetup.name(store: store))
        switch arguments.positionals.first {
        case "list":
            try arguments.expectPositionals(atMost: 1)
            let list = try service.alerts.alerts(includeResolvedSince: arguments.flag("all") ? now - 7 * 86_400 : nil)
            if arguments.flag("json") { print(try ControllerCommands.jsonText(list)) } else {
                for alert in list {
                    let state = alert.resolvedAt.map { "resolved \(AlertText.time($0))" } ?? "FIRING since \(AlertText.time(alert.since))"
                    print("\(alert.condition.rawValue.padding(toLength: 20, withPad: " ", startingAt: 0)) \(state)  \(alert.subject)")
                }
                print("\(list.filter(\.firing).count) firing" + (arguments.flag("all") ? ", \(list.filter { !$0.firing }.count) resolved in the last 7 days" : ""))
            }
        case "test":
            try arguments.expectPositionals(atMost: 1)
            guard let name = arguments.value("channel") else { throw UsageError("alerts test needs --channel NAME (see `alerts channel list`)") }
            do { try service.sendTest(channel: name, now: now) } catch let error as AlertError {
                throw ControllerError("test message through \(name) failed: \(error.message)")
            }
            print("test message delivered through \(name)")
        case "channel":
            return try channel(arguments, service: service, now: now)
        default:
            throw UsageError("expected `alerts list|test|channel`")
        }
        return 0
    }

    static func channel(_ arguments: Arguments, service: AlertService, now: Int64) throws -> Int32 {
        switch arguments.positionals.dropFirst().first {
        case "list":
            try arguments.expectPositionals(atMost: 2)
            let views = try service.alerts.channels().map { channel in
                ChannelView(channel: channel, lastDelivery: try service.alerts.deliveries(channel: channel.name, limit: 1).first)
            }
            if arguments.flag("json") { print(try ControllerCommands.jsonText(views)) } else {
                for view in views {
                    print("\(view.name)  \(view.kind)  \(view.target)  secret \(view.secret)  \(view.lastDelivery)")
                }
                print("\(views.count) channels")
            }
        case "add":
            let name = try arguments.positional(2, "NAME")
            try arguments.expectPositionals(atMost: 3)
            guard (1...32).contains(name.utf8.count), name.allSatisfy({ $0.isASCII && ($0.isLetter || $0.isNumber || $0 == "-" || $0 == "_") }) else {
                throw UsageError("channel NAME '\(name.prefix(32))' must be 1 to 32 letters, digits, '-' or '_'")
            }
            let caFile = try arguments.value("ca-file").map { try readableFile($0, option: "ca-file") }
            let channel: AlertChannel
            var shownSecret: String?
            switch (arguments.value("webhook"), arguments.value("smtp")) {
            case (let url?, nil):
                if let problem = WebhookSender.validate(url: url) { throw UsageError("--webhook: \(problem)") }
                let secret: String
                if let file = arguments.value("secret-file") {
                    secret = try secretFile(file, option: "secret-file")
                    guard secret.utf8.count >= 16 else { throw UsageError("--secret-file: the secret must be at least 16 bytes") }
                } else {
                    secret = Base64URL.encode(SecureRandom.bytes(32))
                    shownSecret = secret
                }
                channel = AlertChannel(name: name, kind: .webhook, settings: ChannelSettings(url: url, caFile: caFile), secret: secret, createdAt: now)
            case (nil, let url?):
                if let problem = SMTPClient.validate(url: url) { throw UsageError("--smtp: \(problem)") }
                guard let from = arguments.value("from"), SMTPClient.isValidAddress(from) else {
                    throw UsageError("--from needs a mail address (user@example.com)")
                }
                let to = arguments.list("to")
                guard !to.isEmpty, to.count <= 20 else { throw UsageError("--to needs 1 to 20 mail addresses, comma-separated") }
                if let bad = to.first(where: { !SMTPClient.isValidAddress($0) }) { throw UsageError("--to: '\(bad.prefix(64))' is not a mail address") }
                let tls = arguments.value("tls") ?? MailTLS.opportunistic.rawValue
                guard MailTLS(rawValue: tls) != nil else { throw UsageError("--tls must be `try` (STARTTLS where offered) or `required`") }
                let username = arguments.value("username")
                if let username, !(1...256).contains(username.utf8.count) || username.unicodeScalars.contains(where: { $0.properties.generalCategory == .control }) {
                    throw UsageError("--username must be 1 to 256 bytes without control characters")
                }
                let password = try arguments.value("password-file").map { try secretFile($0, option: "password-file") }
                if (username == nil) != (password == nil) { throw UsageError("--username and --password-file go together") }
                channel = AlertChannel(name: name, kind: .email,
                                       settings: ChannelSettings(url: url, from: from, to: to, username: username, tls: tls, caFile: caFile),
                                       secret: password, createdAt: now)
            default:
                throw UsageError("alerts channel add needs exactly one of --webhook URL or --smtp URL")
            }
            guard try service.alerts.addChannel(channel) else { throw ControllerError("a channel named \(name) exists; remove it first") }
            print("alert channel \(name) added (\(channel.kind.rawValue))")
            if let shownSecret {
                print("webhook secret (shown only now; the receiver checks X-Fleetkeep-Signature with it): \(shownSecret)")
            }
        case "remove":
            let name = try arguments.positional(2, "NAME")
            try arguments.expectPositionals(atMost: 3)
            guard try service.alerts.removeChannel(name, now: now) else { throw ControllerError("no alert channel '\(name.prefix(32))'") }
            print("alert channel \(name) removed")
        default:
            throw UsageError("expected `alerts channel add|remove|list`")
        }
        return 0
    }

    /// A secret from a file (first line, surrounding whitespace dropped), so it never shows in `ps` or a shell history.
    static func secretFile(_ path: String, option: String) throws -> String {
        guard let data = FileManager.default.contents(atPath: path), data.count <= 4096 else {
            throw UsageError("--\(option) '\(path)' cannot be read (or is larger than 4 KiB)")
        }
        let text = String(decoding: data, as: UTF8.self).split(whereSeparator: \.isNewline).first.map(String.init)?
            .trimmingCharacters(in: .whitespaces) ?? ""
        guard !text.isEmpty, !text.unicodeScalars.contains(where: { $0.properties.generalCategory == .control }) else {
            throw UsageError("--\(option) '\(path)' holds no usable secret on its first line")
        }
        return text
    }

    static func readableFile(_ path: String, option: String) throws -> String {
        guard path.hasPrefix("/"), FileManager.default.isReadableFile(atPath: path) else {
            throw UsageError("--\(option) '\(path.prefix(256))' must be an absolute path to a readable file")
        }
        return path
    }

    /// A channel as `channel list` shows it: the secret only as a fingerprint.
    struct ChannelView: Encodable {
        let name: String
        let kind: String
        let target: String
        let secret: String
        let lastDelivery: String

        init(channel: AlertChannel, lastDelivery: AlertDelivery?) {
            name = channel.name
            kind = channel.kind.rawValue
            switch channel.kind {
            case .webhook: target = channel.settings.url
            case .email:
                target = "\(channel.settings.url) from \(channel.settings.from ?? "?") to \((channel.settings.to ?? []).joined(separator: ","))"
                    + (channel.settings.username.map { " as \($0)" } ?? "") + " tls \(channel.settings.tls ?? "try")"
            }
            secret = AlertChannels.fingerprint(channel.secret)
            if let delivery = lastDelivery {
                if let at = delivery.deliveredAt { self.lastDelivery = "last delivery ok \(AlertText.time(at))" }
                else if let at = delivery.failedAt { self.lastDelivery = "last delivery given up \(AlertText.time(at)): \(delivery.lastError ?? "")" }
                else { self.lastDelivery = "delivery pending (\(delivery.attempts) attempts\(delivery.lastError.map { ", last error: \($0)" } ?? ""))" }
            } else {
                self.lastDelivery = "no deliveries yet"
            }
        }
    }
}
