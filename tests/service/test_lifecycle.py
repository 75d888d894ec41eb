"""The service over time, through real nginx and real lighttpd: a bounded queue (429 +
Retry-After), retention (410 while the audit row stays), kill -9 with jobs queued and one
running, the bound on restarts, the SIGTERM drain, SIGHUP, and readiness (503 until the
warm-up generation is done)."""
import json
import os
import signal
import sqlite3
import threading
import time
import unittest

from tests.service.stack import Stack

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
# long enough to be caught running on the tiny CPU model, short enough to finish
RUNNING = {"prompt": "the running one", "width": 128, "height": 128,
           "num_inference_steps": 20, "seed": 77}
SLOW = {"prompt": "a slow one", "width": 256, "height": 256, "num_inference_steps": 100}


def db_rows(stack):
    con = sqlite3.connect(stack.db, timeout=10)
    try:
        return {r[0]: r[1:] for r in con.execute(
            "SELECT id, state, attempts, error_code FROM jobs")}
    finally:
        con.close()


def wait_running(s, rid):
    """Waits until the job has done at least one step."""
    deadline = time.time() + 120
    while time.time() < deadline:
        j = s.wait_state(rid, ("running",))
        if j["progress"]["step"] >= 1:
            return j
        time.sleep(0.02)
    raise AssertionError("job %s never made progress" % rid)


class Lifecycle:
    server = None

    def stack(self, name, **overrides):
        s = Stack("%s-%s" % (name, self.server), self.server, overrides)
        self.addCleanup(s.stop)
        return s.start()

    def test_queue_full(self):
        s = self.stack("full", queue_size="3")
        st, _, run = s.json("POST", "/generate/queue", SLOW)
        self.assertEqual(st, 202, run)
        wait_running(s, run["request_id"])
        ids = [run["request_id"]]
        for i in range(3):  # the running job does not count: three more fit
            st, _, j = s.json("POST", "/generate/queue", dict(SLOW, seed=i))
            self.assertEqual((st, j["position"]), (202, i + 1), j)
            ids.append(j["request_id"])
        for path in ("/generate/queue", "/generate"):
            st, h, body = s.request("POST", path, dict(SLOW, seed=9))
            self.assertEqual(st, 429, body)
            self.assertEqual(json.loads(body)["error"]["code"], "queue_full")
            self.assertGreaterEqual(int(h["retry-after"]), 1)
        st, _, j = s.json("GET", "/queue/status")
        self.assertEqual((j["queued"], j["running"], j["capacity"]), (3, 1, 3))
        for rid in ids:
            s.request("DELETE", "/queue/" + rid)
        for rid in ids:
            self.assertEqual(s.wait_state(rid, ("cancelled",))["status"], "cancelled")
        st, _, j = s.json("POST", "/generate/queue", {"prompt": "fits again"})
        self.assertEqual(st, 202, j)

    def test_expiry(self):
        s = self.stack("expiry", retention="2s")
        st, _, j = s.json("POST", "/generate/queue", {"prompt": "short-lived", "seed": 2})
        self.assertEqual(st, 202, j)
        rid = j["request_id"]
        s.wait_state(rid, ("completed",))
        st, _, b = s.request("GET", "/result/" + rid)
        self.assertEqual(st, 200)
        deadline = time.time() + 60
        while time.time() < deadline:
            st, _, body = s.request("GET", "/result/" + rid)
            if st != 200:
                break
            time.sleep(0.1)
        self.assertEqual(st, 410, body)
        j = json.loads(body)
        self.assertEqual(j["error"]["code"], "expired")
        self.assertEqual(j["status"], "expired")
        st, _, j = s.json("GET", "/queue/status/" + rid)
        self.assertEqual((st, j["status"]), (200, "expired"))
        self.assertIn("expired_at", j)
        # the sweep deletes the image; the audit row stays, with its size
        deadline = time.time() + 30
        while time.time() < deadline and db_rows(s)[rid][0] != "expired":
            time.sleep(0.1)
        con = sqlite3.connect(s.db)
        try:
            state, size, n = con.execute(
                "SELECT state, result_bytes, (SELECT count(*) FROM results r "
                "WHERE r.job_seq = j.seq) FROM jobs j WHERE id = ?", (rid,)).fetchone()
        finally:
            con.close()
        self.assertEqual((state, size, n), ("expired", len(b), 0))

    def test_kill9_recovery(self):
        s = self.stack("kill9")
        st, _, j = s.json("POST", "/generate/queue", RUNNING)
        self.assertEqual(st, 202, j)
        running = j["request_id"]
        wait_running(s, running)
        queued = []
        for i in range(3):
            st, _, j = s.json("POST", "/generate/queue", {"prompt": "queued %d" % i,
                                                          "seed": 100 + i})
            self.assertEqual(st, 202, j)
            queued.append(j["request_id"])
        s.kill_fluxcgi(signal.SIGKILL)
        rows = db_rows(s)
        self.assertEqual(rows[running][:2], ("running", 1))
        for rid in queued:
            self.assertEqual(rows[rid][0], "queued")
        # while it is down, nginx / lighttpd answer in JSON
        st, _, body = s.request("GET", "/ping")
        self.assertGreaterEqual(st, 500)
        self.assertIn("error", json.loads(body))

        s.start_fluxcgi(wait_ready=False)
        everyone = [running] + queued
        seen_done = set()
        deadline = time.time() + 300
        while len(seen_done) < len(everyone) and time.time() < deadline:
            for rid in everyone:
                try:
                    st, _, j = s.json("GET", "/queue/status/" + rid)
                except (OSError, ValueError):
                    continue
                if st != 200:
                    continue
                self.assertIn(j["status"], ("queued", "running", "completed"), j)
                if j["status"] == "completed":
                    # never reported done without its image
                    st, h, b = s.request("GET", "/result/" + rid)
                    self.assertEqual(st, 200, b[:200])
                    self.assertTrue(b.startswith(PNG_MAGIC))
                    seen_done.add(rid)
            time.sleep(0.05)
        self.assertEqual(seen_done, set(everyone))
        j = s.wait_state(running, ("completed",))
        self.assertEqual(j["attempts"], 2)
        self.assertIn("restart recovery: 1 job re-queued", s.log_text())
        # the re-run image is the one the request asks for
        st, _, rerun = s.request("GET", "/result/" + running)
        st, _, fresh = s.request("POST", "/generate", RUNNING)
        self.assertEqual(st, 200)
        self.assertEqual(rerun, fresh)

    def test_restart_bound(self):
        s = self.stack("bound", max_attempts="1")
        st, _, j = s.json("POST", "/generate/queue", SLOW)
        rid = j["request_id"]
        wait_running(s, rid)
        s.kill_fluxcgi(signal.SIGKILL)
        s.start_fluxcgi()
        j = s.wait_state(rid, ("failed", "queued", "running", "completed"))
        self.assertEqual(j["status"], "failed")
        self.assertEqual(j["error"]["code"], "interrupted")
        st, _, body = s.request("GET", "/result/" + rid)
        self.assertEqual(st, 500, body)
        self.assertEqual(json.loads(body)["error"]["code"], "interrupted")
        self.assertEqual(db_rows(s)[rid], ("failed", 1, "interrupted"))


class TestLifecycleNginx(Lifecycle, unittest.TestCase):
    server = "nginx"

    def test_sigterm_drain(self):
        s = self.stack("drain")
        st, _, j = s.json("POST", "/generate/queue", RUNNING)
        running = j["request_id"]
        wait_running(s, running)
        st, _, j = s.json("POST", "/generate/queue", {"prompt": "waiting", "seed": 8})
        waiting = j["request_id"]
        answer = {}

        def sync():
            answer["r"] = s.request("POST", "/generate", {"prompt": "sync", "seed": 9})

        t = threading.Thread(target=sync)
        t.start()
        deadline = time.time() + 30
        while db_rows(s).__len__() < 3 and time.time() < deadline:
            time.sleep(0.02)
        rc = s.kill_fluxcgi(signal.SIGTERM)
        t.join(60)
        self.assertEqual(rc, 0)
        st, h, body = answer["r"]
        self.assertEqual(st, 503, body)
        self.assertEqual(json.loads(body)["error"]["code"], "shutting_down")
        sync_id = h["x-request-id"]
        rows = db_rows(s)
        self.assertEqual(rows[running][:2], ("queued", 0))  # back in line, attempt not counted
        self.assertEqual(rows[waiting][0], "queued")
        self.assertEqual(rows[sync_id][0], "queued")
        self.assertIn("back in the queue (draining)", s.log_text())
        s.start_fluxcgi()
        for rid in (running, waiting, sync_id):
            j = s.wait_state(rid, ("completed", "failed"))
            self.assertEqual(j["status"], "completed")
        self.assertEqual(s.json("GET", "/queue/status/" + running)[2]["attempts"], 1)

    def test_sighup_reopens_log(self):
        s = self.stack("sighup")
        os.rename(s.log, s.log + ".1")
        s.fluxcgi.send_signal(signal.SIGHUP)
        deadline = time.time() + 30
        while "log reopened" not in s.log_text() and time.time() < deadline:
            time.sleep(0.05)
        self.assertIn("log reopened", s.log_text())
        self.assertEqual(s.json("GET", "/ping")[0], 200)

    def test_readiness(self):
        # a slow warm-up (128x128, 40 steps) keeps the model "loading" for seconds
        s = Stack("ready-nginx", "nginx", {"default_width": "128", "default_height": "128",
                                           "warmup_steps": "40"})
        self.addCleanup(s.stop)
        s.start_web()
        s.start_fluxcgi(wait_ready=False)
        st, _, j = s.json("GET", "/ping")
        self.assertEqual((st, j["status"], j["ready"]), (200, "loading", False))
        for path in ("/generate", "/generate/queue"):
            st, h, body = s.request("POST", path, {"prompt": "too early"})
            self.assertEqual(st, 503, body)
            self.assertEqual(json.loads(body)["error"]["code"], "not_ready")
            self.assertIn("retry-after", h)
        st, _, j = s.json("GET", "/queue/status")
        self.assertEqual((st, j["ready"]), (200, False))
        s.wait_ready()
        self.assertIn("warm-up generation", s.log_text())
        st, _, b = s.request("POST", "/generate", {"prompt": "now", "width": 64, "height": 64,
                                                   "num_inference_steps": 1})
        self.assertEqual(st, 200)


class TestLifecycleLighttpd(Lifecycle, unittest.TestCase):
    server = "lighttpd"


if __name__ == "__main__":
    unittest.main()
