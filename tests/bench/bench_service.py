"""make bench-service: wrk against fluxcgi behind nginx, against nginx answering by itself
(the ceiling of any FastCGI program behind it), and against the seed's FastAPI + uvicorn app,
on the same endpoints.  Not a test: it prints one table from one run.

  /nginx-ping      nginx's own `return 200` (a location the bench adds to its nginx)
  /ping            liveness, no database
  /queue/status    counts from SQLite (fluxcgi) / from a dict (FastAPI), with an empty
                   store and with 10 000 finished job rows in it
  POST /generate/queue   enqueue rate: fluxcgi commits each job durably (WAL, fsync) before
                   it answers 202; the FastAPI app appends to an in-memory deque

fluxcgi's worker is live while wrk runs (the queued jobs are 64x64, 1 step, with one libtorch
thread), as it would be in production.  Environment: FLUXCGI, FLUX_MODEL, SVC_TEST_DIR,
BENCH_SECONDS (default 5), BENCH_CONNECTIONS (default 32), BENCH_ROWS (default 10000).

FLUXCGI_BEFORE (another fluxcgi binary, e.g. one built from an earlier commit) adds a
before/after table to the same run: the fast endpoints (/ping, /queue/status) of both
binaries, each behind its own nginx, measured in turns (before, after, before, after) so that
a change in load on the machine falls on both alike.
"""
import json
import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
import tests.service.stack as stack_module  # noqa: E402
from tests.service.stack import Stack, free_port, which_or_fail  # noqa: E402

SECONDS = int(os.environ.get("BENCH_SECONDS", "5"))
CONNS = int(os.environ.get("BENCH_CONNECTIONS", "32"))
ROWS = int(os.environ.get("BENCH_ROWS", "10000"))
BODY = '{"prompt": "bench", "width": 64, "height": 64, "num_inference_steps": 1, "seed": 1}'
NGINX_PING = "    location = /nginx-ping {\n        default_type application/json;\n" \
             "        return 200 '{\"status\":\"ok\"}';\n    }\n"


def wrk(url, lua=None):
    cmd = [which_or_fail("wrk"), "-t2", "-c%d" % CONNS, "-d%ds" % SECONDS, "--latency", url]
    if lua:
        cmd[1:1] = ["-s", lua]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    p99 = re.search(r"99%\s+([\d.]+)(us|ms|s)", out)
    scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}[p99.group(2)]
    total = int(re.search(r"(\d+) requests in", out).group(1))
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    errors = (int(bad.group(1)) if bad else 0) + (sum(map(int, sock.groups())) if sock else 0)
    return rps, float(p99.group(1)) * scale, total, errors


def post_script():
    f = tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False)
    f.write('wrk.method = "POST"\nwrk.body = \'%s\'\n'
            'wrk.headers["Content-Type"] = "application/json"\n' % BODY)
    f.close()
    return f.name


def row(name, r):
    rps, p99, total, bad = r
    print("  %-48s %10.0f %10.2f %9d %6d" % (name, rps, p99, total, bad), flush=True)
    return r


def add_nginx_ping(s):
    """Adds /nginx-ping to the running nginx's site and reloads it (SIGHUP)."""
    path = os.path.join(s.prefix, "fluxcgi-site.conf")
    with open(path) as f:
        text = f.read()
    text = text.replace("    server_name _;\n", "    server_name _;\n" + NGINX_PING, 1)
    with open(path, "w") as f:
        f.write(text)
    s.web.send_signal(signal.SIGHUP)
    deadline = time.time() + 30
    while time.time() < deadline:
        try:
            st, _, b = s.request("GET", "/nginx-ping", timeout=5)
            if st == 200 and json.loads(b) == {"status": "ok"}:
                return
        except (OSError, ValueError):
            pass
        time.sleep(0.1)
    raise RuntimeError("nginx did not pick up /nginx-ping")


def fill_store(s, n):
    """n finished jobs (9 in 10 completed, the rest failed) written straight into the store's
    file, as a long-running service accumulates them within its retention."""
    now = int(time.time() * 1000)
    params = json.dumps({"prompt": "old", "width": 64, "height": 64,
                         "num_inference_steps": 1, "guidance_scale": 3.5, "seed": 1})
    con = sqlite3.connect(s.db, timeout=30)
    try:
        with con:
            con.executemany(
                "INSERT INTO jobs (id, kind, state, params, seed, steps, step, attempts, "
                "error_code, error_message, created_ms, started_ms, finished_ms) "
                "VALUES (?, 'queue', ?, ?, 1, 1, 1, 1, ?, ?, ?, ?, ?)",
                [("%032x" % (0xbe0c << 100 | i), "failed" if i % 10 == 9 else "completed", params,
                  "internal" if i % 10 == 9 else None, "bench" if i % 10 == 9 else None,
                  now, now, now) for i in range(n)])
    finally:
        con.close()


def main():
    lua = post_script()
    res = {}
    print("wrk -t2 -c%d -d%ds --latency, %d CPU cores; req/s, p99 latency in ms, requests, "
          "errors (non-2xx + socket)" % (CONNS, SECONDS, os.cpu_count()))
    print("  %-48s %10s %10s %9s %6s" % ("endpoint", "req/s", "p99 ms", "requests", "errors"))

    s = Stack("bench", "nginx", {"queue_size": "1000000", "cpu_threads": "1",
                                 "threads": "4"})
    try:
        s.start()
        add_nginx_ping(s)
        base = "http://127.0.0.1:%d" % s.port
        res["nginx"] = row("nginx alone     GET /nginx-ping", wrk(base + "/nginx-ping"))
        res["ping"] = row("fluxcgi+nginx   GET /ping", wrk(base + "/ping"))
        row("fluxcgi+nginx   GET /queue/status (empty)", wrk(base + "/queue/status"))
        fill_store(s, ROWS)
        res["status10k"] = row("fluxcgi+nginx   GET /queue/status (%dk rows)" % (ROWS // 1000),
                               wrk(base + "/queue/status"))
        row("fluxcgi+nginx   POST /generate/queue", wrk(base + "/generate/queue", lua))
        # with the queue now long: counts over many rows, the worker busy
        row("fluxcgi+nginx   GET /queue/status (after POSTs)", wrk(base + "/queue/status"))
    finally:
        s.stop()

    port = free_port()
    app = subprocess.Popen([sys.executable, os.path.join(os.path.dirname(__file__),
                                                         "seed_app.py"), str(port)])
    try:
        deadline = time.time() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.time() > deadline or app.poll() is not None:
                    raise RuntimeError("the FastAPI app did not start")
                time.sleep(0.1)
        base = "http://127.0.0.1:%d" % port
        res["fastapi"] = row("FastAPI+uvicorn GET /ping", wrk(base + "/ping"))
        row("FastAPI+uvicorn GET /queue/status", wrk(base + "/queue/status"))
        row("FastAPI+uvicorn POST /generate/queue", wrk(base + "/generate/queue", lua))
        row("FastAPI+uvicorn GET /queue/status (after POSTs)", wrk(base + "/queue/status"))
    finally:
        app.terminate()
        app.wait()
        os.unlink(lua)

    n, f, a = res["nginx"], res["ping"], res["fastapi"]
    print("GET /ping: fluxcgi+nginx does %.0f %% of nginx's own ceiling (%.0f of %.0f req/s; "
          "p99 %.2f vs %.2f ms) and %.1fx FastAPI+uvicorn (%.0f req/s, p99 %.2f ms)" % (
              100.0 * f[0] / n[0], f[0], n[0], f[1], n[1], f[0] / a[0], a[0], a[1]))


def before_after(before):
    """The fast endpoints of two binaries, in turns."""
    after = stack_module.FLUXCGI
    print("before/after: %s | %s" % (before, after))
    print("  %-48s %10s %10s %9s %6s" % ("endpoint", "req/s", "p99 ms", "requests", "errors"))
    for rnd in (1, 2):
        for label, binary in (("before", before), ("after", after)):
            stack_module.FLUXCGI = binary
            s = Stack("bench-%s" % label, "nginx", {"cpu_threads": "1", "threads": "4"})
            try:
                s.start()
                base = "http://127.0.0.1:%d" % s.port
                row("%-6s #%d  GET /ping" % (label, rnd), wrk(base + "/ping"))
                row("%-6s #%d  GET /queue/status" % (label, rnd), wrk(base + "/queue/status"))
            finally:
                s.stop()
    stack_module.FLUXCGI = after


if __name__ == "__main__":
    main()
    if os.environ.get("FLUXCGI_BEFORE"):
        before_after(os.environ["FLUXCGI_BEFORE"])
