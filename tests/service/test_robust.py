"""Hostile and overloaded peers: idle and slow connections, kept-alive connections, sync
requests that wait, clients that leave, signals, addresses in use, folders that are missing.

Each test first states what used to go wrong.  Every wait is bounded; nothing here measures
time against a threshold: a stall shows up as a request that never answers within a generous
timeout.
"""
import json
import os
import signal
import socket
import sqlite3
import subprocess
import threading
import time
import unittest

from tests.service import fcgi_client as fc
from tests.service.stack import FLUXCGI, Stack, free_port, render, MODEL

SLOW_JOB = {"prompt": "a slow job", "width": 256, "height": 256, "num_inference_steps": 40,
            "seed": 3}


def db_rows(path, where="1"):
    con = sqlite3.connect(path, timeout=10)
    try:
        return con.execute("SELECT id, kind, state, error_code, error_message FROM jobs WHERE "
                           + where + " ORDER BY seq").fetchall()
    finally:
        con.close()


def wait_for(pred, timeout=60, what="condition"):
    deadline = time.time() + timeout
    while time.time() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(0.05)
    raise AssertionError("%s not reached after %ds" % (what, timeout))


class FrontEnd(unittest.TestCase):
    """Peers that talk FastCGI directly to the socket."""

    @classmethod
    def setUpClass(cls):
        cls.s = Stack("robust-front", "nginx", overrides={
            "request_timeout": "1s", "idle_timeout": "2s", "threads": "2"}).start()

    @classmethod
    def tearDownClass(cls):
        cls.s.stop()

    def ping(self):
        st, _, b = self.s.request("GET", "/ping", timeout=20)
        self.assertEqual(st, 200, b)
        self.assertEqual(json.loads(b)["status"], "ok")

    def test_idle_and_slow_peers_stall_nobody(self):
        # used to: one connection that sent 3 bytes stopped every request until it left
        peers = []
        for i in range(40):
            c = fc.Conn(self.s.socket, timeout=15)
            if i % 3 == 0:
                c.send(b"\x01\x01\x00")  # three bytes of a header
            elif i % 3 == 1:
                c.send(fc.begin(1) + fc.record(fc.PARAMS, 1, fc.pairs({"REQUEST_METHOD": "GET"})))
            peers.append(c)
        for _ in range(5):
            self.ping()
        # a direct request on a fresh connection is answered too
        c = fc.Conn(self.s.socket)
        c.send(fc.request_bytes(1, "GET", "/queue/status"))
        st, _, body, _ = c.response(1)
        self.assertEqual(st, 200, body)
        c.close()
        # and the slow and idle peers are cut off (request_timeout 1 s, idle_timeout 2 s)
        for c in peers:
            self.assertTrue(c.closed_by_peer(), "a slow or idle peer was never closed")
            c.close()
        self.ping()

    def test_kept_alive_connection_takes_many_requests(self):
        c = fc.Conn(self.s.socket)
        for rid in (1, 2, 7):
            c.send(fc.request_bytes(rid, "GET", "/ping", keep=True))
            st, h, body, proto = c.response(rid)
            self.assertEqual((st, proto), (200, 0), body)
            self.assertEqual(json.loads(body)["status"], "ok")
        # two requests in one write (pipelined): both answered, in order
        c.send(fc.request_bytes(3, "GET", "/ping", keep=True) +
               fc.request_bytes(4, "GET", "/queue/status", keep=True))
        self.assertEqual(c.response(3)[0], 200)
        self.assertEqual(c.response(4)[0], 200)
        # without KEEP_CONN the connection ends after the answer
        c.send(fc.request_bytes(5, "GET", "/ping"))
        self.assertEqual(c.response(5)[0], 200)
        self.assertTrue(c.closed_by_peer())
        c.close()

    def test_protocol_corners(self):
        c = fc.Conn(self.s.socket)
        # management: FCGI_GET_VALUES is answered
        c.send(fc.record(fc.GET_VALUES, 0, fc.pairs({"FCGI_MPXS_CONNS": "", "FCGI_MAX_REQS": ""})))
        t, rid, content = c.read_record()
        self.assertEqual((t, rid), (fc.GET_VALUES_RESULT, 0))
        self.assertIn(b"FCGI_MPXS_CONNS0", content)
        # an unknown management record gets FCGI_UNKNOWN_TYPE
        c.send(fc.record(42, 0))
        t, _, content = c.read_record()
        self.assertEqual((t, content[0]), (fc.UNKNOWN_TYPE, 42))
        # a role other than responder is refused
        c.send(fc.begin(9, role=fc.AUTHORIZER, flags=fc.KEEP_CONN))
        self.assertEqual(c.response(9)[3], 3)  # FCGI_UNKNOWN_ROLE
        # a body shorter than CONTENT_LENGTH is refused, not processed
        c.send(fc.request_bytes(2, "POST", "/generate/queue", b'{"prompt": "x"}', keep=True,
                                content_length=100))
        st, _, body, _ = c.response(2)
        self.assertEqual(st, 400, body)
        self.assertEqual(json.loads(body)["error"]["code"], "malformed")
        # a second request while one is open on the same connection: FCGI_CANT_MPX_CONN
        c.send(fc.begin(3, flags=fc.KEEP_CONN) + fc.begin(4, flags=fc.KEEP_CONN))
        self.assertEqual(c.response(4)[3], 1)
        c.send(fc.record(fc.PARAMS, 3, fc.pairs({"REQUEST_METHOD": "GET",
                                                 "REQUEST_URI": "/ping"})) +
               fc.record(fc.PARAMS, 3) + fc.record(fc.STDIN, 3))
        self.assertEqual(c.response(3)[0], 200)
        # an over-long body is read to its end and answered 413 (the peer is not cut off
        # while it is still sending)
        c.send(fc.request_bytes(5, "POST", "/generate/queue", b"x" * (200 << 10), keep=True))
        st, _, body, _ = c.response(5)
        self.assertEqual(st, 413, body)
        c.send(fc.request_bytes(6, "GET", "/ping", keep=True))
        self.assertEqual(c.response(6)[0], 200)
        c.close()
        # bytes that are not FastCGI: the connection is closed, the service goes on
        c = fc.Conn(self.s.socket)
        c.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        self.assertTrue(c.closed_by_peer())
        c.close()
        self.ping()


def metric(s, name):
    st, _, b = s.request("GET", "/metrics", timeout=20)
    for line in b.decode().splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError("no %s in /metrics" % name)


class KeepAlive(unittest.TestCase):
    def test_nginx_reuses_fastcgi_connections(self):
        # used to: a new FastCGI connection per request (and a thread held per kept one)
        s = Stack("robust-keep", "nginx").start()
        try:
            before = metric(s, 'fluxcgi_connections_total{event="accepted"}')
            for _ in range(40):
                st, _, b = s.request("GET", "/queue/status", timeout=20)
                self.assertEqual(st, 200, b)
            after = metric(s, 'fluxcgi_connections_total{event="accepted"}')
            # nginx keeps up to 32 connections per worker process: 41 requests over fresh
            # connections would have been 41 accepts
            self.assertLess(after - before, 20)
            self.assertGreaterEqual(metric(s, "fluxcgi_connections_open"), 1)
        finally:
            s.stop()


class SyncWaits(unittest.TestCase):
    """POST /generate requests that wait for their image."""

    def test_waiting_requests_hold_no_threads_and_see_the_queue_bound(self):
        # used to: 30 waiting POST /generate stalled /ping for 39 s and never saw a 429
        s = Stack("robust-sync", "nginx", overrides={"threads": "2", "queue_size": "4"}).start()
        try:
            answers = []

            def sync(i):
                st, h, b = s.request("POST", "/generate", {"prompt": "wait %d" % i, "seed": i,
                                                          "num_inference_steps": 12,
                                                          "width": 128, "height": 128})
                answers.append((st, h, b))

            threads = [threading.Thread(target=sync, args=(i,)) for i in range(12)]
            for t in threads:
                t.start()
            wait_for(lambda: metric(s, "fluxcgi_requests_waiting") >= 1, timeout=60,
                     what="a parked POST /generate")
            # while they wait (2 handler threads only), the status endpoints answer
            for _ in range(10):
                st, _, b = s.request("GET", "/ping", timeout=20)
                self.assertEqual(st, 200, b)
                st, _, b = s.request("GET", "/queue/status", timeout=20)
                self.assertEqual(st, 200, b)
            for t in threads:
                t.join(timeout=300)
            statuses = sorted(a[0] for a in answers)
            self.assertEqual(len(statuses), 12)
            self.assertTrue(set(statuses) <= {200, 429}, statuses)
            self.assertIn(429, statuses)
            self.assertIn(200, statuses)
            for st, h, b in answers:
                if st == 429:
                    self.assertIn("retry-after", h)
                else:
                    self.assertEqual(b[:8], b"\x89PNG\r\n\x1a\n")
        finally:
            s.stop()

    def test_client_that_leaves(self):
        # used to: a client that gave up kept its thread, and its job ran anyway
        s = Stack("robust-gone", "nginx").start()
        try:
            st, _, j = s.json("POST", "/generate/queue", SLOW_JOB)
            self.assertEqual(st, 202, j)
            blocker = j["request_id"]
            s.wait_state(blocker, ("running",), timeout=60)

            # a sync request whose client leaves while its job is still queued
            raw = socket.create_connection(("127.0.0.1", s.port), timeout=10)
            body = json.dumps({"prompt": "never mind", "seed": 1}).encode()
            raw.sendall(b"POST /generate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json"
                        b"\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
            wait_for(lambda: db_rows(s.db, "kind = 'sync'"), what="the sync job queued")
            raw.close()
            rows = wait_for(lambda: [r for r in db_rows(s.db, "kind = 'sync'")
                                     if r[2] == "cancelled"], timeout=60,
                            what="the abandoned sync job cancelled")
            self.assertIn("went away", rows[0][4])

            # one whose client leaves while it runs is kept and finishes
            raw = socket.create_connection(("127.0.0.1", s.port), timeout=10)
            body = json.dumps(dict(SLOW_JOB, num_inference_steps=8, seed=2)).encode()
            raw.sendall(b"POST /generate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json"
                        b"\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
            run = wait_for(lambda: [r for r in db_rows(s.db, "kind = 'sync'")
                                    if r[2] == "running"], timeout=120,
                           what="the second sync job running")
            raw.close()
            j = s.wait_state(run[0][0], ("completed", "failed", "cancelled"), timeout=120)
            self.assertEqual(j["status"], "completed", j)
            st, _, png = s.request("GET", "/result/" + run[0][0])
            self.assertEqual(st, 200)
            self.assertEqual(png[:4], b"\x89PNG")
            # the service still answers
            self.assertEqual(s.request("GET", "/ping", timeout=20)[0], 200)
        finally:
            s.stop()


class Process(unittest.TestCase):
    """How the process starts and ends."""

    def test_sigusr1_ends_the_process_non_zero(self):
        # used to: libfcgi's handler stopped both acceptors and the process lived on, silent
        for sig in (signal.SIGUSR1, signal.SIGUSR2):
            s = Stack("robust-sig", "nginx").start()
            try:
                rc = s.kill_fluxcgi(sig)
                self.assertEqual(rc, 1, "signal %d" % sig)
            finally:
                s.stop()

    def test_busy_address_is_named(self):
        # used to: "bind/listen: Address already in use" without the address, exit 22
        port = free_port()
        holder = socket.socket()
        holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        holder.bind(("127.0.0.1", port))
        holder.listen(1)
        s = Stack("robust-busy", None, overrides={"socket": "127.0.0.1:%d" % port})
        try:
            p = subprocess.run([FLUXCGI, "--config", s.config], capture_output=True, timeout=120)
            self.assertEqual(p.returncode, 1, p.stderr)
            with open(s.log, errors="replace") as f:
                log = f.read()
            self.assertIn("127.0.0.1:%d" % port, log)
            self.assertIn("in use", log)
        finally:
            holder.close()

    def test_check_looks_at_the_folders(self):
        # used to: --check said ok when the db or socket folder did not exist
        for key in ("db", "socket", "log"):
            s = Stack("robust-check-" + key, None,
                      overrides={key: "/nonexistent-fluxcgi-dir/x/" + key})
            p = subprocess.run([FLUXCGI, "--config", s.config, "--check"], capture_output=True,
                               timeout=60)
            self.assertEqual(p.returncode, 2, p.stdout)
            self.assertIn(b"/nonexistent-fluxcgi-dir/x", p.stderr)
            self.assertIn(b"does not exist", p.stderr)
        s = Stack("robust-check-ok", None)
        p = subprocess.run([FLUXCGI, "--config", s.config, "--check"], capture_output=True,
                           timeout=60)
        self.assertEqual(p.returncode, 0, p.stderr)

    def test_store_that_cannot_be_opened_exits_non_zero(self):
        # used to: an acceptor that could not open the store sent SIGTERM and the process
        # exited 0, so Restart=on-failure did nothing
        s = Stack("robust-store", None)
        with open(s.db, "wb") as f:
            f.write(b"this is not an SQLite database, but it is not empty either" * 100)
        p = subprocess.run([FLUXCGI, "--config", s.config], stdin=subprocess.DEVNULL,
                           capture_output=True, timeout=120)
        self.assertEqual(p.returncode, 1)
        with open(s.log, errors="replace") as f:
            self.assertIn(s.db, f.read())

    def test_fd0_that_is_not_a_socket(self):
        s = Stack("robust-fd0", None, overrides={"socket": None})
        p = subprocess.run([FLUXCGI, "--config", s.config], stdin=subprocess.DEVNULL,
                           capture_output=True, timeout=60)
        self.assertEqual(p.returncode, 1)
        with open(s.log, errors="replace") as f:
            self.assertIn("fd 0 is not a listening socket", f.read())


if __name__ == "__main__":
    unittest.main()
