"""stack.py - fluxcgi behind a real nginx or lighttpd, started from a temp prefix.

A Stack fills the templates of conf/ (fluxcgi.conf, nginx.conf + fluxcgi-site.conf,
lighttpd.conf) with paths under its prefix and a free loopback port, starts fluxcgi and the
web server in the foreground (daemon off / -D) and kills both on stop().  A missing web
server is an error, not a skip.

Environment: FLUXCGI (the binary), FLUX_MODEL (a model dir), SVC_TEST_DIR (where prefixes
go; default a temp dir), FLUXCGI_CONF (the templates' folder; default conf/, an installed
PREFIX/share/fluxcgi/conf in the install test).
"""
import http.client
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONF = os.environ.get("FLUXCGI_CONF", os.path.join(ROOT, "conf"))
FLUXCGI = os.environ.get("FLUXCGI", os.path.join(ROOT, "build", "fluxcgi"))
MODEL = os.environ.get("FLUX_MODEL", os.path.join(ROOT, "build", "models", "tiny"))
TEST_DIR = os.environ.get("SVC_TEST_DIR") or tempfile.mkdtemp(prefix="fluxcgi-test-")

# Small defaults so that the tiny model answers quickly on the CPU.
TINY = {"default_steps": "2", "default_width": "64", "default_height": "64",
        "warmup_steps": "1", "auth": "off"}


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def render(template, subs, overrides=None):
    """Fills @NAME@ placeholders, then sets each override: a `key = ...` line (commented or
    not) is replaced, else the key is appended."""
    with open(os.path.join(CONF, template)) as f:
        text = f.read()
    for k, v in subs.items():
        text = text.replace("@%s@" % k, str(v))
    for k, v in (overrides or {}).items():
        pat = re.compile(r"^#?\s*%s\s*=.*$" % re.escape(k), re.M)
        line = "%s = %s" % (k, v)
        if v is None:
            text = pat.sub("", text)
        elif pat.search(text):
            text = pat.sub(line, text, count=1)
        else:
            text += "\n" + line + "\n"
    left = [m for line in text.splitlines() if not line.lstrip().startswith("#")
            for m in re.findall(r"@[A-Z_]+@", line)]
    assert not left, "unfilled placeholders in %s: %s" % (template, left)
    return text


# The load test opens 1000 client connections at once; each holds a second one to fluxcgi.
NGINX_CONNECTIONS = 4096


def nginx_connections(text, least):
    """Raises nginx.conf's worker_connections to at least `least` (never lowers it) and
    its workers' file limit to match."""
    m = re.search(r"worker_connections\s+(\d+);", text)
    if m and int(m.group(1)) < least:
        text = text[:m.start(1)] + str(least) + text[m.end(1):]
    if "worker_rlimit_nofile" not in text:
        text = text.replace("events {", "worker_rlimit_nofile %d;\n\nevents {" % (2 * least), 1)
    return text


def which_or_fail(name, extra=()):
    for d in list(extra) + os.environ.get("PATH", "").split(":") + ["/usr/sbin", "/sbin"]:
        p = os.path.join(d, name)
        if os.access(p, os.X_OK):
            return p
    raise RuntimeError("%s is not installed (make deps installs it)" % name)


class Stack:
    """fluxcgi + one web server.  server: 'nginx', 'lighttpd' or None (fluxcgi only)."""

    def __init__(self, name, server="nginx", overrides=None, spawn=False):
        self.name = name
        self.server = server
        self.prefix = os.path.join(TEST_DIR, name)
        shutil.rmtree(self.prefix, ignore_errors=True)
        for d in ("logs", "tmp", "htdocs"):
            os.makedirs(os.path.join(self.prefix, d))
        self.port = free_port()
        # unix socket paths are limited to 107 bytes
        self.sockdir = tempfile.mkdtemp(prefix="fxs-")
        self.socket = os.path.join(self.sockdir, "fluxcgi.sock")
        self.db = os.path.join(self.prefix, "jobs.db")
        self.log = os.path.join(self.prefix, "logs", "fluxcgi.log")
        self.spawn = spawn
        ov = dict(TINY)
        ov.update(overrides or {})
        if spawn:
            ov["socket"] = None  # accept on fd 0, handed over by spawn-fcgi
        self.config = os.path.join(self.prefix, "fluxcgi.conf")
        with open(self.config, "w") as f:
            f.write(render("fluxcgi.conf", {"SOCKET": self.socket, "DB": self.db,
                                            "MODEL": MODEL, "DEVICE": "cpu", "LOG": self.log},
                           ov))
        self.fluxcgi = None
        self.web = None

    # ---- processes ------------------------------------------------------------------------

    def start_fluxcgi(self, wait_ready=True):
        if os.path.exists(self.socket):
            os.unlink(self.socket)
        if self.spawn:
            spawn = which_or_fail("spawn-fcgi")
            self.fluxcgi = subprocess.Popen(
                [spawn, "-n", "-s", self.socket, "-M", "0660", "--", FLUXCGI, "--config",
                 self.config], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        else:
            self.fluxcgi = subprocess.Popen([FLUXCGI, "--config", self.config],
                                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.time() + 60
        while not os.path.exists(self.socket):
            if self.fluxcgi.poll() is not None:
                raise RuntimeError("fluxcgi exited with %s: %s" % (
                    self.fluxcgi.returncode, self.fluxcgi.stderr.read().decode()))
            if time.time() > deadline:
                raise RuntimeError("fluxcgi did not create its socket")
            time.sleep(0.02)
        if wait_ready and self.web:
            self.wait_ready()

    def start_web(self):
        if self.server == "nginx":
            nginx = which_or_fail("nginx")
            user = "user %s;" % os.environ.get("USER", "root") if os.geteuid() == 0 else ""
            subs = {"PREFIX": self.prefix, "USER": user, "LISTEN": "127.0.0.1:%d" % self.port,
                    "SOCKET": self.socket, "CONF": CONF}
            for t in ("nginx.conf", "fluxcgi-site.conf"):
                text = render(t, subs)
                if t == "nginx.conf":
                    text = nginx_connections(text, NGINX_CONNECTIONS)
                with open(os.path.join(self.prefix, t), "w") as f:
                    f.write(text)
            for d in ("body", "fastcgi", "proxy", "uwsgi", "scgi"):
                os.makedirs(os.path.join(self.prefix, "tmp", d), exist_ok=True)
            cmd = [nginx, "-p", self.prefix, "-c", os.path.join(self.prefix, "nginx.conf"),
                   "-e", os.path.join(self.prefix, "logs", "nginx-error.log")]
        elif self.server == "lighttpd":
            lighttpd = which_or_fail("lighttpd")
            path = os.path.join(self.prefix, "lighttpd.conf")
            with open(path, "w") as f:
                f.write(render("lighttpd.conf", {"PREFIX": self.prefix, "PORT": self.port,
                                                 "SOCKET": self.socket, "CONF": CONF}))
            cmd = [lighttpd, "-D", "-f", path]
        else:
            return
        self.web = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.time() + 30
        while True:
            if self.web.poll() is not None:
                raise RuntimeError("%s exited with %s: %s" % (
                    self.server, self.web.returncode, self.web.stderr.read().decode()))
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                if time.time() > deadline:
                    raise RuntimeError("%s does not listen on %d" % (self.server, self.port))
                time.sleep(0.05)

    def start(self):
        self.start_web()
        self.start_fluxcgi()
        return self

    def wait_ready(self, timeout=120):
        deadline = time.time() + timeout
        while time.time() < deadline:
            try:
                st, _, body = self.request("GET", "/ping")
                if st == 200 and json.loads(body)["status"] == "ok":
                    return
            except (OSError, ValueError, http.client.HTTPException):
                pass
            if self.fluxcgi.poll() is not None:
                raise RuntimeError("fluxcgi exited with %s: %s" % (
                    self.fluxcgi.returncode, self.fluxcgi.stderr.read().decode()))
            time.sleep(0.05)
        raise RuntimeError("fluxcgi not ready after %ds" % timeout)

    def kill_fluxcgi(self, sig=signal.SIGKILL):
        if self.fluxcgi and self.fluxcgi.poll() is None:
            self.fluxcgi.send_signal(sig)
            self.fluxcgi.wait(timeout=60)
        rc = self.fluxcgi.returncode if self.fluxcgi else None
        if self.fluxcgi:
            self.fluxcgi.stderr.close()
        self.fluxcgi = None
        return rc

    def stop(self):
        self.kill_fluxcgi(signal.SIGTERM)
        if self.web and self.web.poll() is None:
            self.web.terminate()
            try:
                self.web.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.web.kill()
                self.web.wait()
        if self.web:
            self.web.stderr.close()
        self.web = None
        shutil.rmtree(self.sockdir, ignore_errors=True)

    # ---- HTTP -----------------------------------------------------------------------------

    def request(self, method, path, body=None, headers=None, timeout=300):
        """Returns (status, headers dict with lower-case names, body bytes)."""
        c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            if isinstance(body, (dict, list)):
                body = json.dumps(body).encode()
            elif isinstance(body, str):
                body = body.encode()
            h = {"Content-Type": "application/json"} if body is not None else {}
            h.update(headers or {})
            c.request(method, path, body=body, headers=h)
            r = c.getresponse()
            return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
        finally:
            c.close()

    def json(self, method, path, body=None, **kw):
        st, h, b = self.request(method, path, body, **kw)
        return st, h, json.loads(b)

    def wait_state(self, rid, states, timeout=300):
        deadline = time.time() + timeout
        while time.time() < deadline:
            st, _, j = self.json("GET", "/queue/status/" + rid)
            if st == 200 and j["status"] in states:
                return j
            time.sleep(0.05)
        raise AssertionError("job %s not in %s after %ds: %s" % (rid, states, timeout, j))

    def log_text(self):
        try:
            with open(self.log, errors="replace") as f:
                return f.read()
        except OSError:
            return ""
