import Foundation
import Testing
import TestSupport

/// The scaffolding that finds a test server's port in its output.
struct BackgroundProcessTests {
    /// A server's "listening on PORT" line can be read while it is still being written. Seen in part, it must not be
    /// taken for the whole: the SMTP test server's port was once read from "listening on" alone, and the test failed.
    @Test func aListeningLineSeenInPartIsWaitedFor() throws {
        let server = try BackgroundProcess("/bin/sh", ["-c", "printf 'listening on 42'; sleep 0.3; printf '43\\n'; sleep 10"])
        #expect(try server.waitForListeningPort() == 4243)
        let controller = try BackgroundProcess("/bin/sh", ["-c", "printf 'x listening on 127.0.0.1:'; sleep 0.3; echo '8443 (agents use y)'; sleep 10"])
        #expect(try controller.waitForListeningPort() == 8443)
    }
}
