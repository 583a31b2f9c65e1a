import Foundation

/// The page frame and the pieces every page shares. Everything goes through `HTML`, so values are escaped.
enum Pages {
    static func layout(title: String, session: OperatorSession?, current: String = "", _ content: HTML) -> HTML {
        var navigation: HTML = .empty
        if let session {
            var links: [HTML] = [link("Overview", "/", current), link("Jobs", "/jobs", current), link("Alerts", "/alerts", current),
                                 link("Privacy", "/privacy", current)]
            if session.isAdmin { links.append(link("Licences", "/licences", current)) }
            navigation = """
                <nav>\(links)<span class="who">\(session.name) (\(session.role.rawValue))</span>
                <form method="post" action="/logout" class="inline"><input type="hidden" name="csrf" value="\(session.csrf)"><button type="submit" id="logout">Sign out</button></form></nav>
                """
        }
        return """
            <!DOCTYPE html>
            <html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
            <title>\(title) · Fleetkeep</title><link rel="stylesheet" href="/static/app.css"><script src="/static/app.js" defer></script></head>
            <body><header><a class="brand" href="/">Fleetkeep</a>\(navigation)</header>
            <main><h1>\(title)</h1>
            \(content)
            </main></body></html>
            """
    }

    static func link(_ title: String, _ path: String, _ current: String) -> HTML {
        path == current ? "<a href=\"\(href: path)\" aria-current=\"page\">\(title)</a>" : "<a href=\"\(href: path)\">\(title)</a>"
    }

    static func error(status: Int, message: String, session: OperatorSession?) -> HTML {
        let titles = [400: "Bad request", 401: "Not signed in", 403: "Not allowed", 404: "Not found", 409: "Conflict", 429: "Too many attempts"]
        return layout(title: titles[status] ?? "Error", session: session, """
            <p class="error" role="alert">\(message)</p>
            <p><a href="/">Back to the overview</a></p>
            """)
    }

    /// A table; `cells` are already HTML.
    static func table(id: String? = nil, headers: [HTML], rows: [[HTML]], empty: String) -> HTML {
        guard !rows.isEmpty else { return "<p class=\"empty\">\(empty)</p>" }
        let head = headers.map { cell -> HTML in "<th>\(cell)</th>" }
        let body = rows.map { row -> HTML in "<tr>\(row.map { cell -> HTML in "<td>\(cell)</td>" })</tr>" }
        let identifier: HTML = id.map { "id=\"\($0)\"" } ?? .empty
        return "<table \(identifier)><thead><tr>\(head)</tr></thead><tbody>\(body)</tbody></table>"
    }

    /// Alerts: condition, what (linked to its agent), since when it holds, when it fired, and when it resolved.
    static func alertTable(_ alerts: [AlertRecord], now: Int64, id: String, linkAgents: Bool = true, empty: String) -> HTML {
        let resolvedColumn = alerts.contains { !$0.firing }
        let rows = alerts.map { alert -> [HTML] in
            let what: HTML = linkAgents ? "<a href=\"\(href: "/agent", [("id", alert.agentID)])\">\(alert.subject)</a>" : "\(alert.subject)"
            var row: [HTML] = [badge(alert.condition.rawValue, alert.firing ? "bad" : "neutral"), "\(what)<div class=\"muted\">\(alert.detail)</div>",
                               "\(DisplayFormat.age(alert.since, now: now))", "\(DisplayFormat.time(alert.firedAt))"]
            if resolvedColumn { row.append("\(alert.resolvedAt.map { DisplayFormat.time($0) } ?? "")") }
            return row
        }
        return table(id: id, headers: ["Condition", "Alert", "Holds since", "Fired"] + (resolvedColumn ? ["Resolved"] : []), rows: rows, empty: empty)
    }

    static func badge(_ text: String, _ kind: String) -> HTML { "<span class=\"badge \(kind)\">\(text)</span>" }

    static func liveness(_ state: AgentLiveness) -> HTML { badge(state.rawValue, state == .online ? "good" : "bad") }

    static func backup(_ state: BackupHealth) -> HTML {
        badge(state.rawValue, [.ok: "good", .pending: "neutral", .overdue: "warn", .failed: "bad"][state] ?? "neutral")
    }

    static func jobState(_ state: JobState) -> HTML {
        let kind: String
        switch state {
        case .succeeded: kind = "good"
        case .failed, .expired: kind = "bad"
        case .cancelled: kind = "neutral"
        case .queued, .dispatched, .running: kind = "busy"
        }
        return "<span class=\"badge state \(kind)\">\(state.rawValue)</span>"
    }

    /// A job's progress: a bar that the page's script keeps current while the job is open.
    static func progress(_ job: JobRecord) -> HTML {
        if job.state == .succeeded { return "<progress max=\"100\" value=\"100\"></progress> <span class=\"detail\">\(resultText(job))</span>" }
        if job.state.isFinished { return "<progress max=\"100\" value=\"0\"></progress> <span class=\"detail\">\(resultText(job))</span>" }
        let detail = job.progress.map { "\($0.files) files, \(DisplayFormat.bytes(Double($0.bytes)))" } ?? (job.state == .queued ? "waiting" : "starting")
        if let percent = job.progress?.percent, percent.isFinite, (0...100).contains(percent) {
            return "<progress max=\"100\" value=\"\(Int(percent))\"></progress> <span class=\"detail\">\(detail)</span>"
        }
        return "<progress max=\"100\"></progress> <span class=\"detail\">\(detail)</span>"
    }

    static func resultText(_ job: JobRecord) -> String {
        guard let outcome = job.outcome else { return job.state == .expired ? "no result within its timeout" : "" }
        if let error = outcome.error { return error }
        return "\(outcome.files) files, \(DisplayFormat.bytes(Double(outcome.bytesAdded))) added in \(DisplayFormat.duration(Double(outcome.durationSeconds)))"
    }

    /// A table row for a job, with the attributes the live-progress script looks for.
    static func jobRow(_ job: JobRecord, hostname: String?, now: Int64, showAgent: Bool) -> HTML {
        let done: HTML = job.state.isFinished ? " data-done=\"1\"" : .empty
        let agent: HTML = showAgent ? "<td><a href=\"\(href: "/agent", [("id", job.agentID)])\">\(hostname ?? job.agentID)</a></td>" : .empty
        return """
            <tr data-job="\(job.id)"\(done)><td>\(job.id)</td>\(agent)<td>\(job.kind.rawValue)\(job.parameters.account.map { " · \($0)" } ?? "")</td>
            <td>\(jobState(job.state))</td><td class="progress">\(progress(job))</td>
            <td>\(DisplayFormat.age(job.queuedAt, now: now))</td><td>\(job.origin) · attempt \(job.attempt)/\(job.maxAttempts)</td></tr>
            """
    }

    static func jobTable(_ jobs: [JobRecord], hostnames: [String: String], now: Int64, showAgent: Bool, empty: String) -> HTML {
        guard !jobs.isEmpty else { return "<p class=\"empty\">\(empty)</p>" }
        let agent: HTML = showAgent ? "<th>Agent</th>" : .empty
        return """
            <table class="jobs"><thead><tr><th>Job</th>\(agent)<th>Kind</th><th>State</th><th>Progress / result</th><th>Queued</th><th>Origin</th></tr></thead>
            <tbody>\(jobs.map { jobRow($0, hostname: hostnames[$0.agentID], now: now, showAgent: showAgent) })</tbody></table>
            """
    }
}

/// The stylesheet and the one script, served from the controller itself.
enum DashboardAssets {
    static let css = """
        :root { --fg: #1d2330; --muted: #5b6475; --line: #d8dde6; --bg: #f6f7f9; --good: #1f7a3d; --bad: #b42318; --warn: #b54708; --busy: #175cd3; }
        * { box-sizing: border-box; }
        body { margin: 0; font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; color: var(--fg); background: var(--bg); }
        header { display: flex; align-items: center; gap: 1.5em; padding: .6em 1.5em; background: #101828; color: #fff; }
        header a { color: #d0d5dd; text-decoration: none; margin-right: 1em; }
        header a[aria-current] { color: #fff; font-weight: 600; }
        header .brand { color: #fff; font-weight: 700; }
        nav { display: flex; align-items: center; flex: 1; }
        nav .who { margin-left: auto; margin-right: 1em; color: #d0d5dd; }
        main { padding: 1em 1.5em 3em; max-width: 1400px; }
        h1 { font-size: 1.4em; margin: .4em 0 .8em; }
        h2 { font-size: 1.1em; margin: 1.6em 0 .6em; }
        table { border-collapse: collapse; width: 100%; background: #fff; border: 1px solid var(--line); }
        th, td { text-align: left; padding: .35em .6em; border-bottom: 1px solid var(--line); vertical-align: top; }
        th a { color: inherit; }
        .cards { display: flex; flex-wrap: wrap; gap: 1em; }
        .card { background: #fff; border: 1px solid var(--line); padding: .8em 1em; min-width: 210px; }
        .card h2 { margin: 0 0 .4em; font-size: 1em; color: var(--muted); }
        .card .number { font-size: 1.5em; font-weight: 600; margin-right: .2em; }
        .badge { display: inline-block; padding: 0 .5em; border-radius: 1em; font-size: .85em; border: 1px solid currentColor; }
        .good { color: var(--good); } .bad { color: var(--bad); } .warn { color: var(--warn); } .busy { color: var(--busy); } .neutral { color: var(--muted); }
        .error { color: var(--bad); font-weight: 600; }
        .notice { color: var(--good); font-weight: 600; }
        .empty, .detail, .muted { color: var(--muted); }
        form.inline { display: inline; }
        form.stack label { display: block; margin: .6em 0 .2em; }
        input, select, button { font: inherit; padding: .3em .5em; }
        button { cursor: pointer; }
        button.danger { color: #fff; background: var(--bad); border: 1px solid var(--bad); }
        .actions form { display: inline-block; margin: 0 .6em .6em 0; }
        .pager a, .pager span { margin-right: .8em; }
        .key { font: 1.3em ui-monospace, monospace; background: #fff; border: 1px solid var(--line); padding: .4em .8em; display: inline-block; }
        code, .mono { font-family: ui-monospace, SFMono-Regular, Menlo, monospace; font-size: .92em; }
        progress { width: 8em; vertical-align: middle; }
        figure.chart { background: #fff; border: 1px solid var(--line); margin: 0 1em 1em 0; padding: .5em; display: inline-block; }
        figure.chart figcaption { color: var(--muted); margin-bottom: .3em; }
        svg .bar { fill: #2e90fa; } svg .gap { fill: #d0d5dd; } svg .axis { stroke: #98a2b3; stroke-width: 1; }
        svg .label { fill: #475467; font-size: 11px; }
        """

    /// Keeps the progress of open jobs current: asks /jobs/live every 1.5 s for the rows not yet finished and
    /// writes the answers as text (never as markup).
    static let script = """
        "use strict";
        (function () {
          function openRows() { return Array.prototype.filter.call(document.querySelectorAll("tr[data-job]"), function (row) { return !row.dataset.done; }); }
          function describe(job) {
            if (job.error) { return job.error; }
            if (job.state === "succeeded") { return job.result || ""; }
            if (job.state === "queued") { return "waiting"; }
            return job.files + " files, " + job.bytesText;
          }
          function update(job) {
            var row = document.querySelector('tr[data-job="' + String(Number(job.id)) + '"]');
            if (!row) { return; }
            var state = row.querySelector(".state");
            if (state) {
              state.textContent = job.state;
              state.className = "badge state " + ({ succeeded: "good", failed: "bad", expired: "bad", cancelled: "neutral" }[job.state] || "busy");
            }
            var bar = row.querySelector("progress");
            if (bar) {
              if (job.state === "succeeded") { bar.value = 100; }
              else if (typeof job.percent === "number") { bar.value = job.percent; }
            }
            var detail = row.querySelector(".detail");
            if (detail) { detail.textContent = describe(job); }
            if (job.finished) { row.dataset.done = "1"; }
          }
          function tick() {
            var rows = openRows();
            if (rows.length === 0) { return; }
            var ids = rows.slice(0, 50).map(function (row) { return row.dataset.job; }).join(",");
            fetch("/jobs/live?ids=" + encodeURIComponent(ids), { credentials: "same-origin", headers: { "Accept": "application/json" } })
              .then(function (response) { if (!response.ok) { throw new Error(String(response.status)); } return response.json(); })
              .then(function (jobs) { jobs.forEach(update); setTimeout(tick, 1500); })
              .catch(function () { setTimeout(tick, 5000); });
          }
          document.addEventListener("DOMContentLoaded", function () { setTimeout(tick, 1000); });
        })();
        """
}
