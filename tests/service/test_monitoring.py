"""Debian's Prometheus scraping fluxcgi's /metrics through real nginx, with the scrape
config of conf/prometheus.yml (its target moved to the test's nginx, a 1 s interval), and
`promtool check metrics` on the exposition itself."""
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
import unittest
import urllib.parse
import urllib.request

from tests.service import stack

COMPOSE_TARGET = '"nginx:8080"'  # the nginx service of docker/compose.yml


class Monitoring(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.s = stack.Stack("monitoring-nginx", "nginx").start()

    @classmethod
    def tearDownClass(cls):
        cls.s.stop()

    def test_promtool_finds_no_problems(self):
        promtool = stack.which_or_fail("promtool")
        # a finished job first, so that the histograms and counters have samples
        st, _, _ = self.s.request("POST", "/generate", {"prompt": "a fox", "seed": 1})
        self.assertEqual(st, 200)
        st, h, body = self.s.request("GET", "/metrics")
        self.assertEqual(st, 200)
        self.assertTrue(h["content-type"].startswith("text/plain; version=0.0.4"), h)
        res = subprocess.run([promtool, "check", "metrics"], input=body, capture_output=True)
        self.assertEqual(res.returncode, 0, res.stdout + res.stderr)
        self.assertEqual((res.stdout + res.stderr).strip(), b"")

    def test_prometheus_scrapes_through_nginx(self):
        prometheus = stack.which_or_fail("prometheus")
        promtool = stack.which_or_fail("promtool")
        work = tempfile.mkdtemp(prefix="prometheus-", dir=self.s.prefix)
        with open(os.path.join(stack.CONF, "prometheus.yml")) as f:
            text = f.read()
        self.assertEqual(text.count(COMPOSE_TARGET), 1)
        text = text.replace(COMPOSE_TARGET, '"127.0.0.1:%d"' % self.s.port)
        text, n = re.subn(r"(?m)^(\s*scrape_interval:).*$", r"\1 1s", text)
        self.assertEqual(n, 1)
        conf = os.path.join(work, "prometheus.yml")
        with open(conf, "w") as f:
            f.write(text)
        res = subprocess.run([promtool, "check", "config", conf], capture_output=True,
                             text=True)
        self.assertEqual(res.returncode, 0, res.stdout + res.stderr)

        port = stack.free_port()
        log = open(os.path.join(work, "prometheus.log"), "w")
        self.addCleanup(log.close)
        proc = subprocess.Popen([prometheus, "--config.file=" + conf,
                                 "--storage.tsdb.path=" + os.path.join(work, "data"),
                                 "--web.listen-address=127.0.0.1:%d" % port],
                                stdout=log, stderr=subprocess.STDOUT)

        def stop():
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            shutil.rmtree(work, ignore_errors=True)
        self.addCleanup(stop)

        def query(q):
            url = "http://127.0.0.1:%d/api/v1/query?%s" % (
                port, urllib.parse.urlencode({"query": q}))
            with urllib.request.urlopen(url, timeout=10) as r:
                j = json.load(r)
            self.assertEqual(j["status"], "success", j)
            return j["data"]["result"]

        # bounded wait: Prometheus starts, then scrapes every second
        deadline = time.time() + 90
        got = []
        while time.time() < deadline:
            self.assertIsNone(proc.poll(), "prometheus exited; see its log")
            try:
                got = query("fluxcgi_queue_depth")
            except OSError:
                got = []
            if got:
                break
            time.sleep(0.5)
        self.assertTrue(got, "no fluxcgi_queue_depth series within 90 s")
        self.assertEqual(got[0]["metric"]["job"], "fluxcgi")
        self.assertEqual(got[0]["metric"]["instance"], "127.0.0.1:%d" % self.s.port)
        self.assertEqual(got[0]["value"][1], "0")
        self.assertEqual([r["value"][1] for r in query('up{job="fluxcgi"}')], ["1"])
        self.assertEqual([r["value"][1] for r in query("fluxcgi_ready")], ["1"])


if __name__ == "__main__":
    unittest.main()
