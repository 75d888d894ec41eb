"""Jobs across hosts (docs/operations.md): two fluxcgi, each with its own SQLite file and
its own id_prefix, behind one real nginx filled from conf/fluxcgi-hosts-site.conf, which
routes status, result and cancel requests by the host part of the id."""
import json
import os
import re
import signal
import sqlite3
import subprocess
import time
import unittest

from tests.service import stack
from tests.service.stack import Stack

JOB = {"prompt": "a lighthouse", "width": 64, "height": 64, "num_inference_steps": 1}


class Hosts(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.h1 = Stack("hosts-h1", None, {"id_prefix": "h1"})
        cls.h2 = Stack("hosts-h2", None, {"id_prefix": "h2"})
        cls.h1.start()
        cls.h2.start()
        cls.front = Stack("hosts-front", None)   # only for its prefix, port and HTTP helpers
        p = cls.front.prefix
        user = "user %s;" % os.environ.get("USER", "root") if os.geteuid() == 0 else ""
        with open(os.path.join(p, "nginx.conf"), "w") as f:
            f.write(stack.render("nginx.conf", {"PREFIX": p, "USER": user}))
        with open(os.path.join(p, "fluxcgi-site.conf"), "w") as f:
            f.write(stack.render("fluxcgi-hosts-site.conf", {
                "LISTEN": "127.0.0.1:%d" % cls.front.port, "CONF": stack.CONF,
                "H1": "h1", "ADDR1": "unix:" + cls.h1.socket,
                "H2": "h2", "ADDR2": "unix:" + cls.h2.socket}))
        for d in ("body", "fastcgi", "proxy", "uwsgi", "scgi"):
            os.makedirs(os.path.join(p, "tmp", d), exist_ok=True)
        cls.nginx = subprocess.Popen(
            [stack.which_or_fail("nginx"), "-p", p, "-c", os.path.join(p, "nginx.conf"),
             "-e", os.path.join(p, "logs", "nginx-error.log")],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.time() + 120
        ready = 0
        while ready < 4:   # both backends answer "ok" (round robin), several times over
            if time.time() > deadline or cls.nginx.poll() is not None:
                raise RuntimeError("front nginx or the backends not ready")
            try:
                st, _, j = cls.front.json("GET", "/ping")
                ready = ready + 1 if st == 200 and j["status"] == "ok" else 0
            except (OSError, ValueError):
                ready = 0
            time.sleep(0.05)

    @classmethod
    def tearDownClass(cls):
        cls.nginx.send_signal(signal.SIGTERM)
        cls.nginx.wait(timeout=10)
        cls.nginx.stderr.close()
        for s in (cls.h1, cls.h2):
            s.stop()

    def ids_in(self, s):
        with sqlite3.connect(s.db) as db:
            return {r[0] for r in db.execute("SELECT id FROM jobs")}

    def test_jobs_are_spread_and_found_by_their_host(self):
        ids = []
        for i in range(6):
            st, h, j = self.front.json("POST", "/generate/queue", dict(JOB, seed=i))
            self.assertEqual(st, 202, j)
            self.assertRegex(j["request_id"], r"^h[12]-[0-9a-f]{32}$")
            self.assertEqual(h["location"], "/queue/status/" + j["request_id"])
            ids.append(j["request_id"])
        self.assertEqual({i[:2] for i in ids}, {"h1", "h2"})
        for rid in ids:
            self.front.wait_state(rid, ("completed",))
            st, h, body = self.front.request("GET", "/result/" + rid)
            self.assertEqual((st, h["content-type"]), (200, "image/png"), body[:200])
        self.assertEqual(self.ids_in(self.h1), {i for i in ids if i.startswith("h1-")} |
                         (self.ids_in(self.h1) - set(ids)))
        self.assertTrue({i for i in ids if i.startswith("h2-")} <= self.ids_in(self.h2))
        self.assertFalse({i for i in ids if i.startswith("h2-")} & self.ids_in(self.h1))

    def test_cancel_goes_to_the_owner(self):
        st, _, j = self.front.json("POST", "/generate/queue", dict(JOB, seed=99))
        rid = j["request_id"]
        st, _, body = self.front.request("DELETE", "/queue/" + rid)
        self.assertIn(st, (200, 202, 409), body)   # 409: it finished first
        j = self.front.wait_state(rid, ("cancelled", "completed"))
        self.assertIn(j["status"], ("cancelled", "completed"))

    def test_unknown_host_and_bad_ids(self):
        st, h, body = self.front.request("GET", "/queue/status/h9-" + "0" * 32)
        self.assertEqual(st, 404)
        self.assertEqual(h["content-type"], "application/json")
        self.assertEqual(json.loads(body)["error"]["code"], "not_found")
        st, _, body = self.front.request("GET", "/queue/status/H1-" + "0" * 32)
        self.assertEqual(st, 400)
        self.assertEqual(json.loads(body)["error"]["code"], "invalid_id")
        st, _, body = self.front.request("GET", "/queue/status/h1-" + "0" * 32)
        self.assertEqual(st, 404)
        self.assertTrue(re.search(r"h1-0{32}", json.loads(body)["error"]["message"]))


if __name__ == "__main__":
    unittest.main()
