import Foundation

/// Time zone names from outside (an agent's facts, an operator's option, a stored policy).
public enum ZoneName {
    /// Every zone in use lies within UTC-12 and UTC+14. Foundation also accepts names like "GMT-18", whose offset
    /// then traps `ISO8601DateFormatter` (an agent reporting one crashed `schedule show`).
    static let offsetsInUse = (-12 * 3600)...(14 * 3600)

    /// The zone `name` stands for: known to the system's zone database, short, and within UTC-12..UTC+14; nil
    /// otherwise.
    public static func zone(_ name: String) -> TimeZone? {
        guard name.utf8.count <= 64, let zone = TimeZone(identifier: name), offsetsInUse.contains(zone.secondsFromGMT()) else { return nil }
        return zone
    }

    /// `zone(name)`, or UTC when `name` is missing or not a zone `zone` accepts.
    public static func zoneOrUTC(_ name: String?) -> TimeZone {
        name.flatMap(zone) ?? TimeZone(secondsFromGMT: 0) ?? TimeZone.current
    }
}
