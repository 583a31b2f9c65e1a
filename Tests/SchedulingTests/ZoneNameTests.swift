import Foundation
import Scheduling
import Testing

/// Zone names come from agents and operators. Foundation accepts "GMT-18" and "GMT+18:00", and formatting a date in
/// such a zone traps `ISO8601DateFormatter`: an agent reporting one crashed `schedule show`.
struct ZoneNameTests {
    @Test(arguments: ["UTC", "Europe/Berlin", "America/New_York", "Pacific/Kiritimati", "Etc/GMT+12", "GMT+14", "GMT-12"])
    func zonesInUseAreAccepted(name: String) throws {
        let zone = try #require(ZoneName.zone(name))
        let formatter = ISO8601DateFormatter()
        formatter.timeZone = zone
        #expect(!formatter.string(from: Date(timeIntervalSince1970: 1_800_000_000)).isEmpty)
    }

    @Test(arguments: ["GMT-18", "GMT+18:00", "GMT+15", "GMT-13", "Mars/Olympus", "", String(repeating: "A", count: 65)])
    func namesOutsideTheZonesInUseAreRefused(name: String) {
        #expect(ZoneName.zone(name) == nil)
        #expect(ZoneName.zoneOrUTC(name).secondsFromGMT() == 0)
    }
}
