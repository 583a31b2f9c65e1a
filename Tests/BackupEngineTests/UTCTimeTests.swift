@testable import BackupEngine
import Foundation
import Testing

/// Snapshot and lease times: ISO 8601 in UTC with milliseconds, written and read without ICU.
struct UTCTimeTests {
    @Test func formatsUTCWithMilliseconds() {
        #expect(UTCTime.format(Date(timeIntervalSince1970: 0)) == "1970-01-01T00:00:00.000Z")
        #expect(UTCTime.format(Date(timeIntervalSince1970: 1_795_425_302.25)) == "2026-11-23T09:15:02.250Z")
        // Before 1970 the fraction still counts forward from the whole second below.
        #expect(UTCTime.format(Date(timeIntervalSince1970: -0.5)) == "1969-12-31T23:59:59.500Z")
        #expect(UTCTime.format(Date(timeIntervalSince1970: 951_782_400)) == "2000-02-29T00:00:00.000Z")
    }

    @Test func readsBackWhatItWritesToTheMillisecond() throws {
        var generator = SystemRandomNumberGenerator()
        for _ in 0..<2000 {
            let milliseconds = Int64.random(in: -2_000_000_000_000...4_000_000_000_000, using: &generator)
            let date = Date(timeIntervalSince1970: Double(milliseconds) / 1000)
            let text = UTCTime.format(date)
            let back = try #require(UTCTime.parse(text), "\(text)")
            #expect(abs(back.timeIntervalSince1970 - date.timeIntervalSince1970) < 0.0005, "\(text)")
            #expect(UTCTime.format(back) == text)
        }
    }

    /// Snapshots and lock files written before (Foundation's ISO 8601 styles, with or without a fraction) still read.
    @Test func readsEarlierSpellingsAndOffsets() throws {
        let date = Date(timeIntervalSince1970: 1_795_425_302.125)
        let foundationStyle = date.formatted(.iso8601.year().month().day().time(includingFractionalSeconds: true).timeZone(separator: .omitted))
        #expect(abs(try #require(UTCTime.parse(foundationStyle)).timeIntervalSince(date)) < 0.0005)
        #expect(UTCTime.parse("2026-11-23T09:15:02Z") == Date(timeIntervalSince1970: 1_795_425_302))
        #expect(UTCTime.parse("2026-11-23T10:15:02+01:00") == Date(timeIntervalSince1970: 1_795_425_302))
        #expect(UTCTime.parse("2026-11-23T07:45:02-0130") == Date(timeIntervalSince1970: 1_795_425_302))
        #expect(UTCTime.parse("2026-11-23T09:15:02.5z") == Date(timeIntervalSince1970: 1_795_425_302.5))
    }

    @Test func refusesMalformedTimes() {
        for text in ["", "2026-11-23", "2026-11-23T09:15:02", "2026-11-23 09:15:02Z", "2026-02-30T00:00:00Z",
                     "2026-13-01T00:00:00Z", "2026-11-23T24:00:00Z", "2026-11-23T09:60:00Z", "2026-11-23T09:15:02.Z",
                     "2026-11-23T09:15:02Zjunk", "2026-11-23T09:15:02+1", "26-11-23T09:15:02Z", "２０２６-11-23T09:15:02Z"] {
            #expect(UTCTime.parse(text) == nil, "\(text.debugDescription) was accepted")
        }
    }

    @Test func snapshotsRoundTripThroughJSON() throws {
        struct Stamped: Codable, Equatable { var time: Date }
        let encoder = JSONEncoder()
        encoder.dateEncodingStrategy = UTCTime.jsonEncoding
        let decoder = JSONDecoder()
        decoder.dateDecodingStrategy = UTCTime.jsonDecoding
        let value = Stamped(time: Date(timeIntervalSince1970: 1_795_425_302.375))
        let json = try encoder.encode(value)
        #expect(String(decoding: json, as: UTF8.self) == #"{"time":"2026-11-23T09:15:02.375Z"}"#)
        #expect(try decoder.decode(Stamped.self, from: json) == value)
        #expect(throws: DecodingError.self) { try decoder.decode(Stamped.self, from: Data(#"{"time":"yesterday"}"#.utf8)) }
    }
}
