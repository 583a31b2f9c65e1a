import CommandLineSupport
import Crypto
import FleetkeepProtocol
import Foundation
import HTTPServer

/// Sign-in, sign-out, password links and the licence pages.
extension Dashboard {
    // MARK: Sign-in

    /// The login form carries a token that must equal the one in a cookie this page sets (double submit): a site
    /// that cannot read our cookies cannot post a login form for the browser.
    func loginPage(_ request: PageRequest, message: HTML?, status: Int) throws -> HTTPResponse {
        if request.session != nil, request.http.method == "GET" { return Self.redirect("/") }
        let notices: [String: HTML] = ["expired": "<p class=\"notice\">Your session ended; sign in again.</p>",
                                       "signed-out": "<p class=\"notice\">You are signed out.</p>",
                                       "password-set": "<p class=\"notice\">Your password is set; sign in with it.</p>"]
        let token = Base64URL.encode(SecureRandom.bytes(24))
        let content: HTML = """
            \(message ?? request.http.query["m"].flatMap { notices[$0] } ?? .empty)
            <form method="post" action="/login" class="stack"><input type="hidden" name="csrf" value="\(token)">
            <label for="name">Operator</label><input id="name" name="name" autocomplete="username" required maxlength="64" autofocus>
            <label for="password">Password</label><input id="password" name="password" type="password" autocomplete="current-password" required>
            <p><button type="submit" id="sign-in">Sign in</button></p></form>
            """
        var response = Self.htmlResponse(Pages.layout(title: "Sign in", session: nil, content), status: status)
        response.headers["Set-Cookie"] = Self.cookie(Self.loginCookie, token, maxAge: 3600)
        return response
    }

    func login(_ request: PageRequest) throws -> HTTPResponse {
        let form = try FormBody(request.http.body, contentType: request.http.headers["content-type"], allowed: ["csrf", "name", "password"])
        guard let sent = form.value("csrf"), let expected = request.http.cookies[Self.loginCookie], HMACEqual.strings(sent, expected) else {
            throw DashboardError.forbidden("the sign-in form is out of date or did not come from this dashboard (missing or wrong CSRF token); reload the page")
        }
        do {
            let (token, _) = try operators.login(name: form.value("name") ?? "", password: form.value("password") ?? "",
                                                 remoteAddress: request.http.remoteAddress)
            return Self.redirect("/", cookie: Self.cookie(Self.sessionCookie, token))
        } catch DashboardError.wrongCredentials {
            return try loginPage(PageRequest(http: request.http, session: nil, form: nil),
                                 message: "<p class=\"error\" role=\"alert\">Wrong operator name or password.</p>", status: 401)
        }
    }

    func logout(_ request: PageRequest) throws -> HTTPResponse {
        if let token = request.http.cookies[Self.sessionCookie] { try operators.logout(token: token) }
        return Self.redirect("/login?m=signed-out", cookie: Self.cookie(Self.sessionCookie, "", maxAge: 0))
    }

    // MARK: Password links

    func setupPage(_ request: PageRequest) throws -> HTTPResponse {
        let secret = try request.query("token", longest: 128) ?? ""
        let record = try operators.setupOperator(secret: secret)
        return try setupForm(secret: secret, name: record.name, message: nil, status: 200)
    }

    func setupForm(secret: String, name: String, message: String?, status: Int) throws -> HTTPResponse {
        let token = Base64URL.encode(SecureRandom.bytes(24))
        let content: HTML = """
            \(message.map { m -> HTML in "<p class=\"error\" role=\"alert\">\(m)</p>" } ?? .empty)
            <p>Choose the password of operator <strong>\(name)</strong>: at least 12 characters. This link works once.</p>
            <form method="post" action="/setup" class="stack"><input type="hidden" name="csrf" value="\(token)"><input type="hidden" name="token" value="\(secret)">
            <input type="hidden" name="name" value="\(name)" autocomplete="username">
            <label for="password">New password</label><input id="password" name="password" type="password" autocomplete="new-password" required minlength="12">
            <label for="confirmation">Again</label><input id="confirmation" name="confirmation" type="password" autocomplete="new-password" required minlength="12">
            <p><button type="submit" id="set-password">Set password</button></p></form>
            """
        var response = Self.htmlResponse(Pages.layout(title: "Set your password", session: nil, content), status: status)
        response.headers["Set-Cookie"] = Self.cookie(Self.loginCookie, token, maxAge: 3600)
        return response
    }

    func completeSetup(_ request: PageRequest) throws -> HTTPResponse {
        let form = try FormBody(request.http.body, contentType: request.http.headers["content-type"], allowed: ["csrf", "token", "name", "password", "confirmation"])
        guard let sent = form.value("csrf"), let expected = request.http.cookies[Self.loginCookie], HMACEqual.strings(sent, expected) else {
            throw DashboardError.forbidden("the form is out of date or did not come from this dashboard (missing or wrong CSRF token); open the link again")
        }
        let secret = try form.required("token", label: "the link's token")
        do {
            _ = try operators.completeSetup(secret: secret, password: form.value("password") ?? "", confirmation: form.value("confirmation") ?? "")
        } catch DashboardError.invalidInput(let problem) {
            let record = try operators.setupOperator(secret: secret)
            return try setupForm(secret: secret, name: record.name, message: problem, status: 400)
        }
        return Self.redirect("/login?m=password-set")
    }

    // MARK: Licences (admin)

    /// Customer names are personal data: the read is recorded before the list is shown.
    func licencesPage(_ request: PageRequest) throws -> HTTPResponse {
        try audit.recordRead(actor: "operator \(request.session?.name ?? "?") (dashboard)", action: "read", subject: "customers of every licence",
                             reason: "licence list: customer names")
        let now = clock()
        let rows = try licences.list().map { licence -> [HTML] in
            ["<a href=\"\(href: "/licence", [("id", licence.id)])\" class=\"mono\">\(licence.id)</a>", "\(licence.status)", "\(licence.tier)",
             "\(licence.servers.used)/\(licence.servers.max)", "\(licence.expiresAt.map { DisplayFormat.time($0) } ?? "never")", "\(licence.customer)"]
        }
        let content: HTML = """
            <p><a href="/licences/new" id="issue-licence">Issue a licence…</a></p>
            \(Pages.table(id: "licences", headers: ["Licence", "Status", "Tier", "Servers", "Expires", "Customer"], rows: rows, empty: "No licence is issued yet."))
            <p class="muted">Shown at \(DisplayFormat.time(now)).</p>
            """
        return Self.htmlResponse(Pages.layout(title: "Licences", session: request.session, current: "/licences", content))
    }

    func requiredLicence(_ id: String?) throws -> Licence {
        guard let id, let normalized = LicenceKey.normalizedID(id), let licence = try licences.store.licence(id: normalized) else {
            throw DashboardError.notFound("no licence '\((id ?? "").prefix(40))'")
        }
        return licence
    }

    func licencePage(_ request: PageRequest) throws -> HTTPResponse {
        let licence = try requiredLicence(try request.query("id", longest: 40))
        try audit.recordRead(actor: "operator \(request.session?.name ?? "?") (dashboard)", action: "read", subject: "customer \(licence.customerID)",
                             reason: "licence \(licence.id) detail: customer name and email")
        let detail = try licences.detail(licence)
        let now = clock()
        let seat = { (seat: Seat) -> [HTML] in
            ["<a href=\"\(href: "/agent", [("id", seat.agentID)])\" class=\"mono\">\(seat.agentID)</a>", "\(DisplayFormat.time(seat.activatedAt))",
             "\(seat.releasedAt.map { DisplayFormat.time($0) } ?? "-")", "\(seat.leaseSerial.map(String.init) ?? "-")", "\(DisplayFormat.time(seat.leaseExpiresAt))"]
        }
        let history = detail.history.suffix(200).reversed().map { event -> [HTML] in
            ["\(DisplayFormat.time(event.at))", "\(event.kind)", "\(event.agentID ?? "")", "\(event.detail)"]
        }
        let revoke: HTML = licence.state == .revoked ? .empty : """
            <form method="get" action="/licence/revoke"><input type="hidden" name="id" value="\(licence.id)"><button type="submit" class="danger" id="revoke">Revoke…</button></form>
            """
        let content: HTML = """
            \(Pages.table(id: "licence-detail", headers: ["", ""], rows: [
                ["Status", "\(detail.status)"], ["Tier", "\(detail.tier) (\(detail.features.joined(separator: ", ")))"],
                ["Servers", "\(detail.servers.count) of \(detail.maxServers)"], ["Issued", "\(DisplayFormat.time(detail.issuedAt))"],
                ["Expires", "\(detail.expiresAt.map { DisplayFormat.time($0) } ?? "never")"],
                ["Customer", "\(detail.customer?.name ?? "?")"], ["Email", "\(detail.customer?.email ?? "?")"],
            ], empty: ""))
            \(revoke)
            <h2>Servers</h2>\(Pages.table(headers: ["Agent", "Activated", "Released", "Lease", "Lease expires"], rows: (detail.servers + detail.releasedServers).map(seat), empty: "No server is bound."))
            <h2>History</h2>\(Pages.table(headers: ["When", "Event", "Agent", "Detail"], rows: Array(history), empty: ""))
            <p class="muted">Shown at \(DisplayFormat.time(now)).</p>
            """
        return Self.htmlResponse(Pages.layout(title: "Licence \(licence.id)", session: request.session, current: "/licences", content))
    }

    func issueForm(_ request: PageRequest, error: String?, values: [String: String]) throws -> HTTPResponse {
        let tiers = try licences.store.tiers().map { tier -> HTML in
            "<option value=\"\(tier.name)\"\(values["tier"] == tier.name ? " selected" : "")>\(tier.name) (\(tier.features.joined(separator: ", ")))</option>"
        }
        let content: HTML = """
            \(error.map { e -> HTML in "<p class=\"error\" role=\"alert\">\(e)</p>" } ?? .empty)
            <form method="post" action="/licences/new" class="stack"><input type="hidden" name="csrf" value="\(request.session?.csrf ?? "")">
            <label for="customer">Customer</label><input id="customer" name="customer" required maxlength="200" value="\(values["customer"] ?? "")">
            <label for="email">Email</label><input id="email" name="email" type="email" required maxlength="254" value="\(values["email"] ?? "")">
            <label for="tier">Tier</label><select id="tier" name="tier">\(tiers)</select>
            <label for="maxServers">Servers</label><input id="maxServers" name="maxServers" type="number" min="1" max="100000" required value="\(values["maxServers"] ?? "1")">
            <label for="expires">Expires (YYYY-MM-DD, empty for never)</label><input id="expires" name="expires" pattern="\\d{4}-\\d{2}-\\d{2}" value="\(values["expires"] ?? "")">
            <p><button type="submit" id="issue">Issue licence</button></p></form>
            """
        return Self.htmlResponse(Pages.layout(title: "Issue a licence", session: request.session, current: "/licences", content), status: error == nil ? 200 : 400)
    }

    /// Shows the key once, in the answer to the POST (never stored in clear, never in a URL).
    func issueLicence(_ request: PageRequest) throws -> HTTPResponse {
        guard let form = request.form else { throw DashboardError.invalidInput("the form is missing") }
        let values = ["customer", "email", "tier", "maxServers", "expires"].reduce(into: [String: String]()) { $0[$1] = form.value($1) ?? "" }
        do {
            guard let servers = Int(values["maxServers"] ?? ""), (1...100_000).contains(servers) else {
                throw DashboardError.invalidInput("servers must be a number from 1 to 100000")
            }
            let expiry = (values["expires"] ?? "").isEmpty ? nil : try LicenceCommands.parseExpiry(values["expires"] ?? "")
            let (licence, key) = try licences.issue(customer: Customer(name: values["customer"] ?? "", email: values["email"] ?? ""),
                                                    tier: values["tier"] ?? "", maxServers: servers, expiresAt: expiry)
            let content: HTML = """
                <p class="notice">Licence <a href="\(href: "/licence", [("id", licence.id)])" class="mono">\(licence.id)</a> is issued. Its key is shown this once: the controller keeps only a hash of its secret part.</p>
                <p class="key" id="licence-key">\(key.text)</p>
                <p>On the hosting server: <code>fleetkeep-agent licence activate \(key.text)</code></p>
                """
            return Self.htmlResponse(Pages.layout(title: "Licence issued", session: request.session, current: "/licences", content))
        } catch let error as LicenceError where error.httpStatus == 400 {
            return try issueForm(request, error: error.description, values: values)
        } catch let error as DashboardError {
            return try issueForm(request, error: error.description, values: values)
        } catch let error as UsageError {
            return try issueForm(request, error: error.message.replacingOccurrences(of: "--expires", with: "Expires"), values: values)
        }
    }

    func confirmRevoke(_ request: PageRequest) throws -> HTTPResponse {
        let licence = try requiredLicence(try request.query("id", longest: 40))
        let servers = try licences.store.activeSeatCount(licenceID: licence.id)
        let content: HTML = """
            <p>Revoking licence <span class="mono">\(licence.id)</span> is final. Its \(servers) bound servers lose the licensed features at their next heartbeat (local backups go on).</p>
            <form method="post" action="/licence/revoke"><input type="hidden" name="csrf" value="\(request.session?.csrf ?? "")"><input type="hidden" name="id" value="\(licence.id)">
            <button type="submit" class="danger" id="confirm">Confirm: revoke</button> <a href="\(href: "/licence", [("id", licence.id)])">Cancel</a></form>
            """
        return Self.htmlResponse(Pages.layout(title: "Revoke licence \(licence.id)?", session: request.session, current: "/licences", content))
    }

    func revokeLicence(_ request: PageRequest) throws -> HTTPResponse {
        let licence = try requiredLicence(request.form?.value("id"))
        _ = try licences.change(licence.id, to: .revoked)
        return Self.redirect(HTML.url("/licence", [("id", licence.id)]))
    }
}
