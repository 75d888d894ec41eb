"""`make help` lists every public target, one line each: every .PHONY target of the Makefile
(but internal ones, whose names start with '_' or '.') appears with a description."""

import os
import re
import subprocess
import unittest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def phony_targets():
    with open(os.path.join(ROOT, "Makefile")) as f:
        text = f.read().replace("\\\n", " ")
    names = set()
    for line in re.findall(r"(?m)^\.PHONY\s*:(.*)$", text):
        names.update(line.split())
    return {n for n in names if not n.startswith(("_", "."))}


class MakeHelp(unittest.TestCase):
    def test_every_public_target_has_one_line(self):
        res = subprocess.run(["make", "-C", ROOT, "--no-print-directory", "help"],
                             capture_output=True, text=True, timeout=60)
        self.assertEqual(res.returncode, 0, res.stderr)
        lines = res.stdout.splitlines()
        listed = {}
        for line in lines:
            m = re.match(r"make (\[?)([a-z][a-z0-9-]*)\]? {2,}(\S.*)$", line)
            self.assertIsNotNone(m, f"not a 'make TARGET  description' line: {line!r}")
            listed[m.group(2)] = m.group(3)
        targets = phony_targets()
        self.assertGreater(len(targets), 20)
        self.assertEqual(sorted(targets - set(listed)), [], "targets missing from make help")
        self.assertEqual(sorted(set(listed) - targets), [], "make help lists unknown targets")
        self.assertEqual(len(lines), len(listed), "a target listed twice")


if __name__ == "__main__":
    unittest.main()
