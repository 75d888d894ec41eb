"""Placements (fluxgen --placement) on the tiny model, fp32 on the CPU: encoders-offload and
stream give the same bytes as resident, stream's block schedule is one block ahead, and
what cannot run is refused.

Run by `make test-pipeline` with FLUXGEN, FLUX_MODEL and PYTHONPATH=export set."""

import json
import os
import shutil
import subprocess
import tempfile
import unittest

import torch

FLUXGEN = os.environ.get("FLUXGEN", "build/fluxgen")
MODEL = os.environ.get("FLUX_MODEL", "build/models/tiny")
PROMPT = "a lighthouse on a cliff at dusk"
EXIT_USAGE, EXIT_MODEL = 2, 3


def fluxgen(*args):
    return subprocess.run([FLUXGEN, *args], capture_output=True)


def blocks():
    with open(os.path.join(MODEL, "manifest.json")) as f:
        t = json.load(f)["modules"]["transformer"]["params"]
    return t["depth"] + t["depth_single_blocks"]


def check_schedule(test, events, n, first_call):
    """The design: before block i runs, block i+1 (mod n) is the latest copy issued; a block is
    dropped right after it ran; at most two blocks are on the device; every block runs once, in
    order.  The first call copies block 0 first; later calls find it copied by the last block of
    the step before."""
    on = set() if first_call else {0}
    runs, last_fetch = [], None
    for ev in events:
        kind, i = ev[0], int(ev[1:])
        test.assertIn(kind, "FRE", ev)
        test.assertTrue(0 <= i < n, ev)
        if kind == "F":
            test.assertNotIn(i, on, f"{ev}: already on the device")
            on.add(i)
            last_fetch = i
        elif kind == "R":
            test.assertIn(i, on, f"{ev}: not on the device")
            test.assertEqual(last_fetch, (i + 1) % n, f"{ev}: not one ahead")
            runs.append(i)
        else:
            test.assertEqual(runs[-1], i, f"{ev}: dropped before it ran")
            on.remove(i)
        test.assertLessEqual(len(on), 2, f"{ev}: more than two blocks on the device")
    test.assertEqual(runs, list(range(n)))
    test.assertEqual(on, {0}, "the next step's first block is not prefetched")


class Placement(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix="fluxtest-place-")

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.tmp)

    def generate(self, placement, steps=3, extra=()):
        out = os.path.join(self.tmp, f"{placement}-{steps}")
        os.makedirs(out + "-lat", exist_ok=True)
        res = fluxgen("--model", MODEL, "--prompt", PROMPT, "--steps", str(steps), "--width",
                      "80", "--height", "64", "--seed", "11", "--placement", placement,
                      "--dump-latents", out + "-lat", "--json", "-o", out + ".png", *extra)
        self.assertEqual(res.returncode, 0, res.stderr.decode(errors="replace"))
        return out, json.loads(res.stdout)

    def test_identical_bytes(self):
        steps = 3
        base, info = self.generate("resident", steps)
        self.assertEqual(info["placement"], "resident")
        self.assertNotIn("stream_schedule", info)
        with open(base + ".png", "rb") as f:
            png = f.read()
        for placement in ("encoders-offload", "stream"):
            out, info = self.generate(placement, steps)
            self.assertEqual(info["placement"], placement)
            with open(out + ".png", "rb") as f:
                self.assertEqual(f.read(), png, f"{placement}: PNG bytes differ")
            for k in range(steps + 1):
                name = f"step_{k:03d}.npy"
                with open(os.path.join(base + "-lat", name), "rb") as a, \
                        open(os.path.join(out + "-lat", name), "rb") as b:
                    self.assertEqual(a.read(), b.read(), f"{placement}: {name} differs")

    def test_stream_schedule(self):
        n = blocks()
        self.assertGreaterEqual(n, 2)
        # one step: the log is the first transformer call's
        _, info = self.generate("stream", 1)
        events = info["stream_schedule"].split()
        self.assertEqual(events[:3], ["F0", "F1", "R0"])
        check_schedule(self, events, n, first_call=True)
        # two steps: the log is the second call's, whose first block was prefetched
        _, info = self.generate("stream", 2)
        events = info["stream_schedule"].split()
        self.assertEqual(events[:2], ["F1", "R0"])
        check_schedule(self, events, n, first_call=False)

    def test_schedule_on_stderr(self):
        out = os.path.join(self.tmp, "text.png")
        res = fluxgen("--model", MODEL, "--prompt", PROMPT, "--steps", "1", "--width", "64",
                      "--height", "64", "--seed", "1", "--placement", "stream", "-o", out)
        self.assertEqual(res.returncode, 0, res.stderr)
        self.assertIn(b"stream: block schedule of the last step: F0 F1 R0 E0", res.stderr)

    def test_auto_on_cpu_is_resident(self):
        _, info = self.generate("auto", 1, ("--device-memory", "1G"))
        self.assertEqual(info["placement"], "resident")

    def test_bad_values(self):
        for args, needle in ((("--placement", "offload"), b"--placement: 'offload'"),
                             (("--placement", "auto", "--device-memory", "12Q"),
                              b"--device-memory: '12Q'")):
            res = fluxgen("--model", MODEL, "--prompt", "x", "-o",
                          os.path.join(self.tmp, "bad.png"), *args)
            self.assertEqual(res.returncode, EXIT_USAGE)
            self.assertIn(needle, res.stderr)

    def test_stream_refused_without_block_methods(self):
        """A transformer.pt without embed/final (an older export): stream is refused with a
        message naming the placements that run it, and resident still runs."""
        d = os.path.join(self.tmp, "old-model")
        shutil.copytree(MODEL, d)
        inner = torch.jit.load(os.path.join(MODEL, "transformer.pt"))

        class Plain(torch.nn.Module):
            def __init__(self, m):
                super().__init__()
                self.m = m

            def forward(self, img, img_ids, txt, txt_ids, timesteps, y, guidance):
                return self.m(img, img_ids, txt, txt_ids, timesteps, y, guidance)

        torch.jit.save(torch.jit.script(Plain(inner)), os.path.join(d, "transformer.pt"))
        args = ("--model", d, "--prompt", PROMPT, "--steps", "1", "--width", "64", "--height",
                "64", "-o", os.path.join(self.tmp, "old.png"))
        res = fluxgen(*args, "--placement", "stream")
        self.assertEqual(res.returncode, EXIT_MODEL, res.stderr)
        self.assertIn(b"placement 'stream'", res.stderr)
        self.assertIn(b"'resident' and 'encoders-offload' run it", res.stderr)
        res = fluxgen(*args, "--placement", "resident")
        self.assertEqual(res.returncode, 0, res.stderr)


class Check(unittest.TestCase):
    """fluxcgi --check prints the configured placement and plans it; a bad value is refused."""

    def check(self, placement, extra=""):
        with tempfile.TemporaryDirectory(prefix="fluxtest-place-") as tmp:
            conf = os.path.join(tmp, "fluxcgi.conf")
            with open(conf, "w") as f:
                f.write(f"db = {tmp}/jobs.db\nmodel = {os.path.abspath(MODEL)}\n"
                        f"placement = {placement}\n{extra}")
            return subprocess.run([os.environ.get("FLUXCGI", "build/fluxcgi"), "--config", conf,
                                   "--check"], capture_output=True, text=True)

    def test_check(self):
        for placement in ("resident", "encoders-offload", "stream"):
            res = self.check(placement)
            self.assertEqual(res.returncode, 0, res.stderr)
            self.assertIn(f"placement: {placement}, weights fp32", res.stdout)
            self.assertIn(f"memory plan: placement {placement}", res.stdout)
        res = self.check("auto", "default_width = 64\ndefault_height = 64\ndevice_memory = 1G\n")
        self.assertEqual(res.returncode, 0, res.stderr)
        self.assertIn("placement: resident (auto)", res.stdout)  # the CPU: resident
        # the start-up check plans the configured placement: a figure that only stream fits
        # lets a stream service start, and stops a resident one
        plans = {}
        out = subprocess.run([os.environ.get("FLUXGEN", "build/fluxgen"), "plan", "--model",
                              MODEL, "--json", "--size", "64"], capture_output=True, text=True)
        for line in out.stdout.splitlines():
            d = json.loads(line)
            plans[d["placement"]] = d["device_total"]
        between = (plans["stream"] + plans["resident"]) // 2
        fits = f"default_width = 64\ndefault_height = 64\ndevice_memory = {between}\n"
        res = self.check("stream", fits)
        self.assertEqual(res.returncode, 0, res.stderr)
        res = self.check("resident", fits)
        self.assertNotEqual(res.returncode, 0, res.stdout)
        self.assertIn("does not fit device_memory", res.stderr)
        res = self.check("offload")
        self.assertEqual(res.returncode, 2, res.stdout)
        self.assertIn("'offload' is not resident, encoders-offload, stream or auto", res.stderr)


if __name__ == "__main__":
    unittest.main()
