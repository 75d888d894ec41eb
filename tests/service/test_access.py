"""Access control through real nginx and real lighttpd: API keys (fluxcgi keys add|list|revoke,
Bearer and X-API-Key passed by both web servers), other keys' jobs as 404, admin keys,
per-key limits and their usage in /queue/status and /metrics, CORS, and webhooks delivered to
local receivers that are up, down, slow and answering 500, audited with sqlite3."""
import hashlib
import hmac
import http.server
import json
import re
import socket
import sqlite3
import subprocess
import threading
import time
import unittest

from tests.service.stack import FLUXCGI, Stack

ORIGIN = "https://app.example"
LONG = {"prompt": "a long job", "width": 256, "height": 256, "num_inference_steps": 100,
        "seed": 5}


class Receiver:
    """Webhook receivers on 127.0.0.1: /ok answers 204, /flaky 500 twice then 204, /slow holds
    the request until released (longer than webhook_timeout).  Every request is recorded."""

    def __init__(self):
        self.calls = []  # (path, headers, body)
        self.lock = threading.Lock()
        self.flaky_left = 2
        self.slow_entered = threading.Event()
        self.slow_release = threading.Event()
        rec = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                with rec.lock:
                    rec.calls.append((self.path, dict(self.headers), body))
                status = 204
                if self.path.startswith("/slow"):
                    rec.slow_entered.set()
                    rec.slow_release.wait(5)
                    return  # the client gave up long ago
                if self.path.startswith("/flaky"):
                    with rec.lock:
                        if rec.flaky_left > 0:
                            rec.flaky_left -= 1
                            status = 500
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *a):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        # a port where nobody listens: bound, never listening, so connections are refused
        self.down = socket.socket()
        self.down.bind(("127.0.0.1", 0))
        self.down_port = self.down.getsockname()[1]

    def url(self, path):
        return "http://127.0.0.1:%d%s" % (self.port, path)

    def calls_to(self, prefix):
        with self.lock:
            return [c for c in self.calls if c[0].startswith(prefix)]

    def stop(self):
        self.slow_release.set()
        self.server.shutdown()
        self.server.server_close()
        self.down.close()


def keys(stack, *args):
    res = subprocess.run([FLUXCGI, "keys"] + list(args) + ["--config", stack.config],
                         capture_output=True, text=True, timeout=60)
    return res.returncode, res.stdout, res.stderr


def add_key(stack, name, *opts):
    rc, out, err = keys(stack, "add", name, *opts)
    assert rc == 0, err
    return (re.search(r"^key: +(fxk_\S+)$", out, re.M).group(1),
            re.search(r"^webhook secret: +(whsec_\S+)$", out, re.M).group(1))


def until(cond, timeout=90, what="condition"):
    deadline = time.time() + timeout
    while time.time() < deadline:
        v = cond()
        if v:
            return v
        time.sleep(0.1)
    raise AssertionError("timed out waiting for " + what)


class Access:
    server = None

    @classmethod
    def setUpClass(cls):
        cls.rx = Receiver()
        hosts = "127.0.0.1:%d, 127.0.0.1:%d" % (cls.rx.port, cls.rx.down_port)
        cls.s = Stack("access-" + cls.server, cls.server, overrides={
            "auth": "on", "cors_origins": ORIGIN, "webhook_hosts": hosts,
            "webhook_attempts": "3", "webhook_timeout": "1s"})
        cls.s.start_web()
        cls.s.start_fluxcgi(wait_ready=False)
        cls.s.wait_ready()  # /ping stays open
        # auth on and no key yet: the service runs, refuses, and its log says what to do
        st, _, j = cls.s.json("GET", "/queue/status")
        cls.no_keys_answer = (st, j)
        cls.a, cls.a_secret = add_key(cls.s, "alice")
        cls.b, cls.b_secret = add_key(cls.s, "bob", "--webhook", cls.rx.url("/ok/bob"))
        cls.admin, _ = add_key(cls.s, "root", "--admin")
        cls.capped, _ = add_key(cls.s, "capped", "--max-queued", "1", "--daily-images", "3")

    @classmethod
    def tearDownClass(cls):
        cls.s.stop()
        cls.rx.stop()

    def as_key(self, key, method, path, body=None, header="bearer", extra=None):
        h = {"Authorization": "Bearer " + key} if header == "bearer" else {"X-API-Key": key}
        h.update(extra or {})
        return self.s.request(method, path, body, headers=h)

    def json_as(self, key, method, path, body=None, **kw):
        st, h, b = self.as_key(key, method, path, body, **kw)
        return st, h, json.loads(b)

    def wait_done(self, rid, key=None, states=("completed",)):
        def done():
            st, _, j = self.json_as(key or self.admin, "GET", "/queue/status/" + rid)
            return j if st == 200 and j["status"] in states else None
        return until(done, what="job " + rid)

    def audit(self, sql, *args):
        db = sqlite3.connect(self.s.db, timeout=10)
        try:
            return db.execute(sql, args).fetchall()
        finally:
            db.close()

    # ---- keys ---------------------------------------------------------------------------

    def test_store_without_keys_refused_and_says_how(self):
        st, j = self.no_keys_answer
        self.assertEqual((st, j["error"]["code"]), (401, "unauthorized"))
        self.assertIn("fluxcgi keys add NAME --admin --config " + self.s.config,
                      self.s.log_text())
        self.assertIsNone(self.s.fluxcgi.poll())

    def test_ping_open_everything_else_needs_a_key(self):
        st, _, j = self.s.json("GET", "/ping")
        self.assertEqual((st, j["status"]), (200, "ok"))
        for method, path in (("GET", "/queue/status"), ("POST", "/generate/queue"),
                             ("GET", "/queue/status/" + "0" * 32), ("GET", "/result/" + "0" * 32),
                             ("DELETE", "/queue/" + "0" * 32), ("POST", "/generate")):
            st, h, b = self.s.request(method, path, {"prompt": "x"} if method == "POST" else None)
            self.assertEqual(st, 401, (path, b))
            self.assertEqual(json.loads(b)["error"]["code"], "unauthorized")
            self.assertIn("Bearer", h["www-authenticate"])
        # /metrics is open by default (metrics_auth = open)
        st, _, b = self.s.request("GET", "/metrics")
        self.assertEqual(st, 200)

    def test_bearer_and_x_api_key(self):
        for header in ("bearer", "x-api-key"):
            st, _, j = self.json_as(self.a, "GET", "/queue/status", header=header)
            self.assertEqual(st, 200, j)
            self.assertEqual(j["key"]["name"], "alice")
        st, _, j = self.s.json("GET", "/queue/status",
                               headers={"Authorization": "bearer   " + self.a})
        self.assertEqual(st, 200, j)

    def test_bad_keys(self):
        bad = [({"Authorization": "Basic YWxhZGRpbjpvcGVu"}, 400, "malformed"),
               ({"Authorization": "Bearer"}, 400, "malformed"),
               ({"Authorization": "Bearer a b"}, 400, "malformed"),
               ({"Authorization": "Bearer " + self.a, "X-API-Key": self.b}, 400, "malformed"),
               ({"Authorization": "Bearer fxk_nothing"}, 401, "unauthorized"),
               ({"X-API-Key": self.a[:-1] + ("0" if self.a[-1] != "0" else "1")}, 401,
                "unauthorized"),
               ({"X-API-Key": "fxk_" + "0" * 16 + "_" + "0" * 64}, 401, "unauthorized")]
        for h, status, code in bad:
            st, _, b = self.s.request("GET", "/queue/status", headers=h)
            self.assertEqual(st, status, (h, b))
            self.assertEqual(json.loads(b)["error"]["code"], code, h)
        # counted, and logged without the key
        st, _, m = self.s.request("GET", "/metrics")
        text = m.decode()
        self.assertRegex(text, r'fluxcgi_auth_failures_total\{reason="malformed"\} [1-9]')
        self.assertRegex(text, r'fluxcgi_auth_failures_total\{reason="unknown"\} [1-9]')
        log = self.s.log_text()
        self.assertIn("auth: GET /queue/status", log)
        for key in (self.a, self.b):
            self.assertNotIn(key.split("_")[2], log)

    def test_keys_list_and_cli_errors(self):
        rc, out, err = keys(self.s, "list")
        self.assertEqual(rc, 0, err)
        self.assertRegex(out, r"(?m)^[0-9a-f]{16}  alice +no +active")
        self.assertRegex(out, r"(?m)^[0-9a-f]{16}  root +yes +active")
        self.assertNotIn(self.a.split("_")[2], out)  # never the secret part
        self.assertEqual(keys(self.s, "add", "alice")[0], 1)  # a name in use
        self.assertEqual(keys(self.s, "add", "bad name")[0], 2)
        self.assertEqual(keys(self.s, "add", "x", "--webhook", "http://10.1.2.3/")[0], 2)
        self.assertEqual(keys(self.s, "revoke", "nobody")[0], 1)
        self.assertEqual(keys(self.s, "frobnicate")[0], 2)
        # the store keeps only a hash of each key
        rows = self.audit("SELECT hex(hash) FROM api_keys WHERE name = 'alice'")
        self.assertEqual(rows[0][0].lower(), hashlib.sha256(self.a.encode()).hexdigest())

    # ---- jobs and their keys ------------------------------------------------------------

    def test_other_keys_get_404_admin_sees_all(self):
        st, _, j = self.json_as(self.a, "POST", "/generate/queue",
                                {"prompt": "alice's", "seed": 1})
        self.assertEqual(st, 202, j)
        rid = j["request_id"]
        self.wait_done(rid, self.a)
        for method, prefix in (("GET", "/queue/status/"), ("GET", "/result/"),
                               ("GET", "/queue/events/"), ("DELETE", "/queue/")):
            st, _, theirs = self.as_key(self.b, method, prefix + rid)
            st2, _, unknown = self.as_key(self.b, method, prefix + "f" * 32)
            self.assertEqual((st, st2), (404, 404), prefix)
            self.assertEqual(json.loads(theirs)["error"]["code"], "not_found")
            self.assertEqual(len(theirs), len(unknown))  # the same answer, another id
        st, h, png = self.as_key(self.a, "GET", "/result/" + rid)
        self.assertEqual((st, h["content-type"]), (200, "image/png"))
        st, _, png2 = self.as_key(self.admin, "GET", "/result/" + rid)
        self.assertEqual((st, png2), (200, png))
        self.assertEqual(self.audit("SELECT k.name FROM jobs j JOIN api_keys k ON k.id = j.key_id"
                                    " WHERE j.id = ?", rid), [("alice",)])

    def test_revoked_during_a_running_job(self):
        key, _ = add_key(self.s, "leaving-" + self.server)
        # revoking answers 401 whatever the job's state; the job itself only has to outlive
        # the key, so it need not be long
        st, _, j = self.json_as(key, "POST", "/generate/queue", dict(LONG, num_inference_steps=12))
        self.assertEqual(st, 202, j)
        rid = j["request_id"]
        self.wait_done(rid, key, states=("running", "completed"))
        rc, out, err = keys(self.s, "revoke", "leaving-" + self.server)
        self.assertEqual(rc, 0, err)
        st, _, j = self.json_as(key, "GET", "/queue/status/" + rid)
        self.assertEqual((st, j["error"]["code"]), (401, "unauthorized"))
        self.wait_done(rid)  # the job finishes
        st, h, b = self.as_key(self.admin, "GET", "/result/" + rid)
        self.assertEqual((st, h["content-type"]), (200, "image/png"))
        self.assertTrue(b.startswith(b"\x89PNG"))
        rc, out, _ = keys(self.s, "list")
        self.assertRegex(out, r"leaving-%s +no +revoked" % self.server)

    # ---- limits ---------------------------------------------------------------------------

    def test_per_key_limits_in_status_and_metrics(self):
        # another key's long job holds the worker, so the capped key's first job waits
        st, _, j = self.json_as(self.admin, "POST", "/generate/queue", LONG)
        self.assertEqual(st, 202, j)
        blocker = j["request_id"]
        self.wait_done(blocker, states=("running",))
        st, _, j = self.json_as(self.capped, "POST", "/generate/queue", {"prompt": "first"})
        self.assertEqual(st, 202, j)
        first = j["request_id"]
        st, h, j = self.json_as(self.capped, "POST", "/generate/queue", {"prompt": "second"})
        self.assertEqual((st, j["error"]["code"]), (429, "quota_exceeded"), j)
        self.assertGreaterEqual(int(h["retry-after"]), 1)
        self.assertEqual((j["key"]["queued"], j["key"]["max_queued"]), (1, 1))
        # the global bound is not what refused it, and other keys still queue
        st, _, j = self.json_as(self.b, "POST", "/generate/queue", {"prompt": "bob queues"})
        self.assertEqual(st, 202, j)
        second = j["request_id"]
        st, _, j = self.json_as(self.capped, "GET", "/queue/status")
        self.assertEqual(j["key"]["max_queued"], 1)
        self.assertEqual(j["key"]["daily_images"], 3)
        self.assertEqual((j["key"]["queued"], j["key"]["images_today"]), (1, 1))
        st, _, m = self.s.request("GET", "/metrics")
        self.assertRegex(m.decode(), r'fluxcgi_key_max_queued\{key="capped",id="[0-9a-f]{16}"\} 1')
        self.assertRegex(m.decode(), r'fluxcgi_key_queued\{key="capped",id="[0-9a-f]{16}"\} 1')
        st, _, j = self.json_as(self.capped, "DELETE", "/queue/" + first)
        self.assertEqual((st, j["status"]), (200, "cancelled"))  # while queued
        self.as_key(self.admin, "DELETE", "/queue/" + blocker)
        self.wait_done(second, self.b)
        # the daily quota: the cancelled one was given back, so three fit, then no more
        for rid in (blocker, first):
            self.wait_done(rid, states=("cancelled", "completed"))
        used = self.json_as(self.capped, "GET", "/queue/status")[2]["key"]["images_today"]
        self.assertEqual(used, 0)
        for _ in range(3):
            st, _, j = self.json_as(self.capped, "POST", "/generate/queue", {"prompt": "q"})
            self.assertEqual(st, 202, j)
            self.wait_done(j["request_id"], self.capped)
        st, h, j = self.json_as(self.capped, "POST", "/generate/queue", {"prompt": "over"})
        self.assertEqual((st, j["error"]["code"]), (429, "quota_exceeded"), j)
        self.assertIn("images of the day", j["error"]["message"])
        self.assertGreater(int(h["retry-after"]), 0)

    # ---- CORS -----------------------------------------------------------------------------

    # ---- job groups and the clients' APIs -----------------------------------------------

    def test_groups_and_clients_behind_keys(self):
        small = {"width": 64, "height": 64, "num_inference_steps": 2}
        # a group is its key's: another key gets 404 and cannot cancel it
        st, _, q = self.json_as(self.a, "POST", "/generate/queue",
                                dict(small, prompt="group", n=2))
        self.assertEqual(st, 202, q)
        gid = q["group_id"]
        st, _, j = self.json_as(self.b, "GET", "/queue/group/" + gid)
        self.assertEqual((st, j["error"]["code"]), (404, "not_found"))
        st, _, j = self.json_as(self.b, "DELETE", "/queue/group/" + gid)
        self.assertEqual(st, 404, j)
        st, _, j = self.json_as(self.admin, "GET", "/queue/group/" + gid)
        self.assertEqual(st, 200, j)
        for rid in q["request_ids"]:
            self.wait_done(rid, self.a)
        st, _, j = self.json_as(self.a, "GET", "/queue/group/" + gid)
        self.assertEqual((st, j["status"]), (200, "completed"))
        rows = self.audit("SELECT count(*) FROM jobs j JOIN api_keys k ON k.id = j.key_id "
                          "WHERE j.group_id = ? AND k.name = 'alice'", gid)
        self.assertEqual(rows[0][0], 2)
        # the OpenAI and A1111 routes: a key answers, none is 401 in their own shapes
        st, _, j = self.s.json("POST", "/v1/images/generations",
                               {"prompt": "x", "size": "64x64"})
        self.assertEqual(st, 401, j)
        self.assertIn("type", j["error"])
        st, _, j = self.s.json("POST", "/sdapi/v1/txt2img", {"prompt": "x"})
        self.assertEqual(st, 401, j)
        self.assertIn("detail", j)
        self.assertEqual(self.s.request("GET", "/v1/models")[0], 401)
        self.assertEqual(self.as_key(self.a, "GET", "/v1/models")[0], 200)
        st, _, j = self.json_as(self.a, "POST", "/v1/images/generations",
                                {"prompt": "openai", "size": "64x64", "n": 1})
        self.assertEqual(st, 200, j)
        self.assertTrue(j["data"][0]["b64_json"])
        # /openapi.json is open and declares the keys
        st, _, doc = self.s.json("GET", "/openapi.json")
        self.assertEqual(st, 200)
        self.assertEqual(set(doc["components"]["securitySchemes"]), {"bearer", "apiKey"})
        # each image of a group counts toward the daily quota: capped has 3 images a day
        st, h, j = self.json_as(self.capped, "POST", "/generate/queue",
                                dict(small, prompt="too many", n=4))
        self.assertEqual((st, j["error"]["code"]), (429, "quota_exceeded"), j)
        self.assertIn("retry-after", h)

    def test_cors(self):
        pre = {"Origin": ORIGIN, "Access-Control-Request-Method": "POST",
               "Access-Control-Request-Headers": "authorization, content-type"}
        st, h, _ = self.s.request("OPTIONS", "/generate/queue", headers=pre)
        self.assertEqual(st, 204)
        self.assertEqual(h["access-control-allow-origin"], ORIGIN)
        self.assertEqual(h["access-control-allow-methods"], "POST")
        self.assertIn("Authorization", h["access-control-allow-headers"])
        pre["Origin"] = "https://evil.example"
        st, h, b = self.s.request("OPTIONS", "/generate/queue", headers=pre)
        self.assertEqual((st, json.loads(b)["error"]["code"]), (403, "forbidden"))
        self.assertNotIn("access-control-allow-origin", h)
        # the real answers, synchronous POST /generate included
        st, h, _ = self.as_key(self.a, "GET", "/queue/status", extra={"Origin": ORIGIN})
        self.assertEqual((st, h["access-control-allow-origin"]), (200, ORIGIN))
        self.assertIn("X-Request-Id", h["access-control-expose-headers"])
        st, h, b = self.as_key(self.a, "POST", "/generate", {"prompt": "cors", "seed": 2},
                               extra={"Origin": ORIGIN})
        self.assertEqual((st, h["access-control-allow-origin"]), (200, ORIGIN), b[:200])
        st, h, _ = self.as_key(self.a, "GET", "/queue/status",
                               extra={"Origin": "https://evil.example"})
        self.assertNotIn("access-control-allow-origin", h)

    # ---- webhooks -------------------------------------------------------------------------

    def test_webhooks(self):
        rx = self.rx
        down = "http://127.0.0.1:%d/hook" % rx.down_port
        jobs = {}
        for name, url in (("ok", rx.url("/ok/" + self.server)),
                          ("flaky", rx.url("/flaky/" + self.server)),
                          ("slow", rx.url("/slow/" + self.server)), ("down", down)):
            st, _, j = self.json_as(self.a, "POST", "/generate/queue",
                                    {"prompt": "hook " + name, "webhook": url})
            self.assertEqual(st, 202, j)
            jobs[name] = j["request_id"]
        # bob's key has its own webhook; its jobs use it without asking
        st, _, j = self.json_as(self.b, "POST", "/generate/queue", {"prompt": "bob's"})
        jobs["bob"] = j["request_id"]
        # a host outside webhook_hosts is refused before anything is queued
        st, _, j = self.json_as(self.a, "POST", "/generate/queue",
                                {"prompt": "x", "webhook": "http://169.254.169.254/latest"})
        self.assertEqual((st, j["error"]["code"]), (422, "invalid_argument"))
        self.assertIn("webhook_hosts", j["error"]["message"])

        # while the slow receiver holds a delivery, requests are answered
        self.assertTrue(rx.slow_entered.wait(60), "the slow receiver was never called")
        st, _, j = self.json_as(self.a, "GET", "/queue/status/" + jobs["ok"])
        self.assertEqual(st, 200)
        st, _, _ = self.s.request("GET", "/ping")
        self.assertEqual(st, 200)

        def finished():
            rows = self.audit("SELECT job_id, state, attempts, last_status, last_error "
                              "FROM webhook_log WHERE job_id IN (%s) AND event = 'end'"
                              % ",".join("?" * len(jobs)), *jobs.values())
            return rows if len(rows) == len(jobs) and all(r[1] != "pending" for r in rows) \
                else None
        rows = {r[0]: r[1:] for r in until(finished, 120, "the webhook deliveries")}
        self.assertEqual(rows[jobs["ok"]][:3], ("delivered", 1, 204))
        self.assertEqual(rows[jobs["bob"]][:3], ("delivered", 1, 204))
        self.assertEqual(rows[jobs["flaky"]][:3], ("delivered", 3, 204))
        self.assertEqual(rows[jobs["slow"]][:2], ("failed", 3))
        self.assertRegex(rows[jobs["slow"]][3], "(?i)timed? ?out")
        self.assertEqual(rows[jobs["down"]][:3], ("failed", 3, None))
        self.assertRegex(rows[jobs["down"]][3], "(?i)connect")

        # what the receiver got: the job's final status, signed with the key's secret
        for prefix, rid, secret in (("/ok/" + self.server, jobs["ok"], self.a_secret),
                                    ("/ok/bob", jobs["bob"], self.b_secret)):
            calls = [c for c in rx.calls_to(prefix) if json.loads(c[2])["job"]["request_id"] == rid]
            self.assertEqual(len(calls), 1)
            _, h, body = calls[0]
            j = json.loads(body)
            self.assertEqual((j["event"], j["job"]["status"]), ("end", "completed"))
            self.assertEqual(h["X-Fluxcgi-Event"], "end")
            mac = hmac.new(secret.encode(), h["X-Fluxcgi-Timestamp"].encode() + b"." + body,
                           hashlib.sha256).hexdigest()
            self.assertEqual(h["X-Fluxcgi-Signature"], "sha256=" + mac)
        # the retries of the flaky receiver sent the same body each time
        bodies = {c[2] for c in rx.calls_to("/flaky/" + self.server)}
        self.assertEqual(len(bodies), 1)
        # the audit views: who did what
        by_key = dict((r[0], r[1]) for r in self.audit("SELECT key, jobs FROM jobs_by_key"))
        self.assertGreaterEqual(by_key["alice"], 4)
        st, _, m = self.s.request("GET", "/metrics")
        self.assertRegex(m.decode(), r'fluxcgi_webhook_attempts_total\{outcome="retried"\} [1-9]')

    def test_webhook_progress_events(self):
        url = self.rx.url("/ok/progress-" + self.server)
        job = dict(LONG, prompt="progress", webhook=url, webhook_progress=True,
                   num_inference_steps=30)
        st, _, j = self.json_as(self.a, "POST", "/generate/queue", job)
        self.assertEqual(st, 202, j)
        rid = j["request_id"]
        self.wait_done(rid, self.a)
        until(lambda: any(json.loads(c[2])["event"] == "end"
                          for c in self.rx.calls_to("/ok/progress-" + self.server)),
              what="the end event")
        events = [json.loads(c[2]) for c in self.rx.calls_to("/ok/progress-" + self.server)]
        self.assertEqual(events[-1]["event"], "end")
        self.assertEqual([e["event"] for e in events].count("end"), 1)
        progress = [e for e in events if e["event"] == "progress"]
        self.assertTrue(progress, events)
        self.assertEqual(progress[0]["job"]["status"], "running")
        self.assertGreaterEqual(progress[0]["job"]["progress"]["step"], 1)


class AccessNginx(Access, unittest.TestCase):
    server = "nginx"


class AccessLighttpd(Access, unittest.TestCase):
    server = "lighttpd"


if __name__ == "__main__":
    unittest.main()
