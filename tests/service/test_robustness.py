"""The service when the store misbehaves or the process stops at a bad moment, through real
nginx: an outcome the store refuses at first (another connection holds BEGIN IMMEDIATE past
busy_timeout) is kept and stored later; a cancel asked while a job runs survives a drain and
a kill -9; old rows go after audit_retention; malformed JSON that json-c would accept is 400.
"""
import json
import os
import signal
import sqlite3
import subprocess
import tempfile
import time
import unittest

from tests.service.stack import FLUXCGI, TEST_DIR, Stack

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
# long enough to be caught running on the tiny CPU model
RUNNING = {"prompt": "the running one", "width": 128, "height": 128,
           "num_inference_steps": 40, "seed": 77}


def wait_running(s, rid):
    deadline = time.time() + 120
    while time.time() < deadline:
        j = s.wait_state(rid, ("running",))
        if j["progress"]["step"] >= 1:
            return j
        time.sleep(0.02)
    raise AssertionError("job %s never made progress" % rid)


def row(stack, rid):
    con = sqlite3.connect(stack.db, timeout=10)
    try:
        return con.execute("SELECT state, error_code, attempts FROM jobs WHERE id = ?",
                           (rid,)).fetchone()
    finally:
        con.close()


def restore_env(name, value):
    if value is None:
        os.environ.pop(name, None)
    else:
        os.environ[name] = value


def ping(s):
    return s.json("GET", "/ping")


def metric(s, name):
    st, _, body = s.request("GET", "/metrics")
    for line in body.decode().splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return None


class TestRobustness(unittest.TestCase):

    def stack(self, name, **overrides):
        s = Stack("%s-robust" % name, "nginx", overrides)
        self.addCleanup(s.stop)
        return s.start()

    def test_outcome_kept_while_store_locked(self):
        s = self.stack("locked", busy_timeout="200ms")
        st, _, j = ping(s)
        self.assertIs(j["store_ok"], True)
        st, _, j = s.json("POST", "/generate/queue", RUNNING)
        self.assertEqual(st, 202, j)
        rid = j["request_id"]
        wait_running(s, rid)
        # an auditor holds the write lock across the end of the job
        con = sqlite3.connect(s.db, timeout=10, isolation_level=None)
        con.execute("BEGIN IMMEDIATE")
        try:
            deadline = time.time() + 300
            while time.time() < deadline:
                st, _, j = ping(s)
                if j.get("store_ok") is False:
                    break
                time.sleep(0.05)
            self.assertEqual((st, j["store_ok"], j["ready"]), (200, False, True), j)
            self.assertIn("outcome not stored", j["store_error"])
            self.assertEqual(metric(s, "fluxcgi_store_degraded"), 1)
            self.assertGreaterEqual(metric(s, "fluxcgi_store_write_failures_total"), 1)
            self.assertEqual(s.json("GET", "/queue/status/" + rid)[2]["status"], "running")
            self.assertNotIn("job %s: completed" % rid, s.log_text())
        finally:
            con.execute("ROLLBACK")
            con.close()
        j = s.wait_state(rid, ("completed", "failed"), timeout=60)
        self.assertEqual(j["status"], "completed", j)
        st, _, body = s.request("GET", "/result/" + rid)
        self.assertEqual(st, 200)
        self.assertTrue(body.startswith(PNG_MAGIC))
        self.assertIs(ping(s)[2]["store_ok"], True)
        self.assertEqual(metric(s, "fluxcgi_store_degraded"), 0)
        log = s.log_text()
        self.assertLess(log.index("outcome not stored"), log.index("job %s: completed" % rid))

    def _cancel_while_stopped(self, s, rid):
        """Freezes fluxcgi and flags the job cancelled as another process sharing the store
        would (store_cancel on a running job), so that fluxcgi cannot see the cancel before
        the signal that follows."""
        s.fluxcgi.send_signal(signal.SIGSTOP)
        con = sqlite3.connect(s.db, timeout=10)
        try:
            with con:
                n = con.execute("UPDATE jobs SET cancel = 1 WHERE id = ? AND state = 'running'",
                                (rid,)).rowcount
        finally:
            con.close()
        self.assertEqual(n, 1)

    def test_cancel_survives_drain(self):
        s = self.stack("canceldrain")
        st, _, j = s.json("POST", "/generate/queue", RUNNING)
        rid = j["request_id"]
        wait_running(s, rid)
        self._cancel_while_stopped(s, rid)
        s.fluxcgi.send_signal(signal.SIGTERM)
        self.assertEqual(s.kill_fluxcgi(signal.SIGCONT), 0)  # the drain, then exit 0
        self.assertEqual(row(s, rid)[:2], ("cancelled", "cancelled"))
        s.start_fluxcgi()
        time.sleep(1.5)  # a sweep and an idle claim have run; the job must not have
        j = s.json("GET", "/queue/status/" + rid)[2]
        self.assertEqual(j["status"], "cancelled", j)
        self.assertEqual(row(s, rid), ("cancelled", "cancelled", 1))

    def test_cancel_survives_kill9(self):
        s = self.stack("cancelkill")
        st, _, j = s.json("POST", "/generate/queue", RUNNING)
        rid = j["request_id"]
        wait_running(s, rid)
        self._cancel_while_stopped(s, rid)
        s.kill_fluxcgi(signal.SIGKILL)
        self.assertEqual(row(s, rid)[0], "running")
        s.start_fluxcgi()
        self.assertIn("restart recovery: 0 jobs re-queued, 0 failed, 1 cancelled", s.log_text())
        j = s.json("GET", "/queue/status/" + rid)[2]
        self.assertEqual(j["status"], "cancelled", j)
        self.assertEqual(row(s, rid), ("cancelled", "cancelled", 1))

    def test_audit_retention(self):
        s = self.stack("audit", retention="1s", audit_retention="1s")
        st, h, body = s.request("POST", "/generate", {"prompt": "short lived"})
        self.assertEqual(st, 200, body[:200])
        rid = h["x-request-id"]
        deadline = time.time() + 60
        while time.time() < deadline and row(s, rid) is not None:
            time.sleep(0.1)
        self.assertIsNone(row(s, rid))
        st, _, j = s.json("GET", "/queue/status/" + rid)
        self.assertEqual(st, 404, j)
        self.assertIn("deleted 1 old job row", s.log_text())
        st, _, j = s.json("GET", "/queue/status")
        self.assertEqual(j["expired"] + j["completed"], 0, j)

    def test_lost_lease(self):
        """Two processes share one store; one is killed while running a job and never comes
        back.  The other re-queues the job once its lease ran out and runs it."""
        a = self.stack("leasea", lease="2s", worker_name="a")
        st, _, j = a.json("POST", "/generate/queue", RUNNING)
        rid = j["request_id"]
        wait_running(a, rid)
        a.kill_fluxcgi(signal.SIGKILL)
        self.assertEqual(row(a, rid)[0], "running")
        b = Stack("leaseb-robust", None, {"db": a.db, "lease": "2s", "worker_name": "b"})
        self.addCleanup(b.stop)
        b.start()
        deadline = time.time() + 300
        while time.time() < deadline and row(a, rid)[0] != "completed":
            time.sleep(0.1)
        self.assertEqual(row(a, rid), ("completed", None, 2))
        con = sqlite3.connect(a.db, timeout=10)
        try:
            self.assertEqual(con.execute("SELECT worker FROM jobs WHERE id = ?",
                                         (rid,)).fetchone()[0], "b")
        finally:
            con.close()
        self.assertIn("lost leases: 1 job re-queued", b.log_text())

    def test_device_failures_fatal(self):
        """A device that breaks after the model loaded (tests/service/fault/faultshim.c stands
        in for the shim and fails every transformer call while a file exists)."""
        real = os.path.join(os.path.dirname(os.path.abspath(FLUXCGI)), "lib", "libfluxshim.so")
        self.assertTrue(os.path.exists(real), real)
        libdir = tempfile.mkdtemp(prefix="faultshim-", dir=TEST_DIR)
        src = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fault", "faultshim.c")
        subprocess.check_call([os.environ.get("CC", "cc"), "-shared", "-fPIC", "-o",
                               os.path.join(libdir, "libfluxshim.so"), src,
                               "-Wl,--no-as-needed", real, "-ldl"])
        fault = os.path.join(libdir, "fault")
        env = {"FLUXCGI_LIBDIR": libdir, "FLUX_REAL_SHIM": real, "FLUX_FAULT_FILE": fault}
        for k, v in env.items():
            self.addCleanup(restore_env, k, os.environ.get(k))
            os.environ[k] = v
        s = self.stack("device", device_failures_fatal="2")  # warm-up ran on the real shim
        open(fault, "w").close()
        ids = []
        for i in range(2):
            st, _, j = s.json("POST", "/generate/queue", {"prompt": "p%d" % i, "seed": i})
            self.assertEqual(st, 202, j)
            ids.append(j["request_id"])
        self.assertEqual(s.fluxcgi.wait(timeout=300), 1)  # on_fatal: exit status 1
        s.kill_fluxcgi()
        self.assertEqual(row(s, ids[0]), ("failed", "device_unavailable", 1))
        self.assertEqual(row(s, ids[1]), ("queued", None, 0))  # back in line, not failed
        log = s.log_text()
        self.assertIn("worker failed: 2 jobs in a row failed with a device or model runtime "
                      "error; last: injected device fault", log)
        self.assertIn("job %s: back in the queue after a device error" % ids[1], log)
        # the device is back: a restart runs the job that was put back
        os.remove(fault)
        s.start_fluxcgi()
        j = s.wait_state(ids[1], ("completed", "failed"))
        self.assertEqual((j["status"], j["attempts"]), ("completed", 1), j)

    def test_json_json_c_accepts(self):
        s = self.stack("json")
        for body in ('{"prompt":"a","prompt":"b"}', '{"prompt":"a\tb"}',
                     '{"prompt":"\\ud800"}'):
            st, _, j = s.json("POST", "/generate/queue", body)
            self.assertEqual((st, j.get("error", {}).get("code")), (400, "malformed"), (body, j))


if __name__ == "__main__":
    unittest.main()
