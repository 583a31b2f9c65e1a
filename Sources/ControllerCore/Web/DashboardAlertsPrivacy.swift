import FleetkeepProtocol
import Foundation
import HTTPServer

/// The alerts page, and the privacy pages: anonymised aggregates for every operator; customers, their export and
/// erasure (with a confirmation), and the audit log for administrators.
extension Dashboard {
    // MARK: Alerts

    /// Firing alerts (optionally of one condition), those resolved in the last 7 days and, for administrators, the
    /// notification channels with their latest deliveries. The alerts are the alert evaluation's own (every 30 s in
    /// `serve`), the ones its channels notify about.
    func alertsPage(_ request: PageRequest) throws -> HTTPResponse {
        let now = clock()
        var condition: AlertCondition?
        if let text = try request.query("condition", longest: 40), !text.isEmpty {
            guard let parsed = AlertCondition(rawValue: text) else {
                throw DashboardError.invalidInput("condition must be one of \(AlertCondition.allCases.map(\.rawValue).joined(separator: ", "))")
            }
            condition = parsed
        }
        let counts = try alerts.firingCounts()
        let shown = 500
        let firing = try alerts.firingAlerts(agentID: nil, limit: condition == nil ? shown : 10_000).filter { condition == nil || $0.condition == condition }
        let resolved = try alerts.resolvedAlerts(since: now - 7 * 86400, limit: 200)
        let filters: [HTML] = [condition == nil ? "<strong>all (\(counts.values.reduce(0, +)))</strong>" : "<a href=\"/alerts\">all (\(counts.values.reduce(0, +)))</a>"]
            + AlertCondition.allCases.map { each -> HTML in
                let label = "\(each.rawValue) (\(counts[each] ?? 0))"
                return each == condition ? "<strong>\(label)</strong>" : "<a href=\"\(href: "/alerts", [("condition", each.rawValue)])\">\(label)</a>"
            }
        let firingShown = Array(firing.prefix(shown))
        var channelSection: HTML = .empty
        if request.session?.isAdmin == true {
            let channelRows = try alerts.channels().map { channel -> [HTML] in
                let latest = try alerts.deliveries(channel: channel.name, limit: 1).first
                let state: HTML
                if let latest {
                    if latest.deliveredAt != nil { state = Pages.badge("delivered", "good") }
                    else if latest.failedAt != nil { state = Pages.badge("given up", "bad") }
                    else { state = Pages.badge("retrying", "warn") }
                } else {
                    state = Pages.badge("nothing sent yet", "neutral")
                }
                return ["\(channel.name)", "\(channel.kind.rawValue)", state,
                        "\(latest.map { DisplayFormat.time($0.createdAt) + " · " + String($0.events.count) + " events · attempt " + String($0.attempts) } ?? "")",
                        "\(latest?.lastError ?? "")"]
            }
            channelSection = """
                <h2>Notification channels</h2>\(Pages.table(id: "channels", headers: ["Channel", "Kind", "Latest delivery", "When", "Last error"], rows: channelRows,
                                                          empty: "No channel is set up: add one with `fleetkeep-controller alert channel add`."))
                """
        }
        let content: HTML = """
            <p class="filters">\(HTML.join(filters, separator: " · "))</p>
            <h2>Firing (\(condition.map { counts[$0] ?? 0 } ?? counts.values.reduce(0, +)))</h2>
            \(Pages.alertTable(firingShown, now: now, id: "firing", empty: "No alert fires."))
            \(firing.count > shown ? "<p class=\"muted\">The \(shown) most recently fired are shown; pick a condition above to narrow the list.</p>" : HTML.empty)
            <h2>Resolved in the last 7 days (\(resolved.count))</h2>
            \(Pages.alertTable(resolved, now: now, id: "resolved", empty: "No alert resolved in the last 7 days."))
            \(channelSection)
            """
        return Self.htmlResponse(Pages.layout(title: "Alerts", session: request.session, current: "/alerts", content))
    }

    // MARK: Privacy

    /// Whom an operator's reads and changes are recorded as, in the privacy audit log.
    func access(_ request: PageRequest, reason: String) -> Access {
        Access(actor: "operator \(request.session?.name ?? "?") (dashboard)", reason: reason)
    }

    /// Aggregates (k from `?k=`, 10 by default, as `report aggregate`); for administrators also the customers with
    /// export and erase, and the newest audit entries (the chain verified on request).
    func privacyPage(_ request: PageRequest) throws -> HTTPResponse {
        var k = 10
        if let text = try request.query("k", longest: 7) {
            guard let value = Int(text), (2...1_000_000).contains(value) else { throw DashboardError.invalidInput("k must be a whole number from 2 to 1000000") }
            k = value
        }
        let report = try privacy.aggregate(k: k)
        let dimensions = report.dimensions.map { dimension -> HTML in
            let rows = dimension.cells.map { cell -> [HTML] in ["\(cell.value)", "\(cell.servers)"] }
                + (dimension.suppressedCells > 0 ? [["<span class=\"muted\">\(dimension.suppressedCells) smaller groups, suppressed</span>", "\(dimension.suppressedServers)"]] : [])
            return "<h3>\(dimension.name)</h3>" + Pages.table(id: "aggregate-\(dimension.name)", headers: ["Value", "Servers"], rows: rows, empty: "No server.")
        }
        var content: HTML = """
            <h2>Fleet aggregates</h2>
            <p>Servers counted by what they run. A group of fewer than \(k) customers is not shown, and more groups are held back until the hidden ones
            together are at least \(k) customers, so no total can be worked back to a small group.
            \(report.totalServers.map { "Total: \($0) servers." } ?? "The fleet has fewer than \(k) customers, so every group is held back.")</p>
            <form method="get" action="/privacy" class="search"><label>Smallest group shown (k) <input name="k" value="\(String(k))" size="6" inputmode="numeric"></label>
            <button type="submit">Show</button></form>
            \(dimensions)
            """
        if request.session?.isAdmin == true {
            let customers = try privacy.store.customerRecords()
            let rows = try customers.map { record -> [HTML] in
                let licences = try privacy.store.licences(customerID: record.id).map(\.id)
                let actions: HTML = record.erasedAt != nil ? "<span class=\"muted\">erased \(DisplayFormat.time(record.erasedAt))</span>" : """
                    <a href="\(href: "/privacy/confirm", [("customer", String(record.id)), ("action", "export")])" id="export-\(String(record.id))">Export…</a>
                    <a href="\(href: "/privacy/confirm", [("customer", String(record.id)), ("action", "erase")])" id="erase-\(String(record.id))">Erase…</a>
                    """
                return ["\(record.id)", "\(DisplayFormat.time(record.createdAt))", "<span class=\"mono\">\(licences.joined(separator: ", "))</span>", actions]
            }
            let verify = try request.query("verify", longest: 1) == "1"
            var chain: HTML = "<a href=\"\(href: "/privacy", [("verify", "1"), ("k", String(k))])\" id=\"verify-audit\">Verify the whole chain</a>"
            if verify {
                let (entries, broken) = try privacy.store.verifyAudit()
                chain = broken.map { "<span class=\"error\" id=\"audit-chain\">Audit chain BROKEN at entry \($0.id): \($0.reason)</span>" }
                    ?? "<span class=\"notice\" id=\"audit-chain\">Audit chain verified: \(entries) entries, none changed or removed.</span>"
            }
            let since = clock() - 30 * 86400
            let entries = try privacy.store.auditEntries(since: since).suffix(200).reversed().map { entry -> [HTML] in
                ["\(entry.id)", "\(DisplayFormat.time(entry.at))", "\(entry.actor)", "\(entry.action)", "\(entry.subject)", "\(entry.reason)"]
            }
            content = content + """
                <h2>Customers</h2>
                <p>An export is everything held about a customer, as JSON; an erasure deletes their personal data, revokes their licences and removes
                their servers. Both are recorded in the audit log.</p>
                \(Pages.table(id: "customers", headers: ["Customer", "Since", "Licences", ""], rows: rows, empty: "No customer yet."))
                <h2>Audit log: reads and changes of personal data, last 30 days</h2>
                <p>\(chain)</p>
                \(Pages.table(id: "audit", headers: ["#", "When", "Who", "Action", "Subject", "Why"], rows: Array(entries), empty: "No entry in the last 30 days."))
                """
        }
        return Self.htmlResponse(Pages.layout(title: "Privacy", session: request.session, current: "/privacy", content))
    }

    enum PrivacyAction: String { case export, erase }

    func customerID(_ text: String?) throws -> Int64 {
        guard let text, text.utf8.count <= 19, let id = Int64(text), id > 0 else { throw DashboardError.invalidInput("customer must be a customer number") }
        return id
    }

    /// Names the customer (a read of personal data, recorded first) and asks to confirm; an erasure also asks for
    /// the customer number to be typed.
    func confirmPrivacyAction(_ request: PageRequest) throws -> HTTPResponse {
        let id = try customerID(try request.query("customer", longest: 19))
        guard let action = try request.query("action", longest: 10).flatMap(PrivacyAction.init) else {
            throw DashboardError.invalidInput("action must be export or erase")
        }
        guard let record = try privacy.store.customerRecord(id) else { throw PrivacyError.notFound("customer \(id)") }
        guard record.erasedAt == nil else { throw PrivacyError.erased(customerID: id) }
        try privacy.audit(access(request, reason: "privacy page: confirm \(action.rawValue) (customer name and email shown)"), action: "read", subject: "customer \(id)")
        let who: HTML = record.customer.map { "<strong>\($0.name)</strong> &lt;\($0.email)&gt;" } ?? "(no contact details held)"
        let licences = try privacy.store.licences(customerID: id).map(\.id).joined(separator: ", ")
        let csrf = request.session?.csrf ?? ""
        let content: HTML
        switch action {
        case .export:
            content = """
                <p>Export everything held about customer \(id), \(who) (licences \(licences)), as a JSON file. The export is recorded in the audit log.</p>
                <form method="post" action="/privacy/export"><input type="hidden" name="csrf" value="\(csrf)"><input type="hidden" name="customer" value="\(String(id))">
                <button type="submit" id="confirm">Confirm: download the export</button> <a href="/privacy">Cancel</a></form>
                """
        case .erase:
            content = """
                <p>Erase customer \(id), \(who): their name and email are deleted, their licences (\(licences)) revoked and their servers removed.
                This cannot be undone; the erasure ledger keeps it erased even after the database is restored from an older copy.</p>
                <form method="post" action="/privacy/erase" class="stack"><input type="hidden" name="csrf" value="\(csrf)"><input type="hidden" name="customer" value="\(String(id))">
                <label for="confirmation">Type the customer number, \(id), to confirm</label><input id="confirmation" name="confirmation" required autocomplete="off" inputmode="numeric">
                <p><button type="submit" id="confirm" class="danger">Erase customer \(id)</button> <a href="/privacy">Cancel</a></p></form>
                """
        }
        return Self.htmlResponse(Pages.layout(title: action == .export ? "Confirm: export" : "Confirm: erase", session: request.session, content))
    }

    /// The customer's export as a JSON download (the service records it in the audit log before reading).
    func exportCustomer(_ request: PageRequest) throws -> HTTPResponse {
        let id = try customerID(request.form?.value("customer"))
        let export = try privacy.export(customerID: id, access: access(request, reason: "dashboard: customer export (data subject request)"))
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
        var headers = Self.securityHeaders
        headers["Content-Type"] = "application/json; charset=utf-8"
        headers["Content-Disposition"] = "attachment; filename=\"fleetkeep-customer-\(id)-export.json\""
        return HTTPResponse(status: 200, headers: headers, body: Array(try encoder.encode(export)) + [UInt8(ascii: "\n")])
    }

    func eraseCustomer(_ request: PageRequest) throws -> HTTPResponse {
        let id = try customerID(request.form?.value("customer"))
        guard request.form?.value("confirmation")?.trimmingCharacters(in: .whitespaces) == String(id) else {
            throw DashboardError.invalidInput("to erase customer \(id), type its number, \(id), in the confirmation box; nothing was erased")
        }
        try privacy.erase(customerID: id, access: access(request, reason: "dashboard: erasure (data subject request)"))
        return Self.htmlResponse(Pages.layout(title: "Customer erased", session: request.session, """
            <p class="notice" id="erased">Customer \(id) erased: personal data deleted, licences revoked, servers removed.</p>
            <p><a href="/privacy">Back to privacy</a></p>
            """))
    }
}
