/// A schema change, applied once, in version order, in its own transaction. `sql` may hold several statements.
public struct Migration: Sendable {
    public let version: Int
    public let sql: String

    public init(version: Int, sql: String) {
        self.version = version
        self.sql = sql
    }
}
