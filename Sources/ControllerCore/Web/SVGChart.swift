import Foundation

/// One bar of a chart: a label (shown as a tooltip) and a value of 0 or more; nil draws a gap (no data that day).
public struct ChartBar: Sendable, Equatable {
    public let label: String
    public let value: Double?
    public init(label: String, value: Double?) {
        self.label = label
        self.value = value
    }
}

/// Bar charts drawn on the server as inline SVG: no script, no chart library, styled by the dashboard's CSS.
/// Every label passes through `HTML` escaping like any other text.
public enum SVGChart {
    static let width = 640.0
    static let height = 170.0
    static let left = 64.0
    static let bottom = 22.0
    static let top = 10.0

    /// `format` writes an axis value (bytes, seconds, a percentage). `fixedMaximum` pins the top of the axis (100 %).
    public static func bars(title: String, bars: [ChartBar], fixedMaximum: Double? = nil, format: (Double) -> String) -> HTML {
        let values = bars.compactMap(\.value).filter { $0.isFinite && $0 >= 0 }
        let maximum = max(fixedMaximum ?? values.max() ?? 0, 1e-9)
        let plotWidth = width - left - 8, plotHeight = height - top - bottom
        let slot = plotWidth / Double(max(bars.count, 1))
        var pieces: [HTML] = []
        for (index, bar) in bars.enumerated() {
            let x = left + Double(index) * slot + slot * 0.15
            guard let value = bar.value, value.isFinite, value >= 0 else {
                pieces.append("<rect class=\"gap\" x=\"\(number(x))\" y=\"\(number(top + plotHeight - 1))\" width=\"\(number(slot * 0.7))\" height=\"1\"><title>\(bar.label): no data</title></rect>")
                continue
            }
            let barHeight = max(1, min(value, maximum) / maximum * plotHeight)
            pieces.append("<rect class=\"bar\" x=\"\(number(x))\" y=\"\(number(top + plotHeight - barHeight))\" width=\"\(number(slot * 0.7))\" height=\"\(number(barHeight))\"><title>\(bar.label): \(format(value))</title></rect>")
        }
        let first = bars.first?.label ?? "", last = bars.last?.label ?? ""
        return """
            <figure class="chart"><figcaption>\(title)</figcaption>
            <svg xmlns="http://www.w3.org/2000/svg" role="img" viewBox="0 0 \(number(width)) \(number(height))" width="\(number(width))" height="\(number(height))">
            <title>\(title)</title>
            <line class="axis" x1="\(number(left))" y1="\(number(top))" x2="\(number(left))" y2="\(number(top + plotHeight))"/>
            <line class="axis" x1="\(number(left))" y1="\(number(top + plotHeight))" x2="\(number(width - 8))" y2="\(number(top + plotHeight))"/>
            <text class="label" x="\(number(left - 4))" y="\(number(top + 8))" text-anchor="end">\(format(fixedMaximum ?? values.max() ?? 0))</text>
            <text class="label" x="\(number(left - 4))" y="\(number(top + plotHeight))" text-anchor="end">0</text>
            <text class="label" x="\(number(left))" y="\(number(height - 6))">\(first)</text>
            <text class="label" x="\(number(width - 8))" y="\(number(height - 6))" text-anchor="end">\(last)</text>
            \(pieces)
            </svg></figure>
            """
    }

    static func number(_ value: Double) -> String {
        guard value.isFinite else { return "0" }
        return String(format: "%.1f", value)
    }

    /// The last `days` Unix days ending with the one holding `now`, labelled YYYY-MM-DD.
    public static func days(endingAt now: Int64, count days: Int) -> [(day: Int64, label: String)] {
        let today = now / 86400
        let formatter = ISO8601DateFormatter()
        formatter.formatOptions = [.withFullDate]
        return (0..<max(1, days)).reversed().map { back in
            let day = today - Int64(back)
            return (day, formatter.string(from: Date(timeIntervalSince1970: TimeInterval(day * 86400))))
        }
    }
}

/// Numbers and times as the pages show them.
public enum DisplayFormat {
    public static func bytes(_ value: Double) -> String {
        let units = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"]
        var scaled = max(0, value.isFinite ? value : 0)
        var unit = 0
        while scaled >= 1024 && unit < units.count - 1 { scaled /= 1024; unit += 1 }
        return unit == 0 ? "\(Int(scaled)) B" : String(format: "%.1f %@", scaled, units[unit])
    }

    public static func duration(_ seconds: Double) -> String {
        guard seconds.isFinite, seconds >= 0 else { return "-" }
        if seconds < 120 { return "\(Int(seconds.rounded())) s" }
        if seconds < 7200 { return "\(Int((seconds / 60).rounded())) min" }
        if seconds < 172_800 { return String(format: "%.1f h", seconds / 3600) }
        return String(format: "%.1f d", seconds / 86400)
    }

    /// "5 min ago", or "never".
    public static func age(_ at: Int64?, now: Int64) -> String {
        guard let at else { return "never" }
        let (age, overflow) = now.subtractingReportingOverflow(at)
        guard !overflow else { return "-" }
        return age < 0 ? "in \(duration(Double(-age)))" : "\(duration(Double(age))) ago"
    }

    public static func time(_ at: Int64?) -> String {
        guard let at, at > -100_000_000_000, at < 100_000_000_000 else { return "-" }
        let formatter = ISO8601DateFormatter()
        formatter.formatOptions = [.withFullDate, .withTime, .withColonSeparatorInTime, .withSpaceBetweenDateAndTime]
        return formatter.string(from: Date(timeIntervalSince1970: TimeInterval(at))) + " UTC"
    }

    public static func percent(_ value: Double) -> String { String(format: "%.0f %%", value.isFinite ? value : 0) }
}
