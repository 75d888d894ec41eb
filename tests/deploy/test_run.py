"""tools/run.sh (what `make run` calls): a wrong model dir and a busy port fail with a message
that says what to do and a non-zero status; a good start serves /ping and SIGTERM stops it
with status 0.  Every run is bounded and its process group is killed afterwards."""

import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import unittest
import urllib.error
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
RUN_SH = os.path.join(ROOT, "tools", "run.sh")
FLUXCGI = os.path.join(ROOT, "build", "fluxcgi")
MODEL = os.environ.get("FLUX_MODEL", os.path.join(ROOT, "build", "models", "tiny"))
TIMEOUT = 120


class RunSh(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="fluxcgi-run-")
        self.addCleanup(shutil.rmtree, self.tmp, True)

    def start(self, model, port, stdout=subprocess.PIPE):
        proc = subprocess.Popen([RUN_SH, "--fluxcgi", FLUXCGI, "--model", model, "--dir",
                                 os.path.join(self.tmp, "run"), "--port", str(port), "--tiny"],
                                stdout=stdout, stderr=subprocess.PIPE, text=True,
                                start_new_session=True)
        self.addCleanup(self.kill_group, proc)
        return proc

    @staticmethod
    def kill_group(proc):
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.communicate()

    def run_sh(self, model, port=1):
        proc = self.start(model, port)
        out, err = proc.communicate(timeout=TIMEOUT)
        return proc.returncode, out, err

    def test_model_dir_that_does_not_exist(self):
        missing = os.path.join(self.tmp, "nonexistent")
        rc, out, err = self.run_sh(missing)
        self.assertNotEqual(rc, 0)
        self.assertIn(f"run.sh: model dir '{missing}' does not exist (make run MODEL=DIR takes "
                      "a model dir; a model dir is written by 'fluxexport export", err)
        self.assertNotIn("can't cd", err)
        self.assertFalse(os.path.exists(os.path.join(self.tmp, "run")))

    def test_checkpoint_folder_gets_the_export_command(self):
        ck = os.path.join(self.tmp, "ck")
        os.makedirs(os.path.join(ck, "transformer"))
        rc, _, err = self.run_sh(ck)
        self.assertNotEqual(rc, 0)
        self.assertIn(f"it looks like a diffusers checkpoint, not a model dir; convert it with "
                      f"'fluxexport export --source {ck} --layout diffusers -o OUT' and run "
                      "'make run MODEL=OUT'", err)
        shutil.rmtree(ck)
        os.mkdir(ck)
        open(os.path.join(ck, "flux1-dev.safetensors"), "wb").close()
        rc, _, err = self.run_sh(ck)
        self.assertNotEqual(rc, 0)
        self.assertIn("--layout bfl -o OUT", err)

    def test_busy_port(self):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            s.listen()
            port = s.getsockname()[1]
            rc, out, err = self.run_sh(MODEL, port)
        self.assertNotEqual(rc, 0, out + err)
        self.assertNotIn("serving", out)
        self.assertIn("Address already in use", err)
        self.assertIn(f"run.sh: port {port} on 127.0.0.1 is already in use; choose another one: "
                      "make run RUN_PORT=N", err)

    def test_serves_and_stops_on_sigterm(self):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        log = os.path.join(self.tmp, "stdout")
        with open(log, "w") as stdout:
            proc = self.start(MODEL, port, stdout=stdout)
        serving = f"run.sh: serving {os.path.realpath(MODEL)} on http://127.0.0.1:{port}"
        deadline = time.monotonic() + TIMEOUT
        while time.monotonic() < deadline and proc.poll() is None:
            with open(log) as f:
                if serving in f.read():
                    break
            time.sleep(0.2)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=30) as r:
            self.assertEqual(r.status, 200)
        # make run on 127.0.0.1 needs no API key (the installed config does)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/queue/status", timeout=30) as r:
            self.assertEqual(r.status, 200)
        with open(os.path.join(self.tmp, "run", "fluxcgi.conf")) as f:
            self.assertRegex(f.read(), r"(?m)^auth = off\b")
        # on the CPU, make run bounds the image size (a 2048x2048 request grew past 14 GB)
        req = urllib.request.Request(
            f"http://127.0.0.1:{port}/generate/queue", method="POST",
            data=json.dumps({"prompt": "big", "width": 2048, "height": 2048}).encode(),
            headers={"Content-Type": "application/json"})
        with self.assertRaises(urllib.error.HTTPError) as cm:
            urllib.request.urlopen(req, timeout=30)
        self.assertEqual(cm.exception.code, 422)
        self.assertEqual(json.loads(cm.exception.read())["error"]["code"], "out_of_range")
        os.kill(proc.pid, signal.SIGTERM)
        _, err = proc.communicate(timeout=TIMEOUT)
        self.assertEqual(proc.returncode, 0, err)
        with open(log) as f:
            out = f.read()
        self.assertIn(serving, out)
        self.assertIn("run.sh: stopped", out)

if __name__ == "__main__":
    unittest.main()
