"""nginx as conf/nginx.conf sizes it (make run and these tests): 1,100 slow clients, each
holding a connection with half a request, do not use up its connections; /ping and a
generation still get through.  And the site's kept-alive FastCGI connections make a valid
config."""
import os
import resource
import socket
import subprocess
import unittest

from tests.service import stack
from tests.service.stack import Stack

SLOW_CLIENTS = 1100  # over the 1024 connections of one default nginx worker


class Sizing(unittest.TestCase):
    def test_slow_clients_do_not_exhaust_nginx(self):
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        want = SLOW_CLIENTS + 256
        if soft < want:
            self.assertTrue(hard == resource.RLIM_INFINITY or hard >= want,
                            "the descriptor limit (%d) is below %d" % (hard, want))
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
            self.addCleanup(resource.setrlimit, resource.RLIMIT_NOFILE, (soft, hard))
        s = Stack("sizing-nginx", "nginx").start()
        self.addCleanup(s.stop)
        held = []

        def close_all():
            for c in held:
                c.close()
        self.addCleanup(close_all)
        for _ in range(SLOW_CLIENTS):
            c = socket.create_connection(("127.0.0.1", s.port), timeout=30)
            c.sendall(b"GET /ping HTTP/1.1\r\nHost: x\r\n")  # the rest never comes
            held.append(c)
        st, _, j = s.json("GET", "/ping", timeout=30)
        self.assertEqual((st, j["status"]), (200, "ok"))
        st, _, body = s.request("POST", "/generate", {"prompt": "a fox", "seed": 2},
                                timeout=120)
        self.assertEqual(st, 200, body[:200])
        # the slow clients are still held open, not refused or dropped
        for c in held[:: SLOW_CLIENTS // 10]:
            c.setblocking(False)
            try:
                self.assertNotEqual(c.recv(1), b"")
            except BlockingIOError:
                pass  # nothing to read and not closed: still waiting for the request
        with open(s.prefix + "/logs/nginx-error.log") as f:
            self.assertNotIn("worker_connections are not enough", f.read())

    def test_keepalive_config_is_valid(self):
        s = Stack("keepalive-nginx", None)
        self.addCleanup(s.stop)
        subs = {"PREFIX": s.prefix, "USER": "", "LISTEN": "127.0.0.1:%d" % s.port,
                "SOCKET": s.socket, "CONF": stack.CONF}
        site = stack.render("fluxcgi-site.conf", subs)
        self.assertRegex(site, r"(?m)^\s*keepalive 32;$")
        self.assertRegex(site, r"(?m)^\s*fastcgi_keep_conn on;$")
        for name, text in (("fluxcgi-site.conf", site),
                           ("nginx.conf", stack.render("nginx.conf", subs))):
            with open(os.path.join(s.prefix, name), "w") as f:
                f.write(text)
        res = subprocess.run([stack.which_or_fail("nginx"), "-t", "-p", s.prefix, "-c",
                              os.path.join(s.prefix, "nginx.conf"), "-e",
                              os.path.join(s.prefix, "logs", "nginx-error.log")],
                             capture_output=True, text=True)
        self.assertEqual(res.returncode, 0, res.stderr)
        self.assertNotIn("[warn]", res.stderr)


if __name__ == "__main__":
    unittest.main()
