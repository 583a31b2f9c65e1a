/// One result row, read by column name. Conversions never trap: a value that does not fit the asked type is nil.
public struct Row: Sendable {
    let columns: [String: Int]
    /// The values in column order.
    public let values: [SQLValue]

    /// The value of `column`, or `.null` when there is no such column.
    public subscript(_ column: String) -> SQLValue {
        guard let index = columns[column] else { return .null }
        return values[index]
    }

    /// The value at a 0-based column position, or `.null` when out of range.
    public subscript(index index: Int) -> SQLValue {
        values.indices.contains(index) ? values[index] : .null
    }

    /// The column names of the result.
    public var columnNames: [String] { columns.sorted { $0.value < $1.value }.map(\.key) }

    public func int(_ column: String) -> Int64? {
        switch self[column] {
        case .integer(let v): return v
        case .real(let v): return Int64(exactly: v.rounded(.towardZero))
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
