@testable import AgentCore
import Testing

struct HeartbeatBackoffTests {
    @Test func retriesBackOffExponentiallyUpToTheInterval() {
        let ceilings = (1...8).map { HeartbeatDaemon.retryCeiling(failures: $0, interval: 300) }
        #expect(ceilings == [10, 20, 40, 80, 160, 300, 300, 300])
        #expect(HeartbeatDaemon.retryCeiling(failures: 1, interval: 0.5) == 1)
        #expect(HeartbeatDaemon.retryCeiling(failures: 10_000, interval: 3600) == 3600)
    }
}
