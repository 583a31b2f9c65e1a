import Foundation

/// Debian's python3 (where python3-aiosmtpd is installed), not whatever `python3` a PATH finds first.
let debianPython = "/usr/bin/python3"

/// A real SMTP server on loopback: Debian's python3-aiosmtpd, saving every accepted message as a file. With
/// `tls` it offers STARTTLS with that certificate; with `login` it requires AUTH (after STARTTLS) with that user
/// name and password. Stopped when released.
public final class SMTPTestServer: @unchecked Sendable {
    // @unchecked: the process and directories are set in init and only read afterwards.
    public let directory = TemporaryDirectory(prefix: "fk-smtp")
    public let port: Int
    private let server: BackgroundProcess

    static let script = #"""
    import asyncio, os, signal, ssl, sys, time
    from aiosmtpd.smtp import SMTP, AuthResult

    # The test process may hand down a mask that blocks SIGTERM; stop at once when the test releases the server.
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))

    out, cert, key, login, password = sys.argv[1:6]

    class Saver:
        async def handle_DATA(self, server, session, envelope):
            name = os.path.join(out, "%020d.eml" % time.time_ns())
            head = b"X-Test-TLS: " + (b"yes" if session.ssl is not None else b"no") + b"\r\n"
            head += b"X-Test-Mail-From: " + envelope.mail_from.encode() + b"\r\n"
            head += b"X-Test-Rcpt-To: " + ",".join(envelope.rcpt_tos).encode() + b"\r\n"
            head += b"X-Test-Auth: " + (session.auth_data.login if session.authenticated else b"none") + b"\r\n"
            with open(name + ".tmp", "wb") as f:
                f.write(head + envelope.original_content)
            os.rename(name + ".tmp", name)
            return "250 Message accepted for delivery"

    def authenticate(server, session, envelope, mechanism, auth_data):
        ok = auth_data.login == login.encode() and auth_data.password == password.encode()
        return AuthResult(success=ok, handled=False, auth_data=auth_data)

    context = None
    if cert != "-":
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(cert, key)
    options = dict(tls_context=context, require_starttls=False)
    if login != "-":
        options.update(authenticator=authenticate, auth_required=True, auth_require_tls=True)
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    server = loop.run_until_complete(loop.create_server(lambda: SMTP(Saver(), **options), "127.0.0.1", 0))
    print("listening on", server.sockets[0].getsockname()[1], flush=True)
    loop.run_forever()
    """#

    public init(tls: (certificate: String, key: String)? = nil, login: (user: String, password: String)? = nil) throws {
        guard FileManager.default.isExecutableFile(atPath: debianPython),
              try ProcessRunner.run(debianPython, ["-c", "import aiosmtpd"]).status == 0 else {
            throw TestFailure("\(debianPython) with python3-aiosmtpd is needed (ops/bootstrap installs it)")
        }
        let script = directory.appending("smtpd.py")
        try Data(Self.script.utf8).write(to: URL(fileURLWithPath: script))
        let mail = directory.appending("mail")
        try FileManager.default.createDirectory(atPath: mail, withIntermediateDirectories: true)
        server = try BackgroundProcess(debianPython, [script, mail, tls?.certificate ?? "-", tls?.key ?? "-", login?.user ?? "-", login?.password ?? "-"])
        port = try server.waitForListeningPort()
    }

    /// The messages received so far, oldest first, as text.
    public var messages: [String] {
        let mail = directory.appending("mail")
        let names = ((try? FileManager.default.contentsOfDirectory(atPath: mail)) ?? []).filter { $0.hasSuffix(".eml") }.sorted()
        return names.compactMap { try? String(contentsOfFile: mail + "/" + $0, encoding: .utf8) }
    }

    /// The value of `header` in a received message (first occurrence, unfolded).
    public static func header(_ name: String, in message: String) -> String? {
        let head = message.components(separatedBy: "\r\n\r\n").first ?? message
        let unfolded = head.replacingOccurrences(of: "\r\n ", with: " ")
        for line in unfolded.components(separatedBy: "\r\n") where line.lowercased().hasPrefix(name.lowercased() + ":") {
            return String(line.dropFirst(name.count + 1)).trimmingCharacters(in: .whitespaces)
        }
        return nil
    }

    public var output: String { server.output }

    deinit { server.stop() }
}

/// A webhook receiver on loopback (python3's http.server) that checks each request's signature the way
/// docs/PROTOCOL.md tells receivers to, answers 401 to a bad one, 500 to the first `failFirst` good ones and 200
/// after that, and records every request. Stopped when released.
public final class WebhookTestReceiver: @unchecked Sendable {
    public let directory = TemporaryDirectory(prefix: "fk-webhook")
    public let port: Int
    private let server: BackgroundProcess
    public var url: String { "http://127.0.0.1:\(port)/hooks/fleetkeep?source=test" }

    static let script = #"""
    import hashlib, hmac, http.server, json, os, signal, sys, time

    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))

    out, secret, fail_first = sys.argv[1], sys.argv[2].encode(), int(sys.argv[3])
    good = 0

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            global good
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            timestamp = self.headers.get("X-Fleetkeep-Timestamp", "")
            expected = "v1=" + hmac.new(secret, timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
            valid = hmac.compare_digest(expected, self.headers.get("X-Fleetkeep-Signature", ""))
            if valid:
                good += 1
            status = 401 if not valid else (500 if good <= fail_first else 200)
            record = {"path": self.path, "valid": valid, "status": status, "timestamp": timestamp,
                      "signature": self.headers.get("X-Fleetkeep-Signature", ""),
                      "delivery": self.headers.get("X-Fleetkeep-Delivery", ""), "event": self.headers.get("X-Fleetkeep-Event", ""),
                      "contentType": self.headers.get("Content-Type", ""), "body": body.decode("utf-8")}
            name = os.path.join(out, "%020d.json" % time.time_ns())
            with open(name + ".tmp", "w") as f:
                json.dump(record, f)
            os.rename(name + ".tmp", name)
            self.send_response(status)
            self.send_header("Content-Type", "text/plain")
            self.end_headers()
            self.wfile.write(b"bad signature" if not valid else b"ok")

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    print("listening on", server.server_port, flush=True)
    server.serve_forever()
    """#

    public init(secret: String, failFirst: Int = 0) throws {
        let script = directory.appending("receiver.py")
        try Data(Self.script.utf8).write(to: URL(fileURLWithPath: script))
        let requests = directory.appending("requests")
        try FileManager.default.createDirectory(atPath: requests, withIntermediateDirectories: true)
        server = try BackgroundProcess(debianPython, [script, requests, secret, String(failFirst)])
        port = try server.waitForListeningPort()
    }

    /// Every request received so far, oldest first.
    public var requests: [[String: Any]] {
        let dir = directory.appending("requests")
        let names = ((try? FileManager.default.contentsOfDirectory(atPath: dir)) ?? []).filter { $0.hasSuffix(".json") }.sorted()
        return names.compactMap { name in
            FileManager.default.contents(atPath: dir + "/" + name).flatMap { try? JSONSerialization.jsonObject(with: $0) as? [String: Any] }
        }
    }

    deinit { server.stop() }
}
