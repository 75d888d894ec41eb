"""Weight formats end to end: the tiny model exported with --weights int8 (and int4) runs
through the C pipeline (build/fluxgen) as it does through the Python reference; its images
stay close to the fp32 model's; `fluxgen plan` reads its manifest; fluxcgi refuses to start
when the plan does not fit device_memory.

Run by `make test-pipeline` (FLUXGEN, FLUXCGI, FLUX_MODEL, PYTHONPATH=export).

Tolerances: C vs Python on the same quantised modules, 1e-4 on latents and 1 level on
pixels (as the fp32 parity tests: the same TorchScript modules, float32 rounding in a
different order). Quantised vs fp32 weights, 4 steps at 256 x 256 on the tiny model: final
latents rel. RMS <= 0.02 for int8 and <= 0.25 for int4, mean |pixel difference| <= 1 level
for int8 and <= 12 for int4 (measured 0.0060 / 0.32 and 0.135 / 7.9: 3x room for int8, 1.5-2x
for int4, whose error depends more on the draw; a wrong scale or a wrong nibble order gives
errors near 100%).
"""

import json
import os
import shutil
import subprocess
import tempfile
import unittest

import numpy as np
from PIL import Image

from fluxexport.reference import Pipeline
from tests.pipeline.test_pipeline import FLUXGEN, MODEL, PROMPT, fluxgen, tokens

FLUXCGI = os.environ.get("FLUXCGI", "build/fluxcgi")
TINY_SRC = os.environ.get("TINY_SRC", "build/tiny-src")
TOLS = {"int8": (0.02, 1.0), "int4": (0.25, 12.0)}


def rel_rms(a, b):
    return float(np.sqrt(np.mean((a - b) ** 2)) / np.sqrt(np.mean(b ** 2)))


def export(src, out, fmt):
    env = dict(os.environ)
    res = subprocess.run(["/usr/bin/python3", "-m", "fluxexport", "export", "--source", src,
                          "--layout", "bfl", "--name", f"flux-tiny-{fmt}", "-o", out, "--quiet",
                          "--weights", fmt], capture_output=True, text=True, env=env)
    if res.returncode != 0:
        raise RuntimeError(f"export --weights {fmt} failed: {res.stderr}")


class Formats(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix="fluxtest-formats-")
        src = os.path.join(TINY_SRC, "bfl")
        cls.models = {}
        for fmt in ("int8", "int4"):
            cls.models[fmt] = os.path.join(cls.tmp, fmt)
            export(src, cls.models[fmt], fmt)
        cls.clip, cls.t5 = tokens(PROMPT)

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.tmp)

    def generate(self, model, name, w=256, h=256, steps=4, seed=7, placement="resident"):
        out = os.path.join(self.tmp, name)
        os.makedirs(out + "-lat", exist_ok=True)
        fluxgen("--model", model, "--prompt", PROMPT, "--steps", str(steps), "--width", str(w),
                "--height", str(h), "--seed", str(seed), "--dump-latents", out + "-lat",
                "--placement", placement, "-o", out + ".png")
        lat = np.load(os.path.join(out + "-lat", f"step_{steps:03d}.npy"))
        with Image.open(out + ".png") as im:
            return lat, np.asarray(im.convert("RGB")).astype(int)

    def test_c_matches_reference_on_int8(self):
        ref = Pipeline.from_model_dir(self.models["int8"]).generate(
            self.clip, self.t5, 256, 256, 4, 3.5, 7)
        lat, px = self.generate(self.models["int8"], "int8-parity")
        self.assertLessEqual(float(np.abs(lat - ref["latents"][4].numpy()).max()), 1e-4)
        self.assertLessEqual(int(np.abs(px - ref["pixels"].numpy().astype(int)).max()), 1)

    def test_stream_streams_quantised_blocks(self):
        """A quantised export has the block methods too: stream runs the int4 blocks and
        gives resident's latents and pixels."""
        lat_r, px_r = self.generate(self.models["int4"], "int4-res", 64, 64, 2)
        lat_s, px_s = self.generate(self.models["int4"], "int4-stream", 64, 64, 2,
                                    placement="stream")
        self.assertTrue(np.array_equal(lat_r, lat_s))
        self.assertTrue(np.array_equal(px_r, px_s))

    def test_close_to_fp32(self):
        lat32, px32 = self.generate(MODEL, "fp32")
        for fmt, (tol_lat, tol_px) in TOLS.items():
            lat, px = self.generate(self.models[fmt], fmt)
            err, dpx = rel_rms(lat, lat32), float(np.abs(px - px32).mean())
            self.assertLessEqual(err, tol_lat, fmt)
            self.assertLessEqual(dpx, tol_px, fmt)
            self.assertGreater(err, 0.0, f"{fmt}: the weights were not quantised")

    def test_plan_reads_the_format(self):
        res = fluxgen("plan", "--model", self.models["int8"], "--json", "--placement",
                      "resident", "--size", "256")
        plan = json.loads(res.stdout)
        with open(os.path.join(self.models["int8"], "manifest.json")) as f:
            man = json.load(f)
        mods = {m["name"]: m for m in plan["modules"]}
        self.assertEqual(mods["transformer"]["weights"], "int8")
        self.assertEqual(mods["clip_text"]["weights"], "fp32")
        self.assertEqual(mods["transformer"]["param_bytes"],
                         man["modules"]["transformer"]["param_bytes"])
        self.assertEqual(plan["tokens"], 16 * 16 + 512)
        self.assertEqual(plan["overhead"], 0)  # the tiny model is exported for the CPU

    def check(self, device_memory):
        conf = os.path.join(self.tmp, "fluxcgi.conf")
        with open(conf, "w") as f:
            f.write(f"db = {self.tmp}/jobs.db\nmodel = {self.models['int4']}\n"
                    f"default_width = 256\ndefault_height = 256\n"
                    f"device_memory = {device_memory}\n")
        return subprocess.run([FLUXCGI, "--config", conf, "--check"], capture_output=True,
                              text=True)

    def test_service_refuses_a_model_that_does_not_fit(self):
        res = fluxgen("plan", "--model", self.models["int4"], "--json", "--placement",
                      "resident", "--size", "256")
        need = json.loads(res.stdout)["device_total"]
        res = self.check(need - 1)
        self.assertEqual(res.returncode, 1, res.stderr)
        self.assertIn("does not fit device_memory", res.stderr)
        self.assertIn(str(need), res.stderr)
        res = self.check(need + (1 << 20))
        self.assertEqual(res.returncode, 0, res.stderr)
        self.assertIn("memory plan: placement resident", res.stdout)
        self.assertIn("fits", res.stdout)


if __name__ == "__main__":
    unittest.main()
