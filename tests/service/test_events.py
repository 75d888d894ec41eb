"""GET /queue/events/{id}: a job's progress as Server-Sent Events, through nginx and lighttpd.

The stream must arrive as the job moves, not buffered to the end by the web server: the
test reads events off the socket while the job runs and checks, at the first `progress`
event, that the job is still running.  Events are parsed by the rules of the SSE format
(event/data lines, a blank line ends an event, lines starting with ':' are comments).
"""
import http.client
import json
import threading
import unittest

from tests.service.stack import Stack

JOB = {"prompt": "a stream of steps", "width": 128, "height": 128, "num_inference_steps": 12,
       "seed": 11}


def read_events(port, rid, on_event, timeout=120):
    """Reads the stream until it ends; calls on_event(name, data) for each event; returns
    (status, headers, [(name, data)], comments)."""
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    c.request("GET", "/queue/events/" + rid, headers={"Accept": "text/event-stream"})
    r = c.getresponse()
    headers = {k.lower(): v for k, v in r.getheaders()}
    events, comments, name, data = [], [], "message", []
    if r.status != 200:
        body = r.read()
        c.close()
        return r.status, headers, [("error", body)], comments
    while True:
        line = r.readline()
        if not line:
            break
        line = line.decode().rstrip("\r\n")
        if line == "":
            if data:
                ev = (name, json.loads("\n".join(data)))
                events.append(ev)
                on_event(*ev)
            name, data = "message", []
        elif line.startswith(":"):
            comments.append(line)
        elif line.startswith("event:"):
            name = line[6:].strip()
        elif line.startswith("data:"):
            data.append(line[5:].lstrip())
    c.close()
    return r.status, headers, events, comments


class EventsBase:
    server = None

    @classmethod
    def setUpClass(cls):
        cls.s = Stack("events-" + cls.server, cls.server).start()

    @classmethod
    def tearDownClass(cls):
        cls.s.stop()

    def test_progress_arrives_while_the_job_runs(self):
        st, _, j = self.s.json("POST", "/generate/queue", JOB)
        self.assertEqual(st, 202, j)
        rid = j["request_id"]
        seen_running = []

        def on_event(name, data):
            if name == "progress" and not seen_running:
                # streamed, not buffered: the job is still running at its first step event
                _, _, now = self.s.json("GET", "/queue/status/" + rid)
                seen_running.append(now["status"])

        status, headers, events, _ = read_events(self.s.port, rid, on_event)
        self.assertEqual(status, 200)
        self.assertTrue(headers["content-type"].startswith("text/event-stream"))
        names = [n for n, _ in events]
        self.assertEqual(names[0], "state")
        self.assertEqual(names[-1], "end")
        self.assertEqual(names.count("end"), 1)
        self.assertIn("progress", names)
        # steps only go up; the last ones may come with `end` (events follow the store a few
        # times a second, so two steps can fall into one look)
        steps = [d["progress"]["step"] for n, d in events]
        self.assertEqual(steps, sorted(steps))
        self.assertEqual(steps[-1], JOB["num_inference_steps"])
        running = [d for n, d in events if d["status"] == "running" and d["progress"]["step"]]
        self.assertTrue(all(isinstance(d["eta_s"], (int, float)) for d in running))
        end = events[-1][1]
        self.assertEqual(end["status"], "completed")
        self.assertEqual(end["result_url"], "/result/" + rid)
        self.assertEqual(seen_running[:1], ["running"])
        st, _, png = self.s.request("GET", end["result_url"])
        self.assertEqual((st, png[:4]), (200, b"\x89PNG"))

    def test_finished_and_unknown_jobs(self):
        st, _, j = self.s.json("POST", "/generate/queue", dict(JOB, num_inference_steps=1))
        rid = j["request_id"]
        self.s.wait_state(rid, ("completed",), timeout=120)
        status, _, events, _ = read_events(self.s.port, rid, lambda *a: None)
        self.assertEqual(status, 200)
        self.assertEqual([n for n, _ in events], ["end"])
        self.assertEqual(events[0][1]["status"], "completed")
        status, _, events, _ = read_events(self.s.port, "0" * 32, lambda *a: None)
        self.assertEqual(status, 404)
        status, _, events, _ = read_events(self.s.port, "not-an-id", lambda *a: None)
        self.assertEqual(status, 400)

    def test_cancel_ends_the_stream(self):
        st, _, j = self.s.json("POST", "/generate/queue", dict(JOB, num_inference_steps=40,
                                                                width=256, height=256))
        rid = j["request_id"]
        result = {}

        def reader():
            result["r"] = read_events(self.s.port, rid, lambda *a: None)

        t = threading.Thread(target=reader)
        t.start()
        self.s.wait_state(rid, ("running",), timeout=120)
        st, _, _ = self.s.json("DELETE", "/queue/" + rid)
        self.assertIn(st, (200, 202))
        t.join(timeout=120)
        self.assertFalse(t.is_alive())
        status, _, events, _ = result["r"]
        self.assertEqual(events[-1][0], "end")
        self.assertEqual(events[-1][1]["status"], "cancelled")


class EventsNginx(EventsBase, unittest.TestCase):
    server = "nginx"


class EventsLighttpd(EventsBase, unittest.TestCase):
    server = "lighttpd"


if __name__ == "__main__":
    unittest.main()
