"""Chaos: kill -9 of fluxcgi at every phase of a job's life, through real nginx.

CHAOS_JOBS jobs (default 12; `make chaos` runs more) on the tiny model, small sizes, fixed
seeds, are submitted while fluxcgi is killed at random (a fixed random seed, CHAOS_SEED)
and restarted each time:
  submit     while submissions are in flight (an answer cut off is "unknown", not accepted)
  loading    during the model load / warm-up after a restart
  queued     right after the restart, with jobs waiting
  running    while a job is mid-generation (at least one step done)
  completed  right after a job completed
then the jobs run to the end undisturbed.  Afterwards: every accepted id is completed (0
lost), no request became two jobs and no job has two images (0 duplicated), and every
image is a valid PNG byte-identical to a crash-free run of the same request (the same
requests again, after the chaos, with no kill).

Environment: as stack.py, plus CHAOS_JOBS, CHAOS_SEED, CHAOS_KILLS (default 2/3 of the jobs,
at least 8).  Bounded: each wait has a deadline; the whole run is about 1-2 minutes with 12
jobs on two CPU cores.
"""
import collections
import io
import json
import os
import random
import signal
import sqlite3
import threading
import time
import unittest

from tests.service.stack import Stack

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
JOBS = int(os.environ.get("CHAOS_JOBS", "12"))
SEED = int(os.environ.get("CHAOS_SEED", "1"))
KILLS = int(os.environ.get("CHAOS_KILLS", str(max(8, JOBS * 2 // 3))))
PHASES = ("submit", "loading", "queued", "running", "completed")


def job(i):
    """The i-th request: small, fixed seed; some long enough to be caught running."""
    big = i % 3 == 0
    return {"prompt": "chaos job %d" % i, "width": 128 if big else 64,
            "height": 128 if big else 64, "num_inference_steps": 3 + (i % 4) * 2,
            "seed": 1000 + i}


def db(stack, sql, args=()):
    con = sqlite3.connect("file:%s?mode=ro" % stack.db, uri=True, timeout=30)
    try:
        return con.execute(sql, args).fetchall()
    finally:
        con.close()


def valid_png(data):
    """True when data is a PNG that decodes (PIL when present, else the chunk structure)."""
    if not data.startswith(PNG_MAGIC):
        return False
    try:
        from PIL import Image
    except ImportError:
        return data.endswith(b"IEND\xaeB`\x82")
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            return im.size[0] > 0
    except Exception:  # noqa: BLE001 - any decoding error means invalid
        return False


class TestChaos(unittest.TestCase):
    def setUp(self):
        # max_attempts at its top: a job killed while running many times must still finish
        self.s = Stack("chaos", "nginx", {"max_attempts": "100", "queue_size": str(4 * JOBS),
                                          "cpu_threads": "1"})
        self.addCleanup(self.s.stop)
        self.s.start()
        self.rng = random.Random(SEED)
        self.accepted = {}                      # request id -> job index
        self.unknown = collections.Counter()    # job index -> submissions without an answer
        self.pending = list(range(JOBS))        # job indexes not yet accepted
        self.kills = collections.Counter()
        self.refused = []                       # answers other than 202 or a gateway error

    # ---- helpers ----------------------------------------------------------------------------

    def submit(self, i):
        """One submission; an answer cut off by a kill is counted as unknown."""
        try:
            st, _, j = self.s.json("POST", "/generate/queue", job(i), timeout=60)
        except (OSError, ValueError):
            st, j = None, None
        if st == 202:
            self.accepted[j["request_id"]] = i
            return True
        # nginx's 502/504 while fluxcgi is down or dies mid-request: the job may exist.
        # (Checked by the test's own thread: submit also runs in helper threads.)
        if st not in (None, 502, 503, 504):
            self.refused.append((i, st, j))
        self.unknown[i] += 1
        return False

    def states(self):
        return dict(db(self.s, "SELECT id, state FROM jobs"))

    def wait_for(self, cond, timeout=60):
        deadline = time.time() + timeout
        while time.time() < deadline:
            if cond():
                return True
            time.sleep(0.01)
        return False

    def kill(self, phase):
        self.s.kill_fluxcgi(signal.SIGKILL)
        self.kills[phase] += 1

    def restart(self):
        self.s.start_fluxcgi(wait_ready=True)

    # ---- phases -----------------------------------------------------------------------------

    def phase_submit(self):
        batch = self.pending[:self.rng.randint(1, 4)]
        threads = [threading.Thread(target=self.submit, args=(i,)) for i in batch]
        for t in threads:
            t.start()
        time.sleep(self.rng.uniform(0, 0.05))
        self.kill("submit")
        for t in threads:
            t.join(90)
        self.pending = [i for i in self.pending if i not in self.accepted.values()]
        self.restart()

    def phase_loading(self):
        self.s.kill_fluxcgi(signal.SIGKILL)
        self.kills["restart"] += 1
        self.s.start_fluxcgi(wait_ready=False)
        time.sleep(self.rng.uniform(0, 1.0))
        self.kill("loading")
        self.restart()

    def phase_queued(self):
        if self.pending:
            self.submit(self.pending.pop(0))
        time.sleep(self.rng.uniform(0, 0.2))
        if "queued" in self.states().values():
            self.kill("queued")
            self.restart()

    def phase_running(self):
        if self.wait_for(lambda: db(self.s, "SELECT 1 FROM jobs WHERE state = 'running' "
                                            "AND step >= 1"), timeout=30):
            self.kill("running")
            self.restart()

    def phase_completed(self):
        done = len(db(self.s, "SELECT 1 FROM jobs WHERE state = 'completed'"))
        total = len(self.states())
        if done < total and self.wait_for(lambda: len(db(
                self.s, "SELECT 1 FROM jobs WHERE state = 'completed'")) > done, timeout=60):
            self.kill("completed")
            self.restart()

    # ---- the test ---------------------------------------------------------------------------

    def test_kill9_at_every_phase(self):
        s = self.s
        # a first batch, so that there is something to kill at every phase
        for i in list(self.pending[:max(3, JOBS // 3)]):
            self.submit(i)
        self.pending = [i for i in self.pending if i not in self.accepted.values()]
        order = list(PHASES) + [self.rng.choice(PHASES) for _ in range(max(0, KILLS - 5))]
        for phase in order:
            getattr(self, "phase_" + phase)()
        # the rest (and those whose answers were cut off) without kills
        for i in list(self.pending):
            for _ in range(5):
                if self.submit(i):
                    break
            else:
                self.fail("job %d never accepted" % i)
        deadline = time.time() + 60 + 10 * JOBS
        while time.time() < deadline:
            if all(v in ("completed", "failed", "cancelled", "expired")
                   for v in self.states().values()):
                break
            time.sleep(0.1)
        rows = db(s, "SELECT id, state, attempts, json_extract(params, '$.prompt'), "
                     "(SELECT count(*) FROM results r WHERE r.job_seq = j.seq) FROM jobs j")
        self.assertEqual(self.refused, [], "submissions refused")
        summary = "kills %s; %d accepted, %d unknown answers" % (
            dict(self.kills), len(self.accepted), sum(self.unknown.values()))
        print("\n  chaos: %s; attempts %s" % (
            summary, dict(collections.Counter(r[2] for r in rows))))

        # 0 lost: every accepted id is completed, with one image
        by_id = {r[0]: r for r in rows}
        lost = [rid for rid in self.accepted if by_id.get(rid, (0, None))[1] != "completed"]
        self.assertEqual(lost, [], "%s; lost: %s" % (summary, [by_id.get(r) for r in lost]))
        self.assertEqual(sorted(self.accepted.values()), list(range(JOBS)), summary)
        # 0 duplicated: a job index has one row per accepted submission plus at most one per
        # submission whose answer was cut off; every row is completed with exactly one image
        per_prompt = collections.Counter(r[3] for r in rows)
        for i in range(JOBS):
            n = per_prompt[job(i)["prompt"]]
            self.assertLessEqual(n, 1 + self.unknown[i], "job %d has %d rows" % (i, n))
        for r in rows:
            self.assertEqual((r[1], r[4]), ("completed", 1), r)
        # a crash-free run of the same requests, after the chaos
        ref = {}
        for i in range(JOBS):
            st, _, j = s.json("POST", "/generate/queue", job(i))
            self.assertEqual(st, 202, j)
            ref[i] = j["request_id"]
        for i, rid in ref.items():
            self.assertEqual(s.wait_state(rid, ("completed", "failed"), timeout=120)["status"],
                             "completed")
        for rid, i in sorted(self.accepted.items(), key=lambda kv: kv[1]):
            st, h, png = s.request("GET", "/result/" + rid)
            self.assertEqual(st, 200, png[:200])
            self.assertTrue(valid_png(png), "job %d: not a valid PNG" % i)
            self.assertEqual(h.get("x-seed"), str(job(i)["seed"]))
            st, _, want = s.request("GET", "/result/" + ref[i])
            self.assertEqual(st, 200)
            self.assertEqual(png, want, "job %d: the image differs from a crash-free run" % i)
        # the service still counts right: nothing is left queued or running
        st, _, q = s.json("GET", "/queue/status")
        self.assertEqual((st, q["queued"], q["running"]), (200, 0, 0), q)


if __name__ == "__main__":
    unittest.main()
