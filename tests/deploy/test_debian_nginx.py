"""The installed nginx site on a stock Debian nginx layout, following README's recipe.

An nginx prefix mimics /etc/nginx as Debian ships it: nginx.conf includes conf.d/*.conf and
sites-enabled/*, and sites-enabled/default links Debian's default site (`listen ...
default_server; server_name _;`), moved to a free loopback port.  `make install` (a real
PREFIX) writes the fluxcgi site for the same port; the installed fluxcgi serves the tiny
model on the installed config."""

import http.client
import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
import unittest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MODEL = os.environ.get("FLUX_MODEL", os.path.join(ROOT, "build", "models", "tiny"))

# Debian 12's /etc/nginx/sites-available/default without its comments; @LISTEN@ stands for
# `80` (its `listen [::]:80 default_server;` line is left out: tests bind 127.0.0.1 only).
DEBIAN_DEFAULT_SITE = """\
server {
\tlisten @LISTEN@ default_server;
\troot @ROOT@/www/html;
\tindex index.html index.htm index.nginx-debian.html;
\tserver_name _;
\tlocation / {
\t\ttry_files $uri $uri/ =404;
\t}
}
"""

# Debian's nginx.conf, its paths moved under the prefix (and temp folders added so that it
# runs as any user).
DEBIAN_NGINX_CONF = """\
@USER@
worker_processes auto;
pid @ROOT@/nginx.pid;
error_log @ROOT@/error.log;
events {
\tworker_connections 768;
}
http {
\tsendfile on;
\ttcp_nopush on;
\ttypes_hash_max_size 2048;
\tinclude @ROOT@/mime.types;
\tdefault_type application/octet-stream;
\taccess_log @ROOT@/access.log;
\tgzip on;
\tclient_body_temp_path @ROOT@/tmp/body;
\tfastcgi_temp_path @ROOT@/tmp/fastcgi;
\tproxy_temp_path @ROOT@/tmp/proxy;
\tuwsgi_temp_path @ROOT@/tmp/uwsgi;
\tscgi_temp_path @ROOT@/tmp/scgi;
\tinclude @ROOT@/conf.d/*.conf;
\tinclude @ROOT@/sites-enabled/*;
}
"""


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def nginx_bin():
    for p in (shutil.which("nginx"), "/usr/sbin/nginx"):
        if p and os.access(p, os.X_OK):
            return p
    raise RuntimeError("nginx is not installed (make deps installs it)")


def get(port, path):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        c.request("GET", path)
        r = c.getresponse()
        return r.status, r.getheader("content-type", ""), r.read()
    finally:
        c.close()


def install(prefix, listen, sock):
    """make install into PREFIX, the site listening on LISTEN, fluxcgi's socket at SOCK and
    its state (db, model, log) under PREFIX/state."""
    state = os.path.join(prefix, "state")
    res = subprocess.run(["make", "-C", ROOT, "--no-print-directory", "install",
                          f"PREFIX={prefix}", f"SITE_LISTEN={listen}", f"SOCKET_PATH={sock}",
                          f"STATE_DIR={state}", f"LOG_FILE={state}/fluxcgi.log"],
                         capture_output=True, text=True)
    if res.returncode != 0:
        raise AssertionError(f"make install failed: {res.stdout}{res.stderr}")
    return os.path.join(prefix, "etc", "fluxcgi", "nginx-site.conf")


class DebianNginx:
    """An /etc/nginx look-alike under a temp folder."""

    def __init__(self, root, port):
        self.root = root
        self.port = port
        self.proc = None
        for d in ("conf.d", "sites-available", "sites-enabled", "www/html", "tmp"):
            os.makedirs(os.path.join(root, d), exist_ok=True)
        user = "user %s;" % os.environ.get("USER", "root") if os.geteuid() == 0 else ""
        with open(os.path.join(root, "nginx.conf"), "w") as f:
            f.write(DEBIAN_NGINX_CONF.replace("@ROOT@", root).replace("@USER@", user))
        if os.path.exists("/etc/nginx/mime.types"):
            shutil.copyfile("/etc/nginx/mime.types", os.path.join(root, "mime.types"))
        else:
            with open(os.path.join(root, "mime.types"), "w") as f:
                f.write("types { text/html html; }\n")
        with open(os.path.join(root, "sites-available", "default"), "w") as f:
            f.write(DEBIAN_DEFAULT_SITE.replace("@LISTEN@", "127.0.0.1:%d" % port)
                    .replace("@ROOT@", root))
        os.symlink("../sites-available/default", os.path.join(root, "sites-enabled", "default"))

    def enable(self, site, name="fluxcgi.conf"):
        os.symlink(site, os.path.join(self.root, "sites-enabled", name))

    def cmd(self, *args):
        return [nginx_bin(), "-p", self.root, "-c", os.path.join(self.root, "nginx.conf"),
                "-e", os.path.join(self.root, "error.log"), *args]

    def check(self):
        """`nginx -t`: (exit status, its messages)."""
        res = subprocess.run(self.cmd("-t"), capture_output=True, text=True)
        return res.returncode, res.stdout + res.stderr

    def start(self, *ports):
        self.proc = subprocess.Popen(self.cmd("-g", "daemon off;"), stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE)
        for port in ports:
            deadline = time.time() + 30
            while True:
                if self.proc.poll() is not None:
                    raise AssertionError("nginx exited: %s" % self.proc.stderr.read().decode())
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                    break
                except OSError:
                    if time.time() > deadline:
                        raise AssertionError("nginx does not listen on %d" % port)
                    time.sleep(0.05)

    def stop(self):
        if self.proc:
            if self.proc.poll() is None:
                self.proc.terminate()
                self.proc.wait(timeout=30)
            self.proc.stderr.close()
            self.proc = None


class StockDebianSite(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix="fluxcgi-debian-")
        # unix socket paths are limited to 107 bytes
        cls.sockdir = tempfile.mkdtemp(prefix="fxs-")
        cls.sock = os.path.join(cls.sockdir, "fluxcgi.sock")
        cls.port = free_port()
        cls.prefix = os.path.join(cls.tmp, "usr")
        cls.site = install(cls.prefix, "127.0.0.1:%d" % cls.port, cls.sock)
        # the installed config as it is, but for the tiny model on the CPU
        state = os.path.join(cls.prefix, "state")
        os.makedirs(state)
        os.symlink(os.path.abspath(MODEL), os.path.join(state, "model"))
        conf = os.path.join(cls.prefix, "etc", "fluxcgi", "fluxcgi.conf")
        with open(conf) as f:
            text = f.read()
        text = text.replace("# device = cuda", "device = cpu", 1)
        text += "\ndefault_steps = 2\ndefault_width = 64\ndefault_height = 64\n"
        with open(conf, "w") as f:
            f.write(text)
        cls.fluxcgi = subprocess.Popen([os.path.join(cls.prefix, "bin", "fluxcgi"), "--config",
                                        conf], stdout=subprocess.DEVNULL,
                                       stderr=subprocess.PIPE)
        deadline = time.time() + 120
        while not os.path.exists(cls.sock):
            if cls.fluxcgi.poll() is not None:
                raise RuntimeError("fluxcgi exited: %s" % cls.fluxcgi.stderr.read().decode())
            if time.time() > deadline:
                raise RuntimeError("fluxcgi did not create its socket")
            time.sleep(0.05)

    @classmethod
    def tearDownClass(cls):
        if cls.fluxcgi.poll() is None:
            cls.fluxcgi.terminate()
            cls.fluxcgi.wait(timeout=60)
        cls.fluxcgi.stderr.close()
        shutil.rmtree(cls.tmp, ignore_errors=True)
        shutil.rmtree(cls.sockdir, ignore_errors=True)

    def nginx(self, name, port):
        n = DebianNginx(os.path.join(self.tmp, name), port)
        self.addCleanup(n.stop)
        return n

    def wait_ping(self, port):
        """/ping through nginx until fluxcgi has warmed up; returns its JSON."""
        deadline = time.time() + 120
        while True:
            st, ctype, body = get(port, "/ping")
            self.assertEqual(st, 200, body[:300])
            self.assertTrue(ctype.startswith("application/json"), (ctype, body[:300]))
            j = json.loads(body)
            if j["status"] == "ok" or time.time() > deadline:
                return j
            time.sleep(0.1)

    def test_site_beside_the_default_site_is_refused(self):
        # the installed site claims default_server, so leaving Debian's default enabled is
        # an error of `nginx -t`, not a site silently shadowed by nginx's 404 page
        n = self.nginx("stock", self.port)
        n.enable(self.site)
        rc, out = n.check()
        self.assertNotEqual(rc, 0, out)
        self.assertIn("duplicate default server", out)

    def test_recipe_default_site_disabled(self):
        # README: rm /etc/nginx/sites-enabled/default; ln -s .../nginx-site.conf
        n = self.nginx("recipe", self.port)
        os.unlink(os.path.join(n.root, "sites-enabled", "default"))
        n.enable(self.site)
        rc, out = n.check()
        self.assertEqual(rc, 0, out)
        self.assertNotIn("conflicting server name", out)
        self.assertNotIn("[warn]", out)
        n.start(self.port)
        self.assertEqual(self.wait_ping(self.port)["status"], "ok")
        # any path is fluxcgi's: its JSON 404, not nginx's HTML page
        st, ctype, body = get(self.port, "/no/such/page")
        self.assertEqual(st, 404)
        self.assertTrue(ctype.startswith("application/json"), ctype)
        self.assertEqual(json.loads(body)["error"]["code"], "not_found")

    def test_other_port_keeps_the_default_site(self):
        # README's alternative: make install SITE_LISTEN=8080 keeps Debian's site on 80
        other = free_port()
        site = install(os.path.join(self.tmp, "usr2"), "127.0.0.1:%d" % other, self.sock)
        n = self.nginx("other-port", self.port)
        n.enable(site)
        rc, out = n.check()
        self.assertEqual(rc, 0, out)
        self.assertNotIn("conflicting server name", out)
        n.start(self.port, other)
        self.assertEqual(self.wait_ping(other)["status"], "ok")
        st, ctype, body = get(self.port, "/ping")
        self.assertEqual(st, 404)  # Debian's site still owns its port
        self.assertIn(b"<html>", body)


if __name__ == "__main__":
    unittest.main()
