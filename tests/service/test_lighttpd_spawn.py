"""lighttpd starting fluxcgi itself ("bin-path"), with the block that conf/lighttpd-site.conf
documents: lighttpd creates the socket and hands it over as fd 0 to one fluxcgi whose config
leaves `socket` out, and that one process serves /ping and generations."""
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import unittest

from tests.service import stack


def spawn_block():
    """The commented bin-path block of conf/lighttpd-site.conf, uncommented."""
    with open(os.path.join(stack.CONF, "lighttpd-site.conf")) as f:
        text = f.read()
    m = re.search(r"(?ms)^# fastcgi\.server \+= \(\n.*?^# \)\n", text)
    assert m, "no commented fastcgi.server block in lighttpd-site.conf"
    return re.sub(r"(?m)^# ?", "", m.group(0))


def children(pid):
    """Pids whose parent is PID."""
    out = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % d) as f:
                stat = f.read()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            out.append(int(d))
    return out


def exe(pid):
    try:
        return os.path.realpath("/proc/%d/exe" % pid)
    except OSError:
        return None


class LighttpdSpawn(unittest.TestCase):
    def setUp(self):
        self.prefix = tempfile.mkdtemp(prefix="fluxcgi-spawn-", dir=stack.TEST_DIR)
        self.addCleanup(shutil.rmtree, self.prefix, True)
        self.rundir = tempfile.mkdtemp(prefix="fxs-")  # socket paths are short
        self.addCleanup(shutil.rmtree, self.rundir, True)
        for d in ("logs", "tmp", "htdocs", "etc/fluxcgi"):
            os.makedirs(os.path.join(self.prefix, d))
        self.port = stack.free_port()
        ov = dict(stack.TINY, socket=None, worker_name="gpu0")
        conf = stack.render("fluxcgi.conf", {
            "SOCKET": "unused", "DB": os.path.join(self.prefix, "jobs.db"),
            "MODEL": stack.MODEL, "DEVICE": "cpu",
            "LOG": os.path.join(self.prefix, "logs", "fluxcgi.log")}, ov)
        self.assertNotRegex(conf, r"(?m)^socket\s*=")
        with open(os.path.join(self.prefix, "etc", "fluxcgi", "gpu0-spawn.conf"), "w") as f:
            f.write(conf)
        block = (spawn_block()
                 .replace("@BINDIR@", os.path.dirname(os.path.abspath(stack.FLUXCGI)))
                 .replace("@SYSCONFDIR@", os.path.join(self.prefix, "etc"))
                 .replace("/run/lighttpd/", self.rundir + "/"))
        self.assertIn('"max-procs" => 1', block)
        main = stack.render("lighttpd.conf", {"PREFIX": self.prefix, "PORT": self.port,
                                              "SOCKET": "unused", "CONF": stack.CONF})
        # the socket-mode block of the server config gives way to the bin-path one
        main, n = re.subn(r"(?ms)^fastcgi\.server = \(\n.*?^\)\n", block, main)
        self.assertEqual(n, 1)
        self.lighttpd_conf = os.path.join(self.prefix, "lighttpd.conf")
        with open(self.lighttpd_conf, "w") as f:
            f.write(main)

    def start(self):
        lighttpd = stack.which_or_fail("lighttpd")
        web = subprocess.Popen([lighttpd, "-D", "-f", self.lighttpd_conf],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

        def stop():
            kids = [p for p in children(web.pid)]
            if web.poll() is None:
                web.send_signal(signal.SIGTERM)
                web.wait(timeout=60)
            web.stderr.close()
            # lighttpd signals its backends on exit; none may outlive it
            deadline = time.time() + 60
            while any(os.path.exists("/proc/%d" % p) for p in kids) and time.time() < deadline:
                time.sleep(0.05)
            for p in kids:
                if os.path.exists("/proc/%d" % p):
                    os.kill(p, signal.SIGKILL)
        self.addCleanup(stop)
        return web

    def test_one_process_serves(self):
        web = self.start()
        s = stack.Stack.__new__(stack.Stack)  # only its HTTP helpers, on this port
        s.port = self.port
        s.fluxcgi = web  # wait_ready's liveness check watches lighttpd here
        deadline = time.time() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                break
            except OSError:
                self.assertIsNone(web.poll(), "lighttpd exited")
                self.assertLess(time.time(), deadline, "lighttpd does not listen")
                time.sleep(0.05)
        s.wait_ready()
        binary = os.path.realpath(stack.FLUXCGI)
        procs = [p for p in children(web.pid) if exe(p) == binary]
        self.assertEqual(len(procs), 1, procs)
        st, h, body = s.request("POST", "/generate", {"prompt": "a fox", "seed": 5})
        self.assertEqual(st, 200, body[:200])
        self.assertTrue(body.startswith(b"\x89PNG"))
        st, _, j = s.json("GET", "/ping")
        self.assertEqual((st, j["status"]), (200, "ok"))
        self.assertEqual([p for p in children(web.pid) if exe(p) == binary], procs)


if __name__ == "__main__":
    unittest.main()
