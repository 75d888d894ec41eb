"""The README's curl block runs verbatim against a stack configured as `make run` configures
it (tiny model, small defaults), with only the port changed."""
import os
import re
import subprocess
import tempfile
import unittest

from tests.service.stack import ROOT, Stack

MARK = "<!-- readme-curl-examples"


def readme_block():
    with open(os.path.join(ROOT, "README.md")) as f:
        text = f.read()
    start = text.index(MARK)
    m = re.compile(r"```sh\n(.*?)```", re.S).search(text, start)
    return m.group(1)


class TestReadme(unittest.TestCase):
    def test_curl_examples(self):
        block = readme_block()
        self.assertIn("/generate/queue", block)
        s = Stack("readme", "nginx", {"default_steps": "4", "default_width": "256",
                                      "default_height": "256"})
        self.addCleanup(s.stop)
        s.start()
        script = "set -eu\n" + block.replace("127.0.0.1:8080", "127.0.0.1:%d" % s.port)
        with tempfile.TemporaryDirectory() as d:
            r = subprocess.run(["sh", "-c", script], cwd=d, capture_output=True, text=True,
                               timeout=300)
            self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
            out = r.stdout
            with open(os.path.join(d, "cat.png"), "rb") as f:
                self.assertTrue(f.read(8) == b"\x89PNG\r\n\x1a\n")
            with open(os.path.join(d, "bicycle.png"), "rb") as f:
                self.assertTrue(f.read(8) == b"\x89PNG\r\n\x1a\n")
        self.assertIn('"status":"ok"', out)
        self.assertIn("X-Seed:", out)
        self.assertIn("HTTP/1.1 202", out)
        self.assertIn("Location: /queue/status/", out)
        self.assertIn("200 image/png", out)
        self.assertIn('"already_finished"', out)
        self.assertIn("fluxcgi_queue_depth", out)


if __name__ == "__main__":
    unittest.main()
