"""The fluxexport command line itself: help on stdout with status 0, usage errors on stderr
with status 2 that say what was wrong, and a clear message (status 3) on a Python without
torch."""

import os
import shutil
import subprocess
import sys
import unittest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
EXPORT = os.path.join(ROOT, "export")
COMMANDS = ("export", "tiny", "tiny-tokenizers", "reference", "random-model", "lora-random")


def run(*args, python=sys.executable):
    env = dict(os.environ, PYTHONPATH=EXPORT, PYTHONDONTWRITEBYTECODE="1")
    return subprocess.run([python, "-m", "fluxexport", *args], capture_output=True, text=True,
                          env=env, timeout=120)


def python_without_torch():
    """A python3 on PATH (or beside it) that cannot import torch, or None."""
    seen = set()
    for name in ("python3", "python", "python3.11", "python3.12", "python3.13"):
        path = shutil.which(name)
        if path is None or path in seen:
            continue
        seen.add(path)
        res = subprocess.run([path, "-c", "import sys; import torch"], capture_output=True,
                             timeout=120)
        if res.returncode != 0 and b"No module named 'torch'" in res.stderr:
            return path
    return None


class Cli(unittest.TestCase):
    def test_help_goes_to_stdout_with_status_0(self):
        for flag in ("--help", "-h"):
            res = run(flag)
            self.assertEqual(res.returncode, 0, res.stderr)
            self.assertEqual(res.stderr, "")
            for cmd in COMMANDS:
                self.assertRegex(res.stdout, rf"(?m)^  {cmd} +\S")
            self.assertIn("PYTHON=/path/to/venv/bin/python fluxexport", res.stdout)
            self.assertRegex(res.stdout, r"exit status: 0 ok, 1 bad checkpoint or input, "
                                         r"2 bad arguments, 3 anything else")

    def test_export_help_says_how_to_choose_the_python(self):
        res = run("export", "--help")
        self.assertEqual(res.returncode, 0, res.stderr)
        self.assertIn("--layout {auto,bfl,diffusers}", res.stdout)
        self.assertIn("PYTHON=/path/to/venv/bin/python fluxexport export", res.stdout)
        self.assertIn("exit status: 0 ok", res.stdout)

    def test_unknown_command_is_named(self):
        res = run("exprot", "--source", "x")
        self.assertEqual(res.returncode, 2)
        self.assertEqual(res.stdout, "")
        self.assertEqual(res.stderr, "fluxexport: unknown command 'exprot' (commands: "
                                     f"{', '.join(COMMANDS)}; fluxexport --help for more)\n")

    def test_no_command(self):
        res = run()
        self.assertEqual(res.returncode, 2)
        self.assertEqual(res.stdout, "")
        self.assertTrue(res.stderr.startswith("fluxexport: no command given\nusage: "),
                        res.stderr)

    def test_python_without_torch(self):
        python = python_without_torch()
        if python is None:
            self.skipTest("every python on PATH has torch")
        exe = subprocess.run([python, "-c", "import sys; print(sys.executable)"],
                             capture_output=True, text=True, timeout=60).stdout.strip()
        for args in (("export", "--source", "x", "-o", "y"), ("tiny", "--out", "x")):
            with self.subTest(args=args):
                res = run(*args, python=python)
                self.assertEqual(res.returncode, 3, res.stderr)
                self.assertNotIn("Traceback", res.stderr)
                self.assertIn(f"fluxexport: {exe} (Python ", res.stderr)
                self.assertIn("has no PyTorch (the module 'torch')", res.stderr)
                self.assertIn("PYTHON=/path/to/venv/bin/python fluxexport", res.stderr)


if __name__ == "__main__":
    unittest.main()
