import CommandLineSupport
import FleetkeepProtocol
import Foundation
import HTTPServer
import Scheduling

/// The pages. Each handler reads through the stores and services, and renders with `Pages`.
extension Dashboard {
    // MARK: Overview

    func overview(_ request: PageRequest) throws -> HTTPResponse {
        var query = AgentTableQuery()
        query.search = try request.query("q", longest: 100)?.trimmingCharacters(in: .whitespaces) ?? ""
        if let sort = try request.query("sort", longest: 20) {
            guard let parsed = AgentSort(rawValue: sort) else { throw DashboardError.invalidInput("sort must be one of \(AgentSort.allCases.map(\.rawValue).joined(separator: ", "))") }
            query.sort = parsed
        }
        query.descending = try request.query("dir", longest: 4) == "desc"
        if let page = try request.query("page", longest: 7) {
            guard let number = Int(page), (1...1_000_000).contains(number) else { throw DashboardError.invalidInput("page must be a number from 1 to 1000000") }
            query.page = number
        }
        let thresholds = self.thresholds
        let now = thresholds.now
        let summary = try fleet.summary(thresholds)
        let table = try fleet.agentTable(query, thresholds)
        let licenceStates = try fleet.licenceStates(now: now)
        let firingCounts = try alerts.firingCounts()
        let firing = try alerts.firingAlerts(agentID: nil, limit: 10)
        let days = SVGChart.days(endingAt: now, count: 30)
        let outcomes = Dictionary(try dailyOutcomes(now: now).map { ($0.day, $0) }, uniquingKeysWith: { first, _ in first })
        let rate = SVGChart.bars(title: "Fleet: daily backup success rate, last 30 days", bars: days.map { day in
            ChartBar(label: day.label, value: outcomes[day.day].flatMap { $0.finished > 0 ? 100 * Double($0.succeeded) / Double($0.finished) : nil })
        }, fixedMaximum: 100, format: DisplayFormat.percent)

        func count(_ value: Int?, _ label: String, _ kind: String) -> HTML {
            "<div><span class=\"number \(kind)\">\(value ?? 0)</span> \(label)</div>"
        }
        let cards: HTML = """
            <section class="cards">
            <div class="card" id="agents-card"><h2>Agents</h2>\(count(summary.liveness[.online], "online", "good"))\(count(summary.liveness[.stale], "stale", "bad"))</div>
            <div class="card" id="backups-card"><h2>Backups</h2>\(count(summary.backups[.ok], "OK", "good"))\(count(summary.backups[.overdue], "overdue", "warn"))\(count(summary.backups[.failed], "failed", "bad"))\(count(summary.backups[.pending], "pending (new)", "neutral"))</div>
            <div class="card" id="licences-card"><h2>Licences</h2>\(["valid", "expired", "suspended", "revoked"].map { count(licenceStates[$0], $0, $0 == "valid" ? "good" : "warn") })</div>
            <div class="card" id="alerts-card"><h2><a href="/alerts">Alerts firing</a></h2>\(AlertCondition.allCases.map { count(firingCounts[$0], $0.rawValue, (firingCounts[$0] ?? 0) > 0 ? "bad" : "good") })</div>
            </section>
            """
        let alertTable = Pages.alertTable(firing, now: now, id: "alerts", empty: "No alert fires.")

        // Sortable headers: a link per column, toggling the direction of the current one.
        func header(_ title: String, _ sort: AgentSort) -> HTML {
            let descending = query.sort == sort ? !query.descending : false
            let arrow = query.sort == sort ? (query.descending ? " ▼" : " ▲") : ""
            var parameters = [("sort", sort.rawValue), ("dir", descending ? "desc" : "asc")]
            if !query.search.isEmpty { parameters.append(("q", query.search)) }
            return "<a href=\"\(href: "/", parameters)\">\(title)\(arrow)</a>"
        }
        let rows = table.rows.map { row -> [HTML] in
            ["<a href=\"\(href: "/agent", [("id", row.agentID)])\">\(row.hostname)</a><div class=\"muted mono\">\(row.agentID)</div>",
             "\(row.os)", "\(row.panel)", "\(row.agentVersion)", "\(DisplayFormat.age(row.lastSeen, now: now))", Pages.liveness(row.liveness),
             "\(Pages.backup(row.backup)) <span class=\"muted\">\(row.lastBackupAt.map { "last OK " + DisplayFormat.age($0, now: now) } ?? "")</span>",
             "\(row.licence ?? "-")"]
        }
        let pages = max(1, (table.matching + query.pageSize - 1) / query.pageSize)
        func pageLink(_ number: Int, _ title: String) -> HTML {
            var parameters = [("page", String(number)), ("sort", query.sort.rawValue), ("dir", query.descending ? "desc" : "asc")]
            if !query.search.isEmpty { parameters.append(("q", query.search)) }
            return "<a href=\"\(href: "/", parameters)\">\(title)</a>"
        }
        var pager: [HTML] = ["<span>\(table.matching) agents\(query.search.isEmpty ? "" : " matching") · page \(query.page) of \(pages)</span>"]
        if query.page > 1 { pager.append(pageLink(1, "« first")); pager.append(pageLink(query.page - 1, "‹ previous")) }
        if query.page < pages { pager.append(pageLink(query.page + 1, "next ›")); pager.append(pageLink(pages, "last »")) }

        let content: HTML = """
            \(cards)
            <h2>Alerts</h2>\(alertTable)
            <p><a href="/alerts">All alerts, resolved ones and notifications →</a></p>
            \(rate)
            <h2>Agents</h2>
            <form method="get" action="/" class="search"><input type="search" name="q" value="\(query.search)" placeholder="host name or agent id" aria-label="Search agents">
            <input type="hidden" name="sort" value="\(query.sort.rawValue)"><input type="hidden" name="dir" value="\(query.descending ? "desc" : "asc")">
            <button type="submit">Search</button></form>
            \(Pages.table(id: "agents", headers: [header("Host", .host), header("OS", .os), "Panel", header("Agent", .version), header("Last seen", .seen),
                                                   header("Status", .status), header("Backups", .backup), "Licence"], rows: rows,
                          empty: query.search.isEmpty ? "No agent is enrolled yet: create a token with `fleetkeep-controller token create`." : "No agent matches."))
            <p class="pager">\(pager)</p>
            """
        return Self.htmlResponse(Pages.layout(title: "Fleet overview", session: request.session, current: "/", content))
    }

    // MARK: Agent

    func requiredAgent(_ request: PageRequest, field: String? = nil) throws -> AgentRecord {
        let id = try field.map { try request.form?.required($0, label: "agent") ?? "" } ?? request.query("id", longest: 80) ?? ""
        guard !id.isEmpty, id.utf8.count <= 80, let agent = try fleet.agent(id), !agent.removed else {
            throw DashboardError.notFound("no enrolled agent '\(id.prefix(80))'")
        }
        return agent
    }

    func agentPage(_ request: PageRequest) throws -> HTTPResponse {
        let agent = try requiredAgent(request)
        let session = request.session
        let isAdmin = session?.isAdmin == true
        let thresholds = self.thresholds
        let now = thresholds.now
        let row = try fleet.agentRow(agent.agentID, thresholds)
        let seat = try licences.store.activeSeat(agentID: agent.agentID)
        let licence = try seat.flatMap { try licences.store.licence(id: $0.licenceID) }
        // Personal data (the customer, the server's address) only for administrators, and only once the read is
        // on record.
        var customer: Customer?
        if isAdmin {
            let subject = "agent \(agent.agentID)" + (licence.map { ", customer \($0.customerID)" } ?? "")
            try audit.recordRead(actor: "operator \(session?.name ?? "?") (dashboard)", action: "read", subject: subject,
                                 reason: "agent page: customer name and email, server address")
            if let licence { customer = try licences.customers.customer(licence.customerID) }
        }
        let hiddenFacts: Set<String> = isAdmin ? [] : DashboardPrivacy.personalFacts
        let facts = agent.facts.sorted { $0.key < $1.key }.filter { !hiddenFacts.contains($0.key) }.map { fact -> [HTML] in ["\(fact.key)", "<span class=\"mono\">\(fact.value)</span>"] }
        let problems = agent.problems.sorted { $0.key < $1.key }.map { problem -> [HTML] in ["\(problem.key)", "\(problem.value)"] }

        var licenceRows: [[HTML]] = []
        if let seat, let licence {
            licenceRows.append(["Licence", isAdmin ? "<a href=\"\(href: "/licence", [("id", licence.id)])\">\(licence.id)</a>" : "\(licence.id)"])
            licenceRows.append(["Status", "\(licence.effectiveStatus(now: now))"])
            licenceRows.append(["Tier", "\(licence.tier)"])
            licenceRows.append(["Lease expires", "\(DisplayFormat.time(seat.leaseExpiresAt))"])
            if let customer { licenceRows.append(["Customer", "\(customer.name) &lt;\(customer.email)&gt;"]) }
        }
        let coverageRows = try coverage.coverage(agentID: agent.agentID).map { entry -> [HTML] in
            let fresh = (entry.lastSuccessAt ?? entry.since) >= thresholds.backupFreshSince
            let state: HTML = entry.lastSuccessAt == nil && fresh ? Pages.badge("not yet run", "neutral") : fresh ? Pages.badge("ok", "good") : Pages.badge("overdue", "warn")
            return ["\(entry.account == "*" ? "all accounts" : entry.account)", "\(entry.kind)", state,
                    "\(entry.lastSuccessAt.map { DisplayFormat.time($0) + " (" + DisplayFormat.age($0, now: now) + ")" } ?? "never")",
                    "\(entry.lastFailureAt.map { DisplayFormat.age($0, now: now) + ": " + (entry.lastError ?? "failed") } ?? "-")"]
        }
        let agentAlerts = try alerts.firingAlerts(agentID: agent.agentID, limit: 50)
        let agentJobs = try jobs.jobs(agentID: agent.agentID, states: nil, limit: 20)

        // Charts over the last 30 days: per day the repository's size after its last backup, the longest backup, and
        // the data added.
        let days = SVGChart.days(endingAt: now, count: 30)
        var durations: [Int64: Int64] = [:], added: [Int64: Int64] = [:], sizes: [Int64: Int64] = [:]
        for point in try fleet.backupHistory(agentID: agent.agentID, since: days[0].day * 86400) {
            let day = point.finishedAt / 86400
            durations[day] = max(durations[day] ?? 0, point.durationSeconds)
            added[day] = (added[day] ?? 0).addingReportingOverflow(point.bytesAdded).partialValue
            if let size = point.repositoryBytes { sizes[day] = size }
        }
        let sizeChart = SVGChart.bars(title: "Repository size on disk (after the day's last backup), last 30 days",
                                      bars: days.map { ChartBar(label: $0.label, value: sizes[$0.day].map(Double.init)) }, format: DisplayFormat.bytes)
        let durationChart = SVGChart.bars(title: "Backup duration (longest per day), last 30 days",
                                          bars: days.map { ChartBar(label: $0.label, value: durations[$0.day].map(Double.init)) }, format: DisplayFormat.duration)
        let addedChart = SVGChart.bars(title: "Data added to the repository per day, last 30 days",
                                       bars: days.map { ChartBar(label: $0.label, value: added[$0.day].map(Double.init)) }, format: DisplayFormat.bytes)

        var actions: HTML = .empty
        if isAdmin {
            func button(_ action: AgentAction) -> HTML {
                """
                <form method="get" action="/agent/confirm"><input type="hidden" name="id" value="\(agent.agentID)"><input type="hidden" name="action" value="\(action.rawValue)">
                <button type="submit" id="action-\(action.rawValue)">\(action.title)</button></form>
                """
            }
            let snapshots = try fleet.knownSnapshots(agentID: agent.agentID, limit: 30)
            let options = snapshots.map { snapshot -> HTML in
                let holds = [snapshot.account, snapshot.kind].compactMap { $0 }.joined(separator: " ")
                return "<option value=\"\(snapshot.id)\">\(snapshot.id.prefix(12)) · \(DisplayFormat.time(snapshot.at))\(holds.isEmpty ? "" : " · " + holds)</option>"
            }
            actions = """
                <h2>Actions</h2><div class="actions">\(button(.backup))\(button(.offsitePush))\(button(.verify))
                <form method="get" action="/agent/confirm"><input type="hidden" name="id" value="\(agent.agentID)"><input type="hidden" name="action" value="restore">
                <label>Account <input name="account" required maxlength="64" pattern="[A-Za-z0-9._\\-]+"></label>
                <label>Snapshot <select name="snapshot"><option value="latest">latest</option>\(options)</select></label>
                <button type="submit" id="action-restore">Restore…</button></form></div>
                """
        }
        let title = agent.hostname.isEmpty ? agent.agentID : agent.hostname
        let content: HTML = """
            <p><span class="mono">\(agent.agentID)</span> · \(row.map { Pages.liveness($0.liveness) } ?? .empty) · last seen \(DisplayFormat.age(agent.lastSeen, now: now)) · enrolled \(DisplayFormat.time(agent.enrolledAt))</p>
            \(actions)
            <h2>Jobs</h2>\(Pages.jobTable(agentJobs, hostnames: [:], now: now, showAgent: false, empty: "No job has run on this agent yet."))
            <h2>Backups by account and kind</h2>\(Pages.table(id: "coverage", headers: ["Account", "Kind", "State", "Last success", "Last failure"], rows: coverageRows, empty: "No backup has been reported yet."))
            <h2>Alerts</h2>\(Pages.alertTable(agentAlerts, now: now, id: "agent-alerts", linkAgents: false, empty: "No alert fires for this agent."))
            <h2>Licence</h2>\(Pages.table(id: "licence", headers: ["", ""], rows: licenceRows, empty: "No licence is activated on this server."))
            <h2>Charts</h2>\(sizeChart)\(durationChart)\(addedChart)
            <h2>Facts</h2>\(Pages.table(id: "facts", headers: ["Fact", "Value"], rows: facts, empty: "No facts reported."))
            \(problems.isEmpty ? .empty : "<h2>Facts the agent could not read</h2>" + Pages.table(headers: ["Fact", "Why"], rows: problems, empty: ""))
            """
        return Self.htmlResponse(Pages.layout(title: title, session: session, content))
    }

    // MARK: Agent actions (admin)

    enum AgentAction: String, CaseIterable {
        case backup, offsitePush = "offsite-push", verify, restore

        var title: String {
            switch self {
            case .backup: "Back up now"
            case .offsitePush: "Push off-site"
            case .verify: "Verify"
            case .restore: "Restore"
            }
        }
        var kind: JobKind {
            switch self {
            case .backup: .backup
            case .offsitePush: .offsitePush
            case .verify: .verify
            case .restore: .restore
            }
        }
    }

    /// The action, account and snapshot of a request, checked as `job run` checks its options; a snapshot the
    /// controller knows to hold another account is refused (the agent would find nothing of the account in it).
    func actionRequest(agentID: String, action: String?, account: String?, snapshot: String?) throws -> (AgentAction, String?, String?) {
        guard let action = action.flatMap(AgentAction.init) else {
            throw DashboardError.invalidInput("action must be one of \(AgentAction.allCases.map(\.rawValue).joined(separator: ", "))")
        }
        let checked: (AgentAction, String?, String?)
        do {
            guard action == .restore else { return (action, nil, nil) }
            guard let account, !account.isEmpty else { throw DashboardError.invalidInput("a restore needs the account to restore") }
            checked = (action, try OnDemandJob.account(account), try OnDemandJob.snapshot(snapshot ?? "latest"))
        } catch let invalid as OnDemandJob.Invalid {
            throw DashboardError.invalidInput(invalid.description)
        }
        if let id = checked.2, id != "latest", let known = try fleet.snapshot(agentID: agentID, id: id), let holds = known.account, holds != checked.1 {
            throw DashboardError.invalidInput("snapshot \(id.prefix(12)) holds account \(holds), not \(checked.1 ?? ""); choose one of the account's snapshots or latest")
        }
        return checked
    }

    func confirmAction(_ request: PageRequest) throws -> HTTPResponse {
        let agent = try requiredAgent(request)
        let (action, account, snapshot) = try actionRequest(agentID: agent.agentID, action: try request.query("action", longest: 20),
                                                            account: try request.query("account", longest: 80),
                                                            snapshot: try request.query("snapshot", longest: 140))
        let what: HTML
        switch action {
        case .restore:
            what = "restore account <strong>\(account ?? "")</strong> from snapshot <span class=\"mono\">\(snapshot ?? "latest")</span> into its place on <strong>\(agent.hostname)</strong>. Files restored over the account's current ones replace them."
        case .backup: what = "back up every account of <strong>\(agent.hostname)</strong> now."
        case .offsitePush: what = "push the latest snapshots of <strong>\(agent.hostname)</strong> to its off-site repository now."
        case .verify: what = "verify the repository of <strong>\(agent.hostname)</strong>, reading all of its data."
        }
        let content: HTML = """
            <p>You are about to \(what)</p>
            <form method="post" action="/agent/action"><input type="hidden" name="csrf" value="\(request.session?.csrf ?? "")">
            <input type="hidden" name="id" value="\(agent.agentID)"><input type="hidden" name="action" value="\(action.rawValue)">
            \(account.map { a -> HTML in "<input type=\"hidden\" name=\"account\" value=\"\(a)\">" } ?? .empty)
            \(action == .restore ? "<input type=\"hidden\" name=\"snapshot\" value=\"\(snapshot ?? "latest")\">" : .empty)
            <button type="submit" id="confirm" class="\(action == .restore ? "danger" : "")">Confirm: \(action.title)</button>
            <a href="\(href: "/agent", [("id", agent.agentID)])">Cancel</a></form>
            """
        return Self.htmlResponse(Pages.layout(title: "Confirm: \(action.title)", session: request.session, content))
    }

    func startAction(_ request: PageRequest) throws -> HTTPResponse {
        guard let form = request.form else { throw DashboardError.invalidInput("the form is missing") }
        let agent = try requiredAgent(request, field: "id")
        let (action, account, snapshot) = try actionRequest(agentID: agent.agentID, action: form.value("action"), account: form.value("account"),
                                                            snapshot: form.value("snapshot"))
        let policy = try schedules.effectivePolicy(agentID: agent.agentID)
        let parameters: JobParameters
        do {
            parameters = try OnDemandJob.parameters(kind: action.kind, account: account, snapshot: snapshot, kinds: [], policy: policy)
        } catch let invalid as OnDemandJob.Invalid {
            throw DashboardError.invalidInput(invalid.description)
        }
        let defaults = JobDefaults()
        let now = clock()
        let draft = JobDraft(agentID: agent.agentID, kind: action.kind, parameters: parameters, origin: .operator_, maxAttempts: defaults.maxAttempts,
                             retryBaseSeconds: defaults.retryBaseSeconds, timeoutSeconds: defaults.timeout(for: action.kind), notBefore: now)
        guard try jobs.enqueue(draft, now: now) != nil else { throw DashboardError.conflict("the job was not queued") }
        return Self.redirect(HTML.url("/agent", [("id", agent.agentID)]))
    }

    // MARK: Jobs

    func jobsPage(_ request: PageRequest) throws -> HTTPResponse {
        let now = clock()
        let queued = try jobs.jobs(agentID: nil, states: [.queued], limit: 200)
        let running = try jobs.jobs(agentID: nil, states: [.dispatched, .running], limit: 500)
        let history = try jobs.jobs(agentID: nil, states: [.succeeded, .failed, .cancelled, .expired], limit: 100)
        var hostnames: [String: String] = [:]
        for id in Set((queued + running + history).map(\.agentID)) { hostnames[id] = try fleet.agent(id)?.hostname }
        let content: HTML = """
            <h2>Running (\(running.count))</h2>\(Pages.jobTable(running, hostnames: hostnames, now: now, showAgent: true, empty: "No job runs now."))
            <h2>Queued (\(queued.count))</h2>\(Pages.jobTable(queued, hostnames: hostnames, now: now, showAgent: true, empty: "No job waits."))
            <h2>History (latest \(history.count))</h2>\(Pages.jobTable(history, hostnames: hostnames, now: now, showAgent: true, empty: "No job has finished yet."))
            """
        return Self.htmlResponse(Pages.layout(title: "Jobs", session: request.session, current: "/jobs", content))
    }

    /// `GET /jobs/live?ids=1,2,3`: the state and progress of up to 50 jobs, for the page script.
    func liveJobs(_ request: HTTPRequest, _ session: OperatorSession) throws -> HTTPResponse {
        let text = request.query["ids"] ?? ""
        guard text.utf8.count <= 50 * 20 else { throw DashboardError.invalidInput("ids lists at most 50 job numbers") }
        let ids = try text.split(separator: ",").prefix(51).map { part -> Int64 in
            guard part.utf8.count <= 19, let id = Int64(part), id > 0 else { throw DashboardError.invalidInput("ids must be job numbers separated by commas") }
            return id
        }
        guard ids.count <= 50 else { throw DashboardError.invalidInput("ids lists at most 50 job numbers") }
        struct Live: Encodable {
            let id: Int64, state: String, percent: Double?, files: Int64, bytes: Int64, bytesText: String, finished: Bool, result: String?, error: String?
        }
        let answer = try ids.compactMap { id -> Live? in
            guard let job = try jobs.job(id) else { return nil }
            let progress = job.progress
            return Live(id: job.id, state: job.state.rawValue, percent: progress?.percent.flatMap { $0.isFinite ? $0 : nil },
                        files: progress?.files ?? 0, bytes: progress?.bytes ?? 0, bytesText: DisplayFormat.bytes(Double(progress?.bytes ?? 0)),
                        finished: job.state.isFinished, result: job.state == .succeeded ? Pages.resultText(job) : nil,
                        error: job.state.isFinished && job.state != .succeeded ? Pages.resultText(job) : nil)
        }
        return .json(answer)
    }
}

/// Which stored facts are personal data (the data inventory marks them): hidden from viewers.
enum DashboardPrivacy {
    static let personalFacts: Set<String> = Set(DataInventory.facts.filter { $0.personal && $0.name != "hostname" }.map(\.name))
}
