import CCurl
import Foundation

/// How to use TLS with an SMTP server. `smtps://` URLs always use TLS from the first byte.
public enum MailTLS: String, Sendable, Codable, CaseIterable {
    /// STARTTLS when the server offers it, else plain text. A server that offers it but fails certificate
    /// verification is an error, never a silent fallback.
    case opportunistic = "try"
    /// STARTTLS (or `smtps://`) or no mail at all.
    case required
}

/// An SMTP server to send through.
public struct MailServer: Sendable {
    /// `smtp://host[:port]` (STARTTLS per `tls`) or `smtps://host[:port]` (TLS from the start).
    public var url: String
    public var username: String?
    public var password: String?
    public var tls: MailTLS
    /// PEM CA certificates to verify the server with; nil: the system bundle (`CABundle`).
    public var caFile: String?
    public var timeoutSeconds: Double

    public init(url: String, username: String? = nil, password: String? = nil, tls: MailTLS = .opportunistic, caFile: String? = nil,
                timeoutSeconds: Double = 30) {
        self.url = url
        self.username = username
        self.password = password
        self.tls = tls
        self.caFile = caFile
        self.timeoutSeconds = timeoutSeconds
    }
}

/// A mail ready to send: the envelope and the RFC 5322 message bytes (CRLF line ends).
public struct MailMessage: Sendable {
    public let from: String
    public let recipients: [String]
    public let data: [UInt8]

    /// Builds a plain-text message. Header values lose control characters (no header injection from data that
    /// came from agents); a subject that is not plain ASCII is encoded as RFC 2047 words; body lines end in CRLF and
    /// a body that is not ASCII is sent base64-encoded, so no line is too long and no server needs 8BITMIME.
    public static func text(from: String, to recipients: [String], subject: String, body: String, date: Date = Date(),
                            messageID: String, extraHeaders: [(String, String)] = []) -> MailMessage {
        let formatter = DateFormatter()
        formatter.locale = Locale(identifier: "en_US_POSIX")
        formatter.timeZone = TimeZone(identifier: "UTC")
        formatter.dateFormat = "EEE, dd MMM yyyy HH:mm:ss Z"
        var headers: [(String, String)] = [
            ("From", withoutControls(from)), ("To", withoutControls(recipients.joined(separator: ", "))), ("Subject", encodedHeader(subject)),
            ("Date", formatter.string(from: date)), ("Message-ID", "<\(withoutControls(messageID))>"), ("MIME-Version", "1.0"),
        ] + extraHeaders.map { (withoutControls($0.0), encodedHeader($0.1)) }
        let lines = body.replacingOccurrences(of: "\r\n", with: "\n").split(separator: "\n", omittingEmptySubsequences: false)
            .map { line in String(line.unicodeScalars.filter { $0 == "\t" || $0.properties.generalCategory != .control }.map(Character.init)) }
        let bodyText: String
        if lines.allSatisfy({ $0.utf8.allSatisfy { $0 < 0x80 } && $0.utf8.count <= 998 }) {
            headers += [("Content-Type", "text/plain; charset=us-ascii"), ("Content-Transfer-Encoding", "7bit")]
            bodyText = lines.joined(separator: "\r\n")
        } else {
            headers += [("Content-Type", "text/plain; charset=utf-8"), ("Content-Transfer-Encoding", "base64")]
            bodyText = Data(lines.joined(separator: "\r\n").utf8).base64EncodedString(options: [.lineLength76Characters, .endLineWithCarriageReturn, .endLineWithLineFeed])
        }
        let head = headers.map { "\($0.0): \($0.1)" }.joined(separator: "\r\n")
        return MailMessage(from: from, recipients: recipients, data: Array((head + "\r\n\r\n" + bodyText + "\r\n").utf8))
    }

    /// `value` without CR, LF or any other control character: data that came from agents cannot add headers.
    static func withoutControls(_ value: String) -> String {
        String(value.unicodeScalars.filter { $0.properties.generalCategory != .control }.map(Character.init))
    }

    /// Plain ASCII as it is (control characters go later); anything else as RFC 2047 base64 words of at most 45
    /// bytes of UTF-8 each (75 characters encoded), split at character boundaries and folded.
    static func encodedHeader(_ value: String) -> String {
        let visible = withoutControls(value)
        if visible.utf8.allSatisfy({ $0 >= 0x20 && $0 < 0x7F }) && visible.utf8.count <= 900 { return visible }
        var words: [String] = [], chunk = ""
        for character in visible.prefix(400) {
            if chunk.utf8.count + String(character).utf8.count > 45 {
                words.append(chunk)
                chunk = ""
            }
            chunk.append(character)
        }
        if !chunk.isEmpty { words.append(chunk) }
        return words.map { "=?UTF-8?B?\(Data($0.utf8).base64EncodedString())?=" }.joined(separator: "\r\n ")
    }
}

/// A mail that was not accepted: what libcurl or the server said.
public struct MailError: Error, Sendable, CustomStringConvertible {
    public let message: String
    /// The SMTP reply code of the last command, when there was one.
    public let replyCode: Int?
    public init(_ message: String, replyCode: Int? = nil) {
        self.message = message
        self.replyCode = replyCode
    }
    public var description: String { message }
}

/// Sends mail through libcurl's SMTP client (no SMTP code of our own): STARTTLS as `MailServer.tls` asks,
/// certificates verified against the CA bundle, AUTH when a user name is given.
public enum SMTPClient {
    /// An address we put in an envelope and a header: `local@domain`, printable ASCII, no spaces, brackets, commas
    /// or quotes, at most 254 bytes.
    public static func isValidAddress(_ address: String) -> Bool {
        guard (3...254).contains(address.utf8.count), address.utf8.allSatisfy({ $0 > 0x20 && $0 < 0x7F }),
              !address.contains(where: { "<>,;:\"()[]\\".contains($0) }) else { return false }
        let parts = address.split(separator: "@", omittingEmptySubsequences: false)
        return parts.count == 2 && !parts[0].isEmpty && parts[1].contains(".") && !parts[1].hasPrefix(".") && !parts[1].hasSuffix(".")
    }

    /// Checks a server URL: `smtp://` or `smtps://`, a host, no user name or password in it (they go separately).
    public static func validate(url: String) -> String? {
        guard let components = URLComponents(string: url), let scheme = components.scheme?.lowercased(), ["smtp", "smtps"].contains(scheme) else {
            return "the SMTP server must be an smtp:// or smtps:// URL, e.g. smtp://mail.example.com:587"
        }
        guard let host = components.host, !host.isEmpty else { return "the SMTP URL has no host" }
        guard components.user == nil, components.password == nil else {
            return "put no user name or password in the SMTP URL; use --username and --password-file"
        }
        return nil
    }

    public static func send(_ message: MailMessage, via server: MailServer) throws {
        if let problem = validate(url: server.url) { throw MailError(problem) }
        for address in [message.from] + message.recipients where !isValidAddress(address) {
            throw MailError("'\(address.prefix(64))' is not a mail address this sender accepts")
        }
        guard !message.recipients.isEmpty else { throw MailError("a mail needs at least one recipient") }
        let easy: CurlEasy
        do { easy = try CurlEasy() } catch { throw MailError("\(error)") }
        let source = MessageSource(message.data)
        var recipients: UnsafeMutablePointer<curl_slist>? = nil
        defer { easy.curl.slistFreeAll(recipients) }
        for address in message.recipients { recipients = easy.curl.slistAppend(recipients, "<\(address)>") }
        do {
            try easy.resetForRequest()
            try easy.set(CURLOPT_URL, server.url)
            try easy.set(CURLOPT_PROTOCOLS_STR, "smtp,smtps")
            try easy.set(CURLOPT_TIMEOUT_MS, Int(min(max(server.timeoutSeconds, 1), 600) * 1000))
            try easy.set(CURLOPT_CONNECTTIMEOUT_MS, 10_000)
            try easy.set(CURLOPT_USE_SSL, Int(server.tls == .required ? CURLUSESSL_ALL.rawValue : CURLUSESSL_TRY.rawValue))
            if let ca = server.caFile ?? CABundle.systemPath() { try easy.set(CURLOPT_CAINFO, ca) }
            try easy.set(CURLOPT_SSL_VERIFYPEER, 1)
            try easy.set(CURLOPT_SSL_VERIFYHOST, 2)
            if let username = server.username {
                try easy.set(CURLOPT_USERNAME, username)
                try easy.set(CURLOPT_PASSWORD, server.password ?? "")
            }
            try easy.set(CURLOPT_MAIL_FROM, "<\(message.from)>")
            try easy.set(CURLOPT_MAIL_RCPT, pointer: recipients)
            try easy.set(CURLOPT_UPLOAD, 1)
            try easy.set(CURLOPT_INFILESIZE_LARGE, offset: Int64(message.data.count))
            try easy.setReadCallback(source)
        } catch let error as HTTPClientError {
            throw MailError(error.message)
        }
        let code = withExtendedLifetime(source) { easy.perform() }
        guard code == CURLE_OK else {
            let reply = easy.responseCode
            throw MailError("sending mail through \(server.url) failed: \(easy.errorMessage(for: code))\(reply > 0 ? " (last reply \(reply))" : "")",
                            replyCode: reply > 0 ? reply : nil)
        }
    }
}

/// The message bytes libcurl reads through `CURLOPT_READFUNCTION`.
final class MessageSource {
    let bytes: [UInt8]
    var offset = 0
    init(_ bytes: [UInt8]) { self.bytes = bytes }

    static let read: curl_read_callback = { buffer, size, count, userdata in
        guard let buffer, let userdata else { return 0 }
        let source = Unmanaged<MessageSource>.fromOpaque(userdata).takeUnretainedValue()
        let capacity = size.multipliedReportingOverflow(by: count)
        let length = min(capacity.overflow ? Int.max : capacity.partialValue, source.bytes.count - source.offset)
        guard length > 0 else { return 0 }
        source.bytes.withUnsafeBytes { raw in
            guard let base = raw.baseAddress else { return }
            UnsafeMutableRawPointer(buffer).copyMemory(from: base + source.offset, byteCount: length)
        }
        source.offset += length
        return length
    }
}

extension CurlEasy {
    /// Uploads come from `source`, which must outlive `perform()`.
    func setReadCallback(_ source: MessageSource) throws {
        let code = fk_curl_setopt_read_callback(curl.easySetopt, handle, CURLOPT_READFUNCTION, MessageSource.read)
        guard code == CURLE_OK else {
            throw HTTPClientError(kind: .transport(Int32(code.rawValue)), url: "", message: "curl_easy_setopt(READFUNCTION) failed")
        }
        try set(CURLOPT_READDATA, pointer: Unmanaged.passUnretained(source).toOpaque())
    }
}
