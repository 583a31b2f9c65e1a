/// A value stored in or read from SQLite, with SQLite's five storage classes.
public enum SQLValue: Sendable, Hashable {
    case null
    case integer(Int64)
    case real(Double)
    case text(String)
    case blob([UInt8])
}

extension SQLValue: ExpressibleByIntegerLiteral, ExpressibleByStringLiteral, ExpressibleByFloatLiteral, ExpressibleByNilLiteral {
    public init(integerLiteral value: Int64) { self = .integer(value) }
    public init(stringLiteral value: String) { self = .text(value) }
    public init(floatLiteral value: Double) { self = .real(value) }
    public init(nilLiteral: ()) { self = .null }
}

extension SQLValue {
    /// Wraps an optional string, mapping nil to NULL.
    public static func optional(_ text: String?) -> SQLValue { text.map(SQLValue.text) ?? .null }
    public static func int(_ value: Int) -> SQLValue { .integer(Int64(value)) }
}

/// One result row, read by column name.
public struct Row: Sendable {
    let columns: [String: Int]
    let values: [SQLValue]

    public subscript(_ column: String) -> SQLValue {
        guard let index = columns[column] else { return .null }
        return values[index]
    }

    public func int(_ column: String) -> Int64? {
        switch self[column] {
        case .integer(let v): return v
        case .real(let v): return Int64(v)
        default: return nil
        }
    }

    public func string(_ column: String) -> String? {
        switch self[column] {
        case .text(let v): return v
        case .integer(let v): return String(v)
        case .real(let v): return String(v)
        case .blob(let v): return String(decoding: v, as: UTF8.self)
        case .null: return nil
        }
    }

    public func blob(_ column: String) -> [UInt8]? {
        switch self[column] {
        case .blob(let v): return v
        case .text(let v): return Array(v.utf8)
        default: return nil
        }
    }

    public func double(_ column: String) -> Double? {
        switch self[column] {
        case .real(let v): return v
        case .integer(let v): return Double(v)
        default: return nil
        }
    }
}

/// A schema change, applied once, in version order.
public struct Migration: Sendable {
    public let version: Int
    public let sql: String
    public init(version: Int, sql: String) {
        self.version = version
        self.sql = sql
    }
}
