import Foundation

/// A piece of HTML. String literals written in the source are markup; every value interpolated into one is escaped,
/// unless it is itself `HTML`. So a hostname, a fact or a customer name can never become markup: escaping is the
/// default, and opting out takes a type the data never has.
public struct HTML: Sendable, ExpressibleByStringInterpolation, CustomStringConvertible {
    public private(set) var text: String

    public init(stringLiteral value: String) { text = value }
    public init(stringInterpolation: Interpolation) { text = stringInterpolation.text }
    /// Markup built by this module's own code (an SVG drawing, joined pieces).
    init(trusted: String) { text = trusted }

    public var description: String { text }
    public static let empty = HTML(trusted: "")

    public static func + (lhs: HTML, rhs: HTML) -> HTML { HTML(trusted: lhs.text + rhs.text) }

    public struct Interpolation: StringInterpolationProtocol {
        var text = ""
        public init(literalCapacity: Int, interpolationCount: Int) { text.reserveCapacity(literalCapacity + 16 * interpolationCount) }
        public mutating func appendLiteral(_ literal: String) { text += literal }
        public mutating func appendInterpolation(_ html: HTML) { text += html.text }
        public mutating func appendInterpolation(_ pieces: [HTML]) { for piece in pieces { text += piece.text } }
        public mutating func appendInterpolation<S: StringProtocol>(_ value: S) { text += HTML.escape(String(value)) }
        public mutating func appendInterpolation<S: StringProtocol>(_ value: S?) { text += value.map { HTML.escape(String($0)) } ?? "" }
        public mutating func appendInterpolation<I: BinaryInteger>(_ value: I) { text += String(value) }
        /// A link to one of the dashboard's own pages, its query encoded and escaped.
        public mutating func appendInterpolation(href path: String, _ query: [(String, String)] = []) { text += HTML.escape(HTML.url(path, query)) }
    }

    /// Escapes the five characters that matter in text and in double- or single-quoted attributes. Control
    /// characters other than tab and newline, which no stored field should hold, are shown as U+FFFD.
    public static func escape(_ value: String) -> String {
        var out = ""
        out.reserveCapacity(value.utf8.count)
        for scalar in value.unicodeScalars {
            switch scalar {
            case "&": out += "&amp;"
            case "<": out += "&lt;"
            case ">": out += "&gt;"
            case "\"": out += "&quot;"
            case "'": out += "&#39;"
            case "\t", "\n": out.unicodeScalars.append(scalar)
            default:
                if scalar.value < 0x20 || (0x7f...0x9f).contains(scalar.value) { out += "\u{FFFD}" } else { out.unicodeScalars.append(scalar) }
            }
        }
        return out
    }

    /// A local URL with its query percent-encoded (by Foundation), not yet HTML-escaped.
    public static func url(_ path: String, _ query: [(String, String)]) -> String {
        guard !query.isEmpty else { return path }
        var components = URLComponents()
        components.path = path
        components.queryItems = query.map { URLQueryItem(name: $0.0, value: $0.1) }
        // URLComponents leaves '+' as is, but forms and libmicrohttpd read it as a space.
        return (components.string ?? path).replacingOccurrences(of: "+", with: "%2B")
    }

    public static func join(_ pieces: [HTML], separator: HTML = .empty) -> HTML {
        HTML(trusted: pieces.map(\.text).joined(separator: separator.text))
    }
}

/// A form body (`application/x-www-form-urlencoded`), decoded by Foundation and read strictly: every field must
/// be expected, none may repeat, and the whole is bounded.
public struct FormBody: Sendable {
    private let fields: [String: String]

    /// `allowed` lists every field name the form may send.
    public init(_ body: [UInt8], contentType: String?, allowed: Set<String>) throws {
        guard let type = contentType?.split(separator: ";").first?.trimmingCharacters(in: .whitespaces).lowercased(),
              type == "application/x-www-form-urlencoded" else {
            throw DashboardError.invalidInput("send the form as application/x-www-form-urlencoded")
        }
        guard body.count <= 16 * 1024, let text = String(bytes: body, encoding: .utf8) else {
            throw DashboardError.invalidInput("the form is larger than 16 KiB or not UTF-8")
        }
        var collected: [String: String] = [:]
        if !text.isEmpty {
            var components = URLComponents()
            // Forms encode a space as '+'; URLComponents only decodes %20.
            components.percentEncodedQuery = text.replacingOccurrences(of: "+", with: "%20")
            guard let items = components.queryItems else { throw DashboardError.invalidInput("the form body is not URL-encoded") }
            for item in items {
                guard allowed.contains(item.name) else { throw DashboardError.invalidInput("unexpected form field '\(item.name.prefix(40))'") }
                guard collected[item.name] == nil else { throw DashboardError.invalidInput("form field '\(item.name)' is given twice") }
                collected[item.name] = item.value ?? ""
            }
        }
        fields = collected
    }

    public func value(_ name: String) -> String? { fields[name] }

    public func required(_ name: String, label: String? = nil) throws -> String {
        guard let value = fields[name], !value.trimmingCharacters(in: .whitespaces).isEmpty else {
            throw DashboardError.invalidInput("\(label ?? name) is missing")
        }
        return value
    }
}
