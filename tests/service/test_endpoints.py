"""Every endpoint of docs/api.md, happy paths and errors, through real nginx and real
lighttpd (and once through spawn-fcgi handing fluxcgi its socket on fd 0)."""
import json
import re
import unittest

from tests.service.stack import Stack

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
ID_RE = re.compile(r"^[0-9a-f]{32}$")
# A job long enough to be seen running and cancelled (the tiny model on the CPU).
LONG = {"prompt": "a long job", "width": 256, "height": 256, "num_inference_steps": 100,
        "seed": 5}


class Endpoints:
    server = None
    spawn = False

    @classmethod
    def setUpClass(cls):
        name = "endpoints-%s%s" % (cls.server, "-spawn" if cls.spawn else "")
        cls.s = Stack(name, cls.server, spawn=cls.spawn).start()

    @classmethod
    def tearDownClass(cls):
        cls.s.stop()

    def error(self, st, body, status, code):
        self.assertEqual(st, status, body)
        j = json.loads(body)
        self.assertEqual(j["error"]["code"], code, body)
        self.assertTrue(j["error"]["message"], body)
        return j

    def test_ping(self):
        st, h, j = self.s.json("GET", "/ping")
        self.assertEqual(st, 200)
        self.assertEqual(h["content-type"], "application/json")
        self.assertEqual(j["status"], "ok")
        self.assertIs(j["ready"], True)
        self.assertEqual(j["model"], "flux-tiny")
        self.assertEqual(j["device"], "cpu")
        self.assertEqual(j["placement"], "resident")  # the default
        self.assertEqual(j["weights"], "fp32")

    def test_generate_sync(self):
        st, h, b = self.s.request("POST", "/generate", {
            "prompt": "a photo of a cat", "guidance_scale": 3.5, "num_inference_steps": 2,
            "width": 64, "height": 80, "seed": 11})
        self.assertEqual(st, 200, b[:300])
        self.assertEqual(h["content-type"], "image/png")
        self.assertTrue(b.startswith(PNG_MAGIC))
        self.assertRegex(h["x-request-id"], ID_RE)
        self.assertEqual(h["x-seed"], "11")
        # width 64, height 80 in the IHDR chunk
        self.assertEqual(int.from_bytes(b[16:20], "big"), 64)
        self.assertEqual(int.from_bytes(b[20:24], "big"), 80)
        # the sync job is an ordinary job: its status and result stay readable
        rid = h["x-request-id"]
        st, _, j = self.s.json("GET", "/queue/status/" + rid)
        self.assertEqual((st, j["status"], j["progress"]), (200, "completed",
                                                           {"step": 2, "steps": 2}))
        st, _, b2 = self.s.request("GET", "/result/" + rid)
        self.assertEqual((st, b2), (200, b))

    def test_sync_and_queued_are_identical(self):
        params = {"prompt": "a red bicycle", "width": 64, "height": 64, "seed": 1234,
                  "num_inference_steps": 3, "guidance_scale": 4.25}
        st, h, sync_png = self.s.request("POST", "/generate", params)
        self.assertEqual(st, 200, sync_png[:300])
        st, h, j = self.s.json("POST", "/generate/queue", params)
        self.assertEqual(st, 202, j)
        self.s.wait_state(j["request_id"], ("completed",))
        st, h, queued_png = self.s.request("GET", "/result/" + j["request_id"])
        self.assertEqual(st, 200)
        self.assertEqual(h["x-seed"], "1234")
        self.assertEqual(queued_png, sync_png)

    def test_random_seed_is_reported_and_reproducible(self):
        st, h, b = self.s.request("POST", "/generate", {"prompt": "a seed", "width": 64,
                                                        "height": 64})
        self.assertEqual(st, 200, b[:300])
        seed = int(h["x-seed"])
        self.assertTrue(0 <= seed <= 2 ** 53 - 1)
        st, h2, b2 = self.s.request("POST", "/generate", {"prompt": "a seed", "width": 64,
                                                          "height": 64, "seed": seed})
        self.assertEqual((st, h2["x-seed"], b2), (200, str(seed), b))

    def test_queue_flow(self):
        st, h, j = self.s.json("POST", "/generate/queue", {
            "prompt": "a queued dog", "width": 96, "height": 64, "seed": 3})
        self.assertEqual(st, 202, j)
        rid = j["request_id"]
        self.assertRegex(rid, ID_RE)
        self.assertEqual(j["status"], "queued")
        self.assertGreaterEqual(j["position"], 1)
        self.assertEqual(j["seed"], 3)
        self.assertEqual(h["location"], "/queue/status/" + rid)
        done = self.s.wait_state(rid, ("completed",))
        self.assertEqual(done["progress"], {"step": 2, "steps": 2})
        self.assertEqual(done["position"], 0)
        self.assertIsNone(done["error"])
        for k in ("created_at", "started_at", "finished_at", "expires_at"):
            self.assertRegex(done[k], r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
        st, h, b = self.s.request("GET", done["result_url"])
        self.assertEqual(st, 200)
        self.assertEqual(h["content-type"], "image/png")
        self.assertEqual(h["x-request-id"], rid)
        self.assertEqual(h["x-seed"], "3")
        self.assertTrue(b.startswith(PNG_MAGIC))

    def test_queue_status_counts(self):
        st, _, j = self.s.json("GET", "/queue/status")
        self.assertEqual(st, 200)
        for k in ("queued", "running", "completed", "failed", "cancelled", "expired"):
            self.assertIsInstance(j[k], int)
        self.assertEqual(j["capacity"], 10)
        self.assertIs(j["ready"], True)

    def test_cancel_queued_and_running(self):
        st, _, a = self.s.json("POST", "/generate/queue", LONG)
        self.assertEqual(st, 202, a)
        st, _, b = self.s.json("POST", "/generate/queue", dict(LONG, seed=6))
        self.assertEqual(st, 202, b)
        a, b = a["request_id"], b["request_id"]
        # a not finished result: 409 with the status
        st, _, body = self.s.request("GET", "/result/" + b)
        j = self.error(st, body, 409, "not_finished")
        self.assertEqual(j["status"], "queued")
        # wait until a has done a step, then cancel the queued one and the running one
        deadline = self.s.wait_state(a, ("running",))
        while deadline["progress"]["step"] < 1:
            deadline = self.s.wait_state(a, ("running",))
        st, _, j = self.s.json("DELETE", "/queue/" + b)
        self.assertEqual((st, j["status"]), (200, "cancelled"), j)
        st, _, j = self.s.json("DELETE", "/queue/" + a)
        self.assertEqual(st, 202, j)
        self.assertIn(j["status"], ("running", "cancelled"))
        j = self.s.wait_state(a, ("cancelled", "completed", "failed"))
        self.assertEqual(j["status"], "cancelled")
        self.assertEqual(j["error"]["code"], "cancelled")
        self.assertLess(j["progress"]["step"], 100)
        st, _, body = self.s.request("GET", "/result/" + a)
        self.error(st, body, 409, "cancelled")
        st, _, body = self.s.request("DELETE", "/queue/" + a)
        self.error(st, body, 409, "already_finished")
        st, _, body = self.s.request("GET", "/result/" + b)
        self.error(st, body, 409, "cancelled")

    def test_metrics(self):
        self.s.request("POST", "/generate", {"prompt": "m", "width": 64, "height": 64})
        st, h, b = self.s.request("GET", "/metrics")
        self.assertEqual(st, 200)
        self.assertTrue(h["content-type"].startswith("text/plain"))
        text = b.decode()
        for name in ("fluxcgi_queue_depth", "fluxcgi_jobs{state=\"completed\"}",
                     "fluxcgi_step_seconds_bucket{le=\"+Inf\"}", "fluxcgi_step_seconds_count",
                     "fluxcgi_job_seconds_bucket{le=\"+Inf\"}", "fluxcgi_job_seconds_sum",
                     "fluxcgi_ready 1",
                     "fluxcgi_placement_info{placement=\"resident\",weights=\"fp32\"} 1"):
            self.assertIn(name, text)
        count = int(re.search(r"^fluxcgi_job_seconds_count (\d+)$", text, re.M).group(1))
        self.assertGreaterEqual(count, 1)

    def test_errors(self):
        rid = "0123456789abcdef0123456789abcdef"
        for method, path, status, code in [
                ("GET", "/queue/status/" + rid, 404, "not_found"),
                ("GET", "/result/" + rid, 404, "not_found"),
                ("DELETE", "/queue/" + rid, 404, "not_found"),
                ("GET", "/queue/status/XYZ", 400, "invalid_id"),
                ("GET", "/nothing-here", 404, "not_found"),
                ("GET", "/generate", 405, "method_not_allowed"),
                ("PUT", "/generate/queue", 405, "method_not_allowed"),
                ("POST", "/queue/status", 405, "method_not_allowed"),
                ("DELETE", "/ping", 405, "method_not_allowed")]:
            st, h, body = self.s.request(method, path, b"{}" if method in ("POST", "PUT")
                                         else None)
            self.error(st, body, status, code)
            if status == 405:
                self.assertIn("allow", h)
        st, _, body = self.s.request("POST", "/generate", {"prompt": "x", "width": 65})
        j = self.error(st, body, 422, "out_of_range")
        self.assertTrue(j["error"]["message"].startswith("width"))
        st, _, body = self.s.request("POST", "/generate/queue", b"{not json")
        self.error(st, body, 400, "malformed")
        st, _, body = self.s.request("POST", "/generate/queue", b"x" * (64 * 1024 + 1))
        self.error(st, body, 413, "too_large")


class TestEndpointsNginx(Endpoints, unittest.TestCase):
    server = "nginx"


class TestEndpointsLighttpd(Endpoints, unittest.TestCase):
    server = "lighttpd"


class TestSpawnFcgi(unittest.TestCase):
    """fluxcgi without a socket key accepts on fd 0, as spawn-fcgi and lighttpd's bin-path
    hand it over; served here through nginx."""

    def test_fd0(self):
        s = Stack("spawn-fcgi", "nginx", spawn=True)
        try:
            s.start()
            st, _, j = s.json("GET", "/ping")
            self.assertEqual((st, j["status"]), (200, "ok"))
            st, h, b = s.request("POST", "/generate", {"prompt": "fd 0", "seed": 1})
            self.assertEqual(st, 200, b[:200])
            self.assertTrue(b.startswith(PNG_MAGIC))
        finally:
            s.stop()


if __name__ == "__main__":
    unittest.main()
