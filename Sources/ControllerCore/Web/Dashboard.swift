import CommandLineSupport
import Crypto
import FleetkeepProtocol
import Foundation
import HTTPServer
import Synchronization

/// The web dashboard and /metrics, served by the controller's own HTTP server. Pages are rendered here, work
/// without JavaScript (a small script only refreshes job progress), load nothing from elsewhere, and are sent with
/// a strict Content-Security-Policy. Errors become HTTP statuses in one place (`status(of:)`): pages answer them as
/// HTML, the JSON endpoint as `{"error": ...}`.
public final class Dashboard: Sendable {
    public let operators: OperatorService
    let fleet: any FleetStore
    let coverage: any BackupCoverageSource
    let alerts: any AlertStore
    let audit: any PersonalDataAudit
    /// Aggregates, customer export and erasure, and the audit log, for the privacy pages.
    let privacy: PrivacyService
    let jobs: any JobStore
    let schedules: ScheduleService
    let licences: LicenceService
    public let metrics: ControllerMetrics
    let metricsAccess: MetricsAccess
    let heartbeatInterval: @Sendable () -> Int64
    let clock: @Sendable () -> Int64
    /// The fleet's daily outcomes of the days before today, read at most every 10 minutes (a result that arrives
    /// late, from an agent that was offline, shows within that); today's are read for each page.
    private let pastDays = Mutex<(today: Int64, at: Int64, outcomes: [DailyOutcome])?>(nil)

    static let sessionCookie = "__Host-fk-session"
    static let loginCookie = "__Host-fk-login"

    public init(operators: OperatorService, fleet: any FleetStore, coverage: any BackupCoverageSource, alerts: any AlertStore,
                audit: any PersonalDataAudit, privacy: PrivacyService, jobs: any JobStore, schedules: ScheduleService, licences: LicenceService,
                metricsAccess: MetricsAccess, heartbeatInterval: @escaping @Sendable () -> Int64,
                clock: @escaping @Sendable () -> Int64 = FleetkeepClock.now) {
        self.operators = operators
        self.fleet = fleet
        self.coverage = coverage
        self.alerts = alerts
        self.audit = audit
        self.privacy = privacy
        self.jobs = jobs
        self.schedules = schedules
        self.licences = licences
        self.metricsAccess = metricsAccess
        self.heartbeatInterval = heartbeatInterval
        self.clock = clock
        metrics = ControllerMetrics(fleet: fleet, coverage: coverage, alerts: alerts, heartbeatInterval: heartbeatInterval, clock: clock)
    }

    /// The dashboard over the controller's database, with today's implementations of the seams.
    public static func open(store: ControllerStore, licences: LicenceService, jobs: any JobStore, schedules: ScheduleService,
                            metricsAccess: MetricsAccess, policy: OperatorPolicy = OperatorPolicy(),
                            clock: @escaping @Sendable () -> Int64 = FleetkeepClock.now) throws -> Dashboard {
        let fleet = try SQLiteFleetStore(database: store.database, keys: store.keys)
        let privacy = PrivacyService(controllerStore: store, clock: clock)
        return Dashboard(operators: OperatorService(store: try SQLiteOperatorStore(database: store.database), policy: policy, clock: clock),
                         fleet: fleet, coverage: fleet, alerts: try SQLiteAlertStore(database: store.database),
                         audit: PrivacyAuditReads(privacy: privacy), privacy: privacy, jobs: jobs, schedules: schedules,
                         licences: licences, metricsAccess: metricsAccess,
                         heartbeatInterval: { Int64((try? store.heartbeatInterval()) ?? 300) }, clock: clock)
    }

    var thresholds: FleetThresholds { FleetThresholds(now: clock(), heartbeatInterval: heartbeatInterval()) }

    // MARK: Routes

    public func register(in router: inout Router) {
        router.add("GET", "/") { [self] request in page(request, .viewer) { try overview($0) } }
        router.add("GET", "/agent") { [self] request in page(request, .viewer) { try agentPage($0) } }
        router.add("GET", "/agent/confirm") { [self] request in page(request, .admin) { try confirmAction($0) } }
        router.add("POST", "/agent/action") { [self] request in
            page(request, .admin, fields: ["id", "action", "account", "snapshot"]) { try startAction($0) }
        }
        router.add("GET", "/jobs") { [self] request in page(request, .viewer) { try jobsPage($0) } }
        router.add("GET", "/jobs/live") { [self] request in json(request) { try liveJobs($0, $1) } }
        router.add("GET", "/licences") { [self] request in page(request, .admin) { try licencesPage($0) } }
        router.add("GET", "/licence") { [self] request in page(request, .admin) { try licencePage($0) } }
        router.add("GET", "/licences/new") { [self] request in page(request, .admin) { try issueForm($0, error: nil, values: [:]) } }
        router.add("POST", "/licences/new") { [self] request in
            page(request, .admin, fields: ["customer", "email", "tier", "maxServers", "expires"]) { try issueLicence($0) }
        }
        router.add("GET", "/licence/revoke") { [self] request in page(request, .admin) { try confirmRevoke($0) } }
        router.add("POST", "/licence/revoke") { [self] request in page(request, .admin, fields: ["id"]) { try revokeLicence($0) } }
        router.add("GET", "/alerts") { [self] request in page(request, .viewer) { try alertsPage($0) } }
        router.add("GET", "/privacy") { [self] request in page(request, .viewer) { try privacyPage($0) } }
        router.add("GET", "/privacy/confirm") { [self] request in page(request, .admin) { try confirmPrivacyAction($0) } }
        router.add("POST", "/privacy/export") { [self] request in page(request, .admin, fields: ["customer"]) { try exportCustomer($0) } }
        router.add("POST", "/privacy/erase") { [self] request in page(request, .admin, fields: ["customer", "confirmation"]) { try eraseCustomer($0) } }
        router.add("GET", "/login") { [self] request in page(request, .anyone) { try loginPage($0, message: nil, status: 200) } }
        router.add("POST", "/login") { [self] request in page(request, .anyone) { try login($0) } }
        // Open to anyone so that signing out of an expired session still lands on the login page; with a session,
        // its CSRF token is checked like any other form's.
        router.add("POST", "/logout") { [self] request in page(request, .anyone, fields: []) { try logout($0) } }
        router.add("GET", "/setup") { [self] request in page(request, .anyone) { try setupPage($0) } }
        router.add("POST", "/setup") { [self] request in page(request, .anyone) { try completeSetup($0) } }
        router.add("GET", "/static/app.css") { _ in Self.asset(DashboardAssets.css, type: "text/css; charset=utf-8") }
        router.add("GET", "/static/app.js") { _ in Self.asset(DashboardAssets.script, type: "text/javascript; charset=utf-8") }
        // Browsers ask for it on their own; no icon, and no error in their console.
        router.add("GET", "/favicon.ico") { _ in HTTPResponse(status: 204, headers: ["Cache-Control": "max-age=86400"]) }
        router.add("GET", "/metrics") { [self] request in try Self.timed { try serveMetrics(request) } }
    }

    /// What a page requires.
    enum Requirement { case anyone, viewer, admin }

    /// One request to a page, with the operator when signed in and the form when it was a POST.
    struct PageRequest {
        let http: HTTPRequest
        let session: OperatorSession?
        let form: FormBody?

        func query(_ name: String, longest: Int = 200) throws -> String? {
            guard let value = http.query[name] else { return nil }
            guard value.utf8.count <= longest else { throw DashboardError.invalidInput("'\(name)' is longer than \(longest) bytes") }
            return value
        }
    }

    /// Runs a page handler: signs the operator in from the session cookie (or redirects to the login page), checks
    /// the CSRF token of a POST and then the role, and turns any error into an HTML error page with its status.
    /// `fields` lists a POST form's fields besides `csrf`; nil means the handler reads its own body (login, setup).
    func page(_ request: HTTPRequest, _ requirement: Requirement, fields: Set<String>? = nil,
              _ handler: (PageRequest) throws -> HTTPResponse) -> HTTPResponse {
        Self.timed { answerPage(request, requirement, fields: fields, handler) }
    }

    private func answerPage(_ request: HTTPRequest, _ requirement: Requirement, fields: Set<String>?,
                            _ handler: (PageRequest) throws -> HTTPResponse) -> HTTPResponse {
        var session: OperatorSession?
        do {
            if let token = request.cookies[Self.sessionCookie] { session = try? operators.session(token: token) }
            if requirement != .anyone {
                guard let signedIn = session else {
                    if request.method == "GET" { return Self.redirect("/login") }
                    throw DashboardError.forbidden("you are not signed in (or your session expired); sign in again")
                }
                session = signedIn
            }
            var form: FormBody?
            if request.method == "POST", let fields, let signedIn = session {
                let body = try FormBody(request.body, contentType: request.headers["content-type"], allowed: fields.union(["csrf"]))
                guard let sent = body.value("csrf"), HMACEqual.strings(sent, signedIn.csrf) else {
                    throw DashboardError.forbidden("this form is out of date or did not come from this dashboard (missing or wrong CSRF token); reload the page and try again")
                }
                form = body
            }
            if requirement == .admin, session?.role != .admin {
                throw DashboardError.forbidden("this needs an administrator; you are signed in as a viewer")
            }
            return try handler(PageRequest(http: request, session: session, form: form))
        } catch {
            let (status, message) = Self.status(of: error)
            if status == 401, request.method == "GET" { return Self.redirect("/login") }
            var response = Self.htmlResponse(Pages.error(status: status, message: message, session: session), status: status)
            if case DashboardError.rateLimited(let seconds) = error { response.headers["Retry-After"] = String(seconds) }
            return response
        }
    }

    /// Runs a JSON endpoint for signed-in operators; errors are `{"error": ...}`.
    func json(_ request: HTTPRequest, _ handler: (HTTPRequest, OperatorSession) throws -> HTTPResponse) -> HTTPResponse {
        Self.timed { answerJSON(request, handler) }
    }

    private func answerJSON(_ request: HTTPRequest, _ handler: (HTTPRequest, OperatorSession) throws -> HTTPResponse) -> HTTPResponse {
        do {
            guard let token = request.cookies[Self.sessionCookie] else { throw DashboardError.notSignedIn("please sign in") }
            var response = try handler(request, try operators.session(token: token))
            response.headers.merge(Self.securityHeaders) { current, _ in current }
            return response
        } catch {
            let (status, message) = Self.status(of: error)
            var response = HTTPResponse.error(status, message)
            response.headers.merge(Self.securityHeaders) { current, _ in current }
            return response
        }
    }

    /// The one place errors become HTTP statuses and the text shown for them.
    static func status(of error: any Error) -> (Int, String) {
        switch error {
        case let error as DashboardError: return (error.httpStatus, error.description)
        case let error as LicenceError: return (error.httpStatus, error.description)
        case let error as PrivacyError: return (error.httpStatus, error.description)
        case let error as JobStoreError: let mapped = JobService.httpError(error); return (mapped.status, mapped.message)
        case let error as UsageError: return (400, error.message)
        case let error as HTTPError: return (error.status, error.message)
        default: return (500, "the controller could not answer this page right now; try again (its log may say more)")
        }
    }

    // MARK: Responses

    /// Runs a handler and says in a `Server-Timing` header how long it took: wall time and the CPU time of the
    /// answering thread (browsers show it in their developer tools; the benchmark reads it).
    static func timed(_ handler: () throws -> HTTPResponse) rethrows -> HTTPResponse {
        let wall = DispatchTime.now().uptimeNanoseconds, cpu = threadCPUSeconds()
        var response = try handler()
        let wallMilliseconds = Double(DispatchTime.now().uptimeNanoseconds &- wall) / 1e6, cpuMilliseconds = (threadCPUSeconds() - cpu) * 1000
        response.headers["Server-Timing"] = String(format: "total;dur=%.1f, cpu;dur=%.1f", wallMilliseconds, cpuMilliseconds)
        return response
    }

    static func threadCPUSeconds() -> Double {
        var time = timespec()
        clock_gettime(CLOCK_THREAD_CPUTIME_ID, &time)
        return Double(time.tv_sec) + Double(time.tv_nsec) / 1e9
    }

    static let securityHeaders = [
        "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
        "X-Frame-Options": "DENY",
        "Cache-Control": "no-store",
    ]

    static func htmlResponse(_ html: HTML, status: Int = 200) -> HTTPResponse {
        var headers = securityHeaders
        headers["Content-Type"] = "text/html; charset=utf-8"
        return HTTPResponse(status: status, headers: headers, body: Array(html.text.utf8))
    }

    /// 303: after a POST the browser fetches `location` with GET.
    static func redirect(_ location: String, cookie: String? = nil) -> HTTPResponse {
        var headers = securityHeaders
        headers["Location"] = location
        if let cookie { headers["Set-Cookie"] = cookie }
        return HTTPResponse(status: 303, headers: headers, body: [])
    }

    static func asset(_ text: String, type: String) -> HTTPResponse {
        var headers = securityHeaders
        headers["Content-Type"] = type
        headers["Cache-Control"] = "max-age=300"
        return HTTPResponse(status: 200, headers: headers, body: Array(text.utf8))
    }

    /// A cookie only this origin's HTTPS pages receive, that scripts cannot read and no other site's request carries.
    static func cookie(_ name: String, _ value: String, maxAge: Int64? = nil) -> String {
        "\(name)=\(value); Path=/; Secure; HttpOnly; SameSite=Strict" + (maxAge.map { "; Max-Age=\($0)" } ?? "")
    }

    // MARK: /metrics

    func serveMetrics(_ request: HTTPRequest) throws -> HTTPResponse {
        guard metricsAccess.allows(request) else {
            var response = HTTPResponse.error(401, "send `Authorization: Bearer TOKEN` with the token from the controller's metrics.token file (loopback clients need none)")
            response.headers["WWW-Authenticate"] = "Bearer"
            return response
        }
        do {
            return HTTPResponse(status: 200, headers: ["Content-Type": "text/plain; version=0.0.4; charset=utf-8", "Cache-Control": "no-store"],
                                body: Array(try metrics.render().utf8))
        } catch {
            throw HTTPError(503, "the controller could not read its database for /metrics right now; the next scrape tries again")
        }
    }

    // MARK: Shared reads

    /// The last 30 days' backup outcomes, fleet-wide.
    func dailyOutcomes(now: Int64) throws -> [DailyOutcome] {
        let today = now / 86400
        var past: [DailyOutcome]
        if let cached = pastDays.withLock({ $0 }), cached.today == today, now >= cached.at, now - cached.at < 600 {
            past = cached.outcomes
        } else {
            past = try fleet.dailyOutcomes(since: (today - 29) * 86400).filter { $0.day < today }
            pastDays.withLock { $0 = (today, now, past) }
        }
        past += try fleet.dailyOutcomes(since: today * 86400)
        return past
    }
}

/// Constant-time comparison of two tokens.
enum HMACEqual {
    static func strings(_ a: String, _ b: String) -> Bool {
        // Hashing first gives equal lengths, so the comparison time says nothing about the token.
        Crypto.HMACSHA256.equal(Crypto.SHA256.hash(Array(a.utf8)), Crypto.SHA256.hash(Array(b.utf8)))
    }
}
