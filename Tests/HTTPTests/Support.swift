import Foundation
import HTTPClient
import HTTPServer
import Synchronization

/// A started server on an ephemeral loopback port, shut down when released.
final class RunningServer: Sendable {
    let server: HTTPServer
    let baseURL: String

    init(configuration: HTTPServerConfiguration = HTTPServerConfiguration(), scheme: String = "http",
         _ routes: (inout Router) -> Void) throws {
        var router = Router()
        routes(&router)
        server = try HTTPServer(configuration: configuration, router: router)
        try server.start()
        baseURL = "\(scheme)://127.0.0.1:\(server.port)"
    }

    func client(retry: RetryPolicy = .none, pin: String? = nil, timeout: Double = 10) throws -> HTTPClient {
        try HTTPClient(configuration: HTTPClientConfiguration(baseURL: baseURL, pinnedPublicKeySHA256: pin,
                                                              timeoutSeconds: timeout, retry: retry))
    }

    deinit { server.shutdown() }
}

/// Runs `body` on `count` real threads at once (GCD's pool may be as small as the core count) and returns results in order.
func onThreads<T: Sendable>(_ count: Int, _ body: @escaping @Sendable (Int) -> T) -> [T] {
    let results = Mutex<[Int: T]>([:])
    let group = DispatchGroup()
    for index in 0..<count {
        group.enter()
        let thread = Thread {
            let value = body(index)
            results.withLock { $0[index] = value }
            group.leave()
        }
        thread.start()
    }
    group.wait()
    return results.withLock { dict in (0..<count).map { dict[$0]! } }
}

/// Seconds elapsed while running `body`.
func measure(_ body: () throws -> Void) rethrows -> Double {
    let start = ContinuousClock.now
    try body()
    let elapsed = ContinuousClock.now - start
    return Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) / 1e18
}

struct Greeting: Codable, Equatable, Sendable {
    var name: String
    var count: Int
}

struct ErrorBody: Decodable {
    var error: String
}
