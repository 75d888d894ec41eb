"""Load: many concurrent connections on the status endpoints, through real nginx and real
lighttpd.  LOAD_CONNS connections (default 1000) are opened at once; each sends
LOAD_REQUESTS (default 5) HTTP/1.1 requests over keep-alive, cycling through /ping,
/queue/status and /queue/status/{id} (a job made at the start), the last with
Connection: close.  Every answer must be 200 with a JSON body: 0 errors.  On failure the
breakdown (statuses, error bodies' codes, socket errors) is in the message.

`make load` is the long run: LOAD_SECONDS > 0 makes each connection send requests until that
many seconds have passed instead of LOAD_REQUESTS.

Plain asyncio streams, no extra packages.  Bounded: LOAD_TIMEOUT (default 60) seconds for
the whole run, plus LOAD_SECONDS.  The file limit of this process is raised for the client
sockets (nginx, started from here, inherits it; stack.py raises its worker_connections).
"""
import asyncio
import collections
import json
import os
import resource
import time
import unittest

from tests.service.stack import Stack

CONNS = int(os.environ.get("LOAD_CONNS", "1000"))
REQUESTS = int(os.environ.get("LOAD_REQUESTS", "5"))
SECONDS = float(os.environ.get("LOAD_SECONDS", "0"))
TIMEOUT = float(os.environ.get("LOAD_TIMEOUT", "60"))


def raise_nofile(need):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = need if hard == resource.RLIM_INFINITY else min(need, hard)
    if soft != resource.RLIM_INFINITY and soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


async def read_response(reader):
    """One HTTP/1.1 response: (status, headers dict with lower-case names, body bytes)."""
    line = await reader.readline()
    if not line:
        raise ConnectionError("connection closed before the status line")
    parts = line.decode("latin-1").split(" ", 2)
    status = int(parts[1])
    headers = {}
    while True:
        h = await reader.readline()
        if h in (b"\r\n", b"\n"):
            break
        if not h:
            raise ConnectionError("connection closed in the headers")
        k, _, v = h.decode("latin-1").partition(":")
        headers[k.strip().lower()] = v.strip()
    if "chunked" in headers.get("transfer-encoding", "").lower():
        body = b""
        while True:
            size = int((await reader.readline()).split(b";")[0], 16)
            if size == 0:
                while (await reader.readline()) not in (b"\r\n", b"\n", b""):
                    pass
                break
            body += await reader.readexactly(size)
            await reader.readline()
    elif "content-length" in headers:
        body = await reader.readexactly(int(headers["content-length"]))
    else:
        body = await reader.read()
    return status, headers, body


class Tally:
    def __init__(self):
        self.ok = 0
        self.errors = collections.Counter()
        self.samples = {}
        self.latencies = []

    def error(self, kind, sample=""):
        self.errors[kind] += 1
        self.samples.setdefault(kind, sample)

    def report(self):
        total = self.ok + sum(self.errors.values())
        lines = ["%d requests, %d ok, %d errors (%.1f %%)" % (
            total, self.ok, total - self.ok, 100.0 * (total - self.ok) / max(total, 1))]
        for kind, n in self.errors.most_common():
            lines.append("  %6d  %s   e.g. %s" % (n, kind, self.samples[kind][:160]))
        if self.latencies:
            lat = sorted(self.latencies)
            lines.append("  latency ms: p50 %.1f  p99 %.1f  max %.1f" % (
                lat[len(lat) // 2] * 1e3, lat[int(len(lat) * 0.99)] * 1e3, lat[-1] * 1e3))
        return "\n".join(lines)


async def client(port, paths, n, until, tally, start):
    await start.wait()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError as e:
        tally.error("connect: %s" % type(e).__name__, str(e))
        return
    try:
        i = 0
        while True:
            last = (i + 1 >= n) if not until else time.monotonic() >= until
            path = paths[i % len(paths)]
            writer.write(("GET %s HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: application/json\r\n"
                          "Connection: %s\r\n\r\n" % (path, "close" if last else "keep-alive")
                          ).encode())
            t0 = time.monotonic()
            try:
                await writer.drain()
                status, headers, body = await read_response(reader)
            except (OSError, ConnectionError, asyncio.IncompleteReadError, ValueError) as e:
                tally.error("%s: %s" % (path.split("/")[1] or "/", type(e).__name__), str(e))
                return
            tally.latencies.append(time.monotonic() - t0)
            kind = None
            try:
                doc = json.loads(body)
            except ValueError:
                doc = None
                kind = "%d, not JSON" % status
            if status != 200 and kind is None:
                code = doc.get("error", {}).get("code") if isinstance(doc, dict) else None
                kind = "%d %s" % (status, code)
            if kind:
                tally.error(kind, "%s -> %r" % (path, body[:120]))
            else:
                tally.ok += 1
            i += 1
            if last or headers.get("connection", "").lower() == "close":
                if not last:
                    tally.error("closed by the server early", path)
                return
    finally:
        writer.close()
        try:
            await writer.wait_closed()
        except OSError:
            pass


async def run_load(port, paths):
    tally = Tally()
    start = asyncio.Event()
    until = time.monotonic() + SECONDS if SECONDS > 0 else None
    tasks = [asyncio.ensure_future(client(port, paths, REQUESTS, until, tally, start))
             for _ in range(CONNS)]
    await asyncio.sleep(0)
    start.set()  # all at once
    done, pending = await asyncio.wait(tasks, timeout=TIMEOUT + max(SECONDS, 0))
    for t in pending:
        t.cancel()
        tally.error("no answer within the run's %.0f s" % (TIMEOUT + SECONDS))
    await asyncio.gather(*pending, return_exceptions=True)
    for t in done:
        if t.exception():
            tally.error("client: %s" % type(t.exception()).__name__, str(t.exception()))
    return tally


class Load:
    server = None

    def test_status_endpoints_under_load(self):
        limit = raise_nofile(4 * CONNS + 256)
        self.assertGreaterEqual(limit, CONNS + 64, "RLIMIT_NOFILE too low for the clients")
        s = Stack("load-%s" % self.server, self.server)
        self.addCleanup(s.stop)
        s.start()
        st, _, j = s.json("POST", "/generate/queue", {"prompt": "load", "seed": 1})
        self.assertEqual(st, 202, j)
        paths = ["/ping", "/queue/status", "/queue/status/" + j["request_id"]]
        t0 = time.monotonic()
        tally = asyncio.run(run_load(s.port, paths))
        took = time.monotonic() - t0
        print("\n  load %s: %d connections: %s (%.1f s)" % (
            self.server, CONNS, tally.report(), took))
        self.assertEqual(sum(tally.errors.values()), 0,
                         "%s, %d connections:\n%s" % (self.server, CONNS, tally.report()))
        self.assertGreater(tally.ok, 0)
        # and the service is still there
        self.assertEqual(s.json("GET", "/ping")[0], 200)


class TestLoadNginx(Load, unittest.TestCase):
    server = "nginx"


class TestLoadLighttpd(Load, unittest.TestCase):
    server = "lighttpd"


if __name__ == "__main__":
    unittest.main()
