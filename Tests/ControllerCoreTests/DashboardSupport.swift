import ControllerCore
import Crypto
import Foundation
import HTTPServer
import Scheduling
import Testing
import TestSupport

/// The controller's routes with the dashboard on a real SQLite file, driven without a socket, with a clock the
/// test moves.
final class DashboardHarness: @unchecked Sendable {
    final class Clock: @unchecked Sendable { var now: Int64 = 1_800_000_000 }  // moved by the test's thread only

    let directory = TemporaryDirectory(prefix: "fk-dashboard")
    let store: ControllerStore
    let service: ControllerService
    let jobs: SQLiteJobStore
    let dashboard: Dashboard
    let router: Router
    let clock = Clock()

    init(policy: OperatorPolicy = OperatorPolicy(), metricsToken: String? = nil) throws {
        store = try ControllerStore(path: directory.appending("controller.db"))
        let clock = self.clock
        service = ControllerService(store: store, certificatePin: "pin", clock: { clock.now })
        jobs = try SQLiteJobStore(database: store.database)
        let schedules = ScheduleService(store: try SQLiteScheduleStore(database: store.database))
        dashboard = try Dashboard.open(store: store, licences: service.licences, jobs: jobs, schedules: schedules,
                                       metricsAccess: MetricsAccess(token: metricsToken), policy: policy, clock: { clock.now })
        var router = service.router
        dashboard.register(in: &router)
        router.wrap("POST", "/v1/heartbeat", dashboard.metrics.heartbeats.measure)
        self.router = router
    }

    /// An operator with its password set through its one-time link.
    func addOperator(_ name: String, role: OperatorRole, password: String = "a long enough password") throws {
        let secret = try dashboard.operators.add(name: name, role: role)
        _ = try dashboard.operators.completeSetup(secret: secret, password: password, confirmation: password)
    }

    /// An enrolled agent, written as enrollment writes it: the host name sealed, nothing in the clear column.
    @discardableResult
    func addAgent(_ id: String, hostname: String, lastSeen: Int64?, enrolledAt: Int64? = nil, facts: [String: String] = [:]) throws -> String {
        let json = String(decoding: try JSONEncoder().encode(facts), as: UTF8.self)
        try store.database.run("INSERT INTO agents (id, public_key, hostname, hostname_sealed, enrolled_at, last_seen, facts) VALUES (?, ?, '', ?, ?, ?, ?)",
                               [.text(id), .blob(SecureRandom.bytes(32)), .blob(try store.keys.seal(hostname, field: "agent.hostname")),
                                .integer(enrolledAt ?? clock.now - 30 * 86400), .optional(lastSeen), .text(json)])
        return id
    }

    /// The alert evaluation, as `serve` runs it every 30 s, at the harness's clock.
    @discardableResult
    func evaluateAlerts() throws -> AlertTransitions {
        let clock = self.clock
        return try AlertService.open(store: store, startedAt: clock.now - 86400, controllerName: "test", clock: { clock.now }).evaluate(now: clock.now)
    }

    /// A finished backup job, as a result records it.
    @discardableResult
    func addFinishedBackup(agent: String, state: String, finishedAt: Int64, duration: Int64 = 60, bytes: Int64 = 1_000_000,
                           snapshots: [String] = ["abc123"], error: String? = nil) throws -> Int64 {
        let outcome = #"{"bytesAdded":\#(bytes),"durationSeconds":\#(duration),"files":10,"snapshots":\#(String(decoding: try JSONEncoder().encode(snapshots), as: UTF8.self))\#(error.map { #","error":"\#($0)""# } ?? "")}"#
        try store.database.run("""
            INSERT INTO jobs (agent_id, kind, state, parameters, origin, attempt, max_attempts, retry_base, timeout_seconds, not_before, queued_at,
                              dispatched_at, started_at, finished_at, outcome)
            VALUES (?, 'backup', ?, '{}', 'schedule', 1, 3, 300, 21600, ?, ?, ?, ?, ?, ?)
            """, [.text(agent), .text(state), .integer(finishedAt - duration), .integer(finishedAt - duration), .integer(finishedAt - duration),
                  .integer(finishedAt - duration), .integer(finishedAt), .text(outcome)])
        return store.database.lastInsertRowID
    }

    func request(_ method: String, _ path: String, query: [String: String] = [:], cookies: [String: String] = [:], form: [(String, String)]? = nil,
                 headers: [String: String] = [:], address: String = "192.0.2.10") -> HTTPResponse {
        var allHeaders = headers
        var body: [UInt8] = []
        if let form {
            allHeaders["content-type"] = "application/x-www-form-urlencoded"
            body = Array(Self.encode(form).utf8)
        }
        return router.handle(HTTPRequest(method: method, path: path, query: query, headers: allHeaders, body: body, remoteAddress: address, cookies: cookies))
    }

    static func encode(_ form: [(String, String)]) -> String {
        var components = URLComponents()
        components.queryItems = form.map { URLQueryItem(name: $0.0, value: $0.1) }
        return (components.percentEncodedQuery ?? "").replacingOccurrences(of: "+", with: "%2B")
    }

    /// Signs in through the login form, as a browser does: the form's token, its cookie, then the session cookie.
    func signIn(_ name: String, password: String = "a long enough password", address: String = "192.0.2.10") throws -> Browser {
        let (status, headers) = try postLogin(name, password: password, address: address)
        guard status == 303, let cookie = headers["Set-Cookie"], let session = Self.cookieValue(cookie, "__Host-fk-session") else {
            throw TestFailure("sign-in of \(name) answered \(status) \(headers)")
        }
        let browser = Browser(harness: self, cookies: ["__Host-fk-session": session])
        browser.csrf = try #require(browser.get("/jobs").text.firstMatch(of: /name="csrf" value="([^"]+)"/)).1.description
        return browser
    }

    func postLogin(_ name: String, password: String, address: String = "192.0.2.10", csrfMatches: Bool = true) throws -> (Int, [String: String]) {
        let page = request("GET", "/login", address: address)
        guard let cookie = page.headers["Set-Cookie"], let token = Self.cookieValue(cookie, "__Host-fk-login") else { throw TestFailure("no login cookie") }
        let response = request("POST", "/login", cookies: ["__Host-fk-login": token],
                               form: [("csrf", csrfMatches ? token : "forged"), ("name", name), ("password", password)], address: address)
        return (response.status, response.headers)
    }

    static func cookieValue(_ header: String, _ name: String) -> String? {
        guard header.hasPrefix(name + "=") else { return nil }
        return header.dropFirst(name.count + 1).split(separator: ";").first.map(String.init)
    }
}

/// One signed-in browser: its session cookie and the CSRF token its pages carry.
final class Browser: @unchecked Sendable {
    let harness: DashboardHarness
    var cookies: [String: String]
    var csrf = ""

    init(harness: DashboardHarness, cookies: [String: String]) {
        self.harness = harness
        self.cookies = cookies
    }

    func get(_ path: String, _ query: [String: String] = [:]) -> HTTPResponse {
        harness.request("GET", path, query: query, cookies: cookies)
    }

    /// Posts `form` with this session's CSRF token first (unless `csrf` says otherwise: nil leaves it out).
    func post(_ path: String, _ form: [(String, String)], csrf: String?? = .none) -> HTTPResponse {
        let token: String? = csrf ?? self.csrf
        return harness.request("POST", path, cookies: cookies, form: (token.map { [("csrf", $0)] } ?? []) + form)
    }
}

extension HTTPResponse {
    var text: String { String(decoding: body, as: UTF8.self) }
}
