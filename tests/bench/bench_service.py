"""make bench-service: wrk against fluxcgi behind nginx and against the seed's FastAPI +
uvicorn app, on the same endpoints.  Not a test: it prints a table.

  /ping            liveness, no database
  /queue/status    counts from SQLite (fluxcgi) / from a dict (FastAPI)
  POST /generate/queue   enqueue rate: fluxcgi commits each job durably (WAL, fsync) before
                   it answers 202; the FastAPI app appends to an in-memory deque

fluxcgi's worker is live while wrk runs (the queued jobs are 64x64, 1 step, with one libtorch
thread), as it would be in production.  Environment: FLUXCGI, FLUX_MODEL, SVC_TEST_DIR,
BENCH_SECONDS (default 5), BENCH_CONNECTIONS (default 32).
"""
import os
import re
import socket
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
from tests.service.stack import Stack, free_port, which_or_fail  # noqa: E402

SECONDS = int(os.environ.get("BENCH_SECONDS", "5"))
CONNS = int(os.environ.get("BENCH_CONNECTIONS", "32"))
BODY = '{"prompt": "bench", "width": 64, "height": 64, "num_inference_steps": 1, "seed": 1}'


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
    return rps, float(p99.group(1)) * scale, total, int(bad.group(1)) if bad else 0


def post_script():
    f = tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False)
    f.write('wrk.method = "POST"\nwrk.body = \'%s\'\n'
            'wrk.headers["Content-Type"] = "application/json"\n' % BODY)
    f.close()
    return f.name


def row(name, r):
    rps, p99, total, bad = r
    print("  %-34s %10.0f %10.2f %9d %6d" % (name, rps, p99, total, bad))


def main():
    lua = post_script()
    print("wrk -t2 -c%d -d%ds, %d CPU cores; req/s, p99 latency in ms, requests, non-2xx"
          % (CONNS, SECONDS, os.cpu_count()))
    print("  %-34s %10s %10s %9s %6s" % ("endpoint", "req/s", "p99 ms", "requests", "errors"))

    s = Stack("bench", "nginx", {"queue_size": "1000000", "cpu_threads": "1",
                                 "threads": "4"})
    try:
        s.start()
        base = "http://127.0.0.1:%d" % s.port
        row("fluxcgi+nginx  GET /ping", wrk(base + "/ping"))
        row("fluxcgi+nginx  GET /queue/status", wrk(base + "/queue/status"))
        row("fluxcgi+nginx  POST /generate/queue", wrk(base + "/generate/queue", lua))
        # with the queue now long: counts over many rows
        row("fluxcgi+nginx  GET /queue/status (full)", wrk(base + "/queue/status"))
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
        row("FastAPI+uvicorn GET /ping", wrk(base + "/ping"))
        row("FastAPI+uvicorn GET /queue/status", wrk(base + "/queue/status"))
        row("FastAPI+uvicorn POST /generate/queue", wrk(base + "/generate/queue", lua))
        row("FastAPI+uvicorn GET /queue/status (full)", wrk(base + "/queue/status"))
    finally:
        app.terminate()
        app.wait()
        os.unlink(lua)


if __name__ == "__main__":
    main()
