"""make install / uninstall, the installed programs at work, the systemd unit, and the
container images' use of the same install script that CI runs.

The installed fluxcgi (its plugins found in PREFIX/lib/fluxcgi) serves the tiny model behind
a real nginx, with the site templates from PREFIX/share/fluxcgi/conf."""

import os
import re
import shutil
import subprocess
import sys
import tempfile
import unittest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEST = tempfile.mkdtemp(prefix="fluxcgi-destdir-")
INSTALLED = os.path.join(DEST, "usr", "local")
os.environ["FLUXCGI"] = os.path.join(INSTALLED, "bin", "fluxcgi")
os.environ["FLUXCGI_CONF"] = os.path.join(INSTALLED, "share", "fluxcgi", "conf")

from tests.export.test_cli import python_without_torch  # noqa: E402
from tests.service import stack  # noqa: E402  (reads the two variables above)

MODEL = os.environ.get("FLUX_MODEL", os.path.join(ROOT, "build", "models", "tiny"))


def make(*args):
    res = subprocess.run(["make", "-C", ROOT, "--no-print-directory", *args],
                         capture_output=True, text=True)
    if res.returncode != 0:
        raise AssertionError(f"make {' '.join(args)} failed: {res.stdout}{res.stderr}")
    return res.stdout


def files_under(root):
    out = set()
    for d, _, names in os.walk(root):
        for n in names:
            out.add(os.path.relpath(os.path.join(d, n), root))
    return out


class DestdirInstall(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        make("install", f"DESTDIR={DEST}")

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(DEST, ignore_errors=True)

    def test_layout(self):
        got = files_under(DEST)
        for rel in ("usr/local/bin/fluxcgi", "usr/local/bin/fluxgen", "usr/local/bin/fluxexport",
                    "usr/local/lib/fluxcgi/libfluxshim.so", "usr/local/lib/fluxcgi/libfluxt5.so",
                    "usr/local/lib/fluxcgi/python/fluxexport/exporter.py",
                    "usr/local/lib/fluxcgi/python/data/tiny_corpus.txt",
                    "usr/local/share/fluxcgi/schema.sql",
                    "usr/local/share/fluxcgi/conf/fluxcgi.conf",
                    "usr/local/share/fluxcgi/conf/errors/status-502.html",
                    "usr/local/share/fluxcgi/conf/docs/index.html",
                    "usr/local/share/fluxcgi/conf/docs/swagger-ui-bundle.js",
                    "usr/local/share/fluxcgi/conf/docs/LICENSE",
                    "usr/local/lib/systemd/system/fluxcgi.service",
                    "usr/local/lib/sysusers.d/fluxcgi.conf",
                    "usr/local/etc/fluxcgi/fluxcgi.conf",
                    "usr/local/etc/fluxcgi/nginx-site.conf",
                    "usr/local/etc/fluxcgi/lighttpd-site.conf"):
            self.assertIn(rel, got)
        for b in ("fluxcgi", "fluxgen", "fluxexport"):
            self.assertTrue(os.access(os.path.join(INSTALLED, "bin", b), os.X_OK), b)
        # nothing from the build tree is referenced by what was installed
        for rel in got:
            path = os.path.join(DEST, rel)
            if rel.endswith((".conf", ".service", "fluxexport")):
                with open(path, errors="replace") as f:
                    self.assertNotIn(ROOT, f.read(), rel)

    def test_system_config_and_site_files(self):
        with open(os.path.join(INSTALLED, "etc", "fluxcgi", "fluxcgi.conf")) as f:
            conf = f.read()
        self.assertRegex(conf, r"(?m)^socket = /run/fluxcgi/fluxcgi.sock")
        self.assertRegex(conf, r"(?m)^db = /var/lib/fluxcgi/jobs.db")
        self.assertRegex(conf, r"(?m)^log = /var/log/fluxcgi/fluxcgi.log")
        # an installed service asks for API keys (make run on 127.0.0.1 does not)
        self.assertRegex(conf, r"(?m)^auth = on\b")
        self.assertNotIn("@", re.sub(r"#.*", "", conf))
        with open(os.path.join(INSTALLED, "etc", "fluxcgi", "nginx-site.conf")) as f:
            site = f.read()
        self.assertIn("server unix:/run/fluxcgi/fluxcgi.sock;", site)
        self.assertIn("/usr/local/share/fluxcgi/conf/errors/", site)
        self.assertNotIn("@", re.sub(r"#.*", "", site))

    def test_installed_fluxcgi_serves_behind_nginx(self):
        s = stack.Stack("installed", "nginx").start()
        try:
            st, h, body = s.request("POST", "/generate", {"prompt": "a fox", "width": 64,
                                                          "height": 64,
                                                          "num_inference_steps": 1,
                                                          "seed": 3})
            self.assertEqual(st, 200, body[:200])
            self.assertEqual(h["content-type"], "image/png")
            self.assertEqual(h["x-seed"], "3")
            self.assertTrue(body.startswith(b"\x89PNG"))
            st, h, j = s.json("POST", "/generate/queue", {"prompt": "a fox", "width": 64,
                                                          "height": 64,
                                                          "num_inference_steps": 1,
                                                          "seed": 3})
            self.assertEqual(st, 202)
            s.wait_state(j["request_id"], ("completed",))
            st, _, again = s.request("GET", "/result/" + j["request_id"])
            self.assertEqual((st, again), (200, body))
        finally:
            s.stop()

    def test_installed_fluxgen(self):
        tmp = tempfile.mkdtemp(prefix="fluxcgi-inst-")
        self.addCleanup(shutil.rmtree, tmp)
        out = os.path.join(tmp, "x.png")
        res = subprocess.run([os.path.join(INSTALLED, "bin", "fluxgen"), "--model", MODEL,
                              "--prompt", "a fox", "--steps", "1", "--width", "64",
                              "--height", "64", "--quiet", "-o", out],
                             capture_output=True, text=True)
        self.assertEqual(res.returncode, 0, res.stderr)
        self.assertTrue(os.path.getsize(out) > 0)


class PrefixInstall(unittest.TestCase):
    """A real prefix (no DESTDIR), so that the unit's ExecStart exists for systemd-analyze."""

    def setUp(self):
        self.prefix = tempfile.mkdtemp(prefix="fluxcgi-prefix-")
        self.addCleanup(shutil.rmtree, self.prefix, True)
        make("install", f"PREFIX={self.prefix}")
        self.unit = os.path.join(self.prefix, "lib", "systemd", "system", "fluxcgi.service")

    def verify(self, unit):
        tool = shutil.which("systemd-analyze")
        self.assertIsNotNone(tool, "systemd-analyze is missing (Debian package 'systemd')")
        return subprocess.run([tool, "verify", unit], capture_output=True, text=True)

    def test_unit_verifies(self):
        res = self.verify(self.unit)
        self.assertEqual(res.returncode, 0, res.stdout + res.stderr)
        self.assertEqual(res.stderr.strip(), "")
        with open(self.unit) as f:
            unit = f.read()
        self.assertIn(f"ExecStart={self.prefix}/bin/fluxcgi --config "
                      f"{self.prefix}/etc/fluxcgi/fluxcgi.conf", unit)
        for line in ("User=fluxcgi", "StateDirectory=fluxcgi", "Restart=on-failure",
                     "KillSignal=SIGTERM", "ExecReload=/bin/kill -HUP $MAINPID"):
            self.assertIn(line, unit)
        # the per-GPU template, as instance 1
        tmpl = os.path.join(self.prefix, "lib", "systemd", "system", "fluxcgi@.service")
        inst = os.path.join(self.prefix, "fluxcgi@1.service")
        shutil.copyfile(tmpl, inst)
        res = self.verify(inst)
        self.assertEqual(res.returncode, 0, res.stdout + res.stderr)
        with open(inst) as f:
            self.assertIn(f"--config {self.prefix}/etc/fluxcgi/gpu%i.conf", f.read())

    def test_verify_catches_a_broken_unit(self):
        broken = os.path.join(self.prefix, "broken.service")
        with open(self.unit) as f:
            text = f.read().replace(f"{self.prefix}/bin/fluxcgi", f"{self.prefix}/bin/nothing")
        with open(broken, "w") as f:
            f.write(text)
        self.assertNotEqual(self.verify(broken).returncode, 0)

    def test_installed_exporter(self):
        # the wrapper finds its package (and the tiny corpus) in PREFIX/lib/fluxcgi/python
        env = dict(os.environ)
        env.pop("PYTHONPATH", None)
        out = os.path.join(self.prefix, "tok")
        res = subprocess.run([os.path.join(self.prefix, "bin", "fluxexport"), "tiny-tokenizers",
                              "--out", out], capture_output=True, text=True, env=env)
        self.assertEqual(res.returncode, 0, res.stderr)
        self.assertTrue(os.path.isfile(os.path.join(out, "tokenizer_2", "spiece.model")))
        shutil.rmtree(out)

    def test_installed_exporter_names_its_python(self):
        # the wrapper says how to choose the Python, and honours $PYTHON: a Python without
        # torch gets a message naming it (status 3), not a traceback
        wrapper = os.path.join(self.prefix, "bin", "fluxexport")
        with open(wrapper) as f:
            text = f.read()
        self.assertIn("# build of PyTorch: PYTHON=/path/to/venv/bin/python fluxexport", text)
        env = dict(os.environ)
        env.pop("PYTHONPATH", None)
        res = subprocess.run([wrapper, "--help"], capture_output=True, text=True, env=env)
        self.assertEqual((res.returncode, res.stderr), (0, ""))
        self.assertIn("PYTHON=/path/to/venv/bin/python fluxexport", res.stdout)
        python = python_without_torch()
        if python is None:
            self.skipTest("every python on PATH has torch")
        env["PYTHON"] = python
        res = subprocess.run([wrapper, "tiny-tokenizers", "--out", os.path.join(self.prefix, "t")],
                             capture_output=True, text=True, env=env)
        self.assertEqual(res.returncode, 3, res.stderr)
        self.assertRegex(res.stderr, r"^fluxexport: /\S+ \(Python [0-9.]+\) has no PyTorch")
        self.assertNotIn("Traceback", res.stderr)

    def test_reinstall_keeps_config_and_uninstall_removes_the_rest(self):
        conf = os.path.join(self.prefix, "etc", "fluxcgi", "fluxcgi.conf")
        with open(conf, "a") as f:
            f.write("# edited by the operator\n")
        out = make("install", f"PREFIX={self.prefix}")
        self.assertIn("KEEP", out)
        with open(conf) as f:
            self.assertIn("# edited by the operator", f.read())
        make("uninstall", f"PREFIX={self.prefix}")
        self.assertEqual(files_under(self.prefix), {"etc/fluxcgi/fluxcgi.conf"})


class Images(unittest.TestCase):
    """The images install with tools/deps.sh, whose every package CI installs too."""

    def profile(self, name):
        res = subprocess.run([os.path.join(ROOT, "tools", "deps.sh"), "--print", "--profile",
                              name], capture_output=True, text=True)
        self.assertEqual(res.returncode, 0, res.stderr)
        return set(res.stdout.split())

    def test_profiles_are_part_of_what_ci_installs(self):
        everything = self.profile("all")
        for p in ("cpu-image", "web-image", "monitoring-image"):
            self.assertLessEqual(self.profile(p), everything, p)
        # the CUDA image adds only what a pip PyTorch needs
        self.assertLessEqual(self.profile("cuda-image") - everything,
                             {"python3-venv", "python3-pip"})

    def test_dockerfiles_use_the_script_and_make_install(self):
        for name in ("Dockerfile", "Dockerfile.cuda", "Dockerfile.nginx",
                     "Dockerfile.prometheus"):
            with open(os.path.join(ROOT, "docker", name)) as f:
                text = f.read()
            profiles = re.findall(r"tools/deps\.sh --profile ([a-z-]+)", text)
            self.assertTrue(profiles, name)
            for p in profiles:
                self.assertTrue(self.profile(p), p)
            if name not in ("Dockerfile.nginx", "Dockerfile.prometheus"):
                self.assertRegex(text, r"make [A-Z_=0-9 ]*install")
                self.assertRegex(text, r"(?m)^USER fluxcgi")


if __name__ == "__main__":
    unittest.main()
