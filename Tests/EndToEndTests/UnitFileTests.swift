import Foundation
import Testing

/// The shipped systemd units: a daemon that crashes in a burst must come back, whatever the burst.
struct UnitFileTests {
    static let repository = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()

    /// `key=value` lines of one section.
    static func settings(_ text: String, section: String) -> [String: String] {
        var current = "", values: [String: String] = [:]
        for raw in text.split(separator: "\n") {
            let line = raw.trimmingCharacters(in: .whitespaces)
            if line.hasPrefix("[") { current = line; continue }
            guard current == "[\(section)]", !line.hasPrefix("#"), let equals = line.firstIndex(of: "=") else { continue }
            values[String(line[..<equals])] = String(line[line.index(after: equals)...])
        }
        return values
    }

    @Test(arguments: ["Controller/fleetkeep-controller.service", "Agent/fleetkeep-agent.service"])
    func daemonsRestartWithAPauseAndNeverHitAStartLimit(unit: String) throws {
        let text = try String(contentsOf: Self.repository.appendingPathComponent(unit), encoding: .utf8)
        let service = Self.settings(text, section: "Service"), unitSection = Self.settings(text, section: "Unit")
        #expect(service["Restart"] == "always")
        let pause = try #require(service["RestartSec"].flatMap { Int($0) }, "\(unit) has no numeric RestartSec")
        #expect(pause >= 1)
        // 0 turns the start-rate limit off: with the default (5 starts in 10 s) a crash burst stops the service for good.
        #expect(unitSection["StartLimitIntervalSec"] == "0", "\(unit)")
    }
}
