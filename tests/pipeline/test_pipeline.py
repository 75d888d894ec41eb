"""The C pipeline (build/fluxgen) against the Python reference on the tiny model: latents,
pixels, noise, determinism, the PNG it writes and its errors.

Run by `make test-pipeline` with FLUXGEN (the binary), FLUX_MODEL (the tiny model dir) and
PYTHONPATH=export in the environment."""

import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import unittest

import numpy as np
import torch
from PIL import Image

from fluxexport import sampling
from fluxexport.reference import Pipeline

FLUXGEN = os.environ.get("FLUXGEN", "build/fluxgen")
MODEL = os.environ.get("FLUX_MODEL", "build/models/tiny")
PROMPT = "a tiny red fox in the snow, watercolor"

EXIT_USAGE, EXIT_MODEL, EXIT_RUNTIME = 2, 3, 4


def fluxgen(*args, check=True):
    res = subprocess.run([FLUXGEN, *args], capture_output=True)
    if check and res.returncode != 0:
        raise AssertionError(f"fluxgen {' '.join(args)} failed ({res.returncode}): "
                             f"{res.stderr.decode(errors='replace')}")
    return res


def tokens(prompt):
    out = fluxgen("tokenize", "--model", MODEL, "--prompt", prompt).stdout
    d = json.loads(out)
    return d["clip"], d["t5"]


class Parity(unittest.TestCase):
    """fluxgen vs the reference pipeline on the same TorchScript modules, fp32."""

    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix="fluxtest-pipe-")
        cls.ref = Pipeline.from_model_dir(MODEL)
        cls.clip, cls.t5 = tokens(PROMPT)

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.tmp)

    def generate(self, w, h, steps, seed, name, guidance="3.5"):
        out = os.path.join(self.tmp, name)
        os.makedirs(out + "-lat", exist_ok=True)
        res = fluxgen("--model", MODEL, "--prompt", PROMPT, "--steps", str(steps), "--guidance",
                      guidance, "--width", str(w), "--height", str(h), "--seed", str(seed),
                      "--dump-latents", out + "-lat", "--json", "-o", out + ".png")
        return out, json.loads(res.stdout)

    def check_parity(self, w, h, steps, seed):
        out, info = self.generate(w, h, steps, seed, f"p{w}x{h}s{steps}")
        self.assertEqual(info["seed"], seed)
        ref = self.ref.generate(self.clip, self.t5, w, h, steps, 3.5, seed)
        for k in (0, 1, steps):
            c = np.load(os.path.join(out + "-lat", f"step_{k:03d}.npy"))
            r = ref["latents"][k].numpy()
            self.assertEqual(c.shape, r.shape)
            self.assertLessEqual(float(np.abs(c - r).max()), 1e-4, f"step {k} at {w}x{h}")
        with Image.open(out + ".png") as im:
            img = np.asarray(im.convert("RGB"))
        self.assertEqual(img.shape, (h, w, 3))
        diff = np.abs(img.astype(int) - ref["pixels"].numpy().astype(int)).max()
        self.assertLessEqual(diff, 1, f"pixels at {w}x{h}")
        self.assertGreater(img.std(), 1.0)

    def test_256x256_two_steps(self):
        self.check_parity(256, 256, 2, 11)

    def test_384x256_four_steps(self):
        self.check_parity(384, 256, 4, 12)

    def test_256x384_one_step(self):
        self.check_parity(256, 384, 1, 13)

    def test_noise_is_torch_randn(self):
        out, _ = self.generate(256, 256, 1, 424242, "noise")
        got = np.load(os.path.join(out + "-lat", "step_000.npy"))
        g = torch.Generator("cpu").manual_seed(424242)
        want = sampling.pack(torch.randn(1, 16, 32, 32, generator=g)).numpy()
        self.assertTrue(np.array_equal(got, want))

    def test_large_seed(self):
        seed = 2 ** 53 - 1
        out, info = self.generate(256, 256, 1, seed, "bigseed")
        self.assertEqual(info["seed"], seed)
        got = np.load(os.path.join(out + "-lat", "step_000.npy"))
        g = torch.Generator("cpu").manual_seed(seed)
        want = sampling.pack(torch.randn(1, 16, 32, 32, generator=g)).numpy()
        self.assertTrue(np.array_equal(got, want))


class Output(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="fluxtest-out-")
        self.addCleanup(shutil.rmtree, self.tmp)

    def run_png(self, name, *extra):
        path = os.path.join(self.tmp, name)
        steps = () if "--steps" in extra else ("--steps", "2")
        fluxgen("--model", MODEL, "--prompt", PROMPT, *steps, "--width", "256",
                "--height", "256", "-o", path, *extra)
        with open(path, "rb") as f:
            return f.read()

    def test_deterministic_and_seeded(self):
        a = self.run_png("a.png", "--seed", "5")
        b = self.run_png("b.png", "--seed", "5")
        c = self.run_png("c.png", "--seed", "6")
        self.assertEqual(a, b)
        self.assertNotEqual(a, c)

    def test_png_carries_parameters(self):
        data = self.run_png("p.png", "--seed", "77", "--guidance", "4.5")
        img = Image.open(io.BytesIO(data))
        self.assertEqual(img.size, (256, 256))
        self.assertEqual(img.mode, "RGB")
        params = json.loads(img.info["parameters"])
        self.assertEqual(params["prompt"], PROMPT)
        self.assertEqual(params["seed"], 77)
        self.assertEqual(params["num_inference_steps"], 2)
        self.assertEqual(params["guidance_scale"], 4.5)
        self.assertEqual((params["width"], params["height"]), (256, 256))
        self.assertEqual(params["model"], "flux-tiny")
        with open(os.path.join(MODEL, "manifest.json"), "rb") as f:
            import hashlib
            self.assertEqual(params["model_sha256"], hashlib.sha256(f.read()).hexdigest())
        self.assertTrue(params["program"].startswith("fluxcgi "))

    def test_count_makes_consecutive_seeds_in_one_process(self):
        pattern = os.path.join(self.tmp, "n-%d.png")
        res = fluxgen("--model", MODEL, "--prompt", PROMPT, "--steps", "1", "--width", "256",
                      "--height", "256", "--seed", "40", "--count", "3", "--json", "-o", pattern)
        rows = [json.loads(line) for line in res.stdout.decode().splitlines()]
        self.assertEqual([r["seed"] for r in rows], [40, 41, 42])
        single = self.run_png("s41.png", "--seed", "41", "--steps", "1")
        with open(pattern % 1, "rb") as f:
            self.assertEqual(f.read(), single)
        bad = fluxgen("--model", MODEL, "--prompt", PROMPT, "--count", "2", "-o",
                      os.path.join(self.tmp, "x.png"), check=False)
        self.assertEqual(bad.returncode, EXIT_USAGE)

    def test_random_seed_is_reported(self):
        path = os.path.join(self.tmp, "r.png")
        res = fluxgen("--model", MODEL, "--prompt", PROMPT, "--steps", "1", "--width", "256",
                      "--height", "256", "-o", path, "--json")
        info = json.loads(res.stdout)
        self.assertTrue(0 <= info["seed"] < 2 ** 53)
        with Image.open(path) as img:
            self.assertEqual(json.loads(img.info["parameters"])["seed"], info["seed"])
        for phase in ("tokenize", "encode", "denoise", "decode", "png"):
            self.assertGreaterEqual(info["timings"][phase], 0.0)
        tok = json.loads(fluxgen("tokenize", "--model", MODEL, "--prompt", PROMPT).stdout)
        self.assertEqual((info["clip_tokens"], info["t5_tokens"]),
                         (tok["clip_tokens"], tok["t5_tokens"]))


class Errors(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="fluxtest-err-")
        self.addCleanup(shutil.rmtree, self.tmp)
        self.out = os.path.join(self.tmp, "o.png")

    def model_copy(self, edit_manifest=None):
        """A copy of the model dir; edit_manifest(dict) may change its manifest."""
        d = os.path.join(self.tmp, "model")
        shutil.copytree(MODEL, d)
        if edit_manifest:
            p = os.path.join(d, "manifest.json")
            with open(p) as f:
                m = json.load(f)
            edit_manifest(m)
            with open(p, "w") as f:
                json.dump(m, f)
        return d

    def gen(self, model, *extra):
        return fluxgen("--model", model, "--prompt", PROMPT, "--steps", "1", "--width", "256",
                       "--height", "256", "-o", self.out, *extra, check=False)

    def assert_fails(self, res, code, pattern):
        err = res.stderr.decode(errors="replace")
        self.assertEqual(res.returncode, code, err)
        self.assertRegex(err, pattern)
        self.assertFalse(os.path.exists(self.out))
        self.assertNotIn("Traceback", err)

    def test_bad_arguments(self):
        for args, pattern in ((("--steps", "0"), r"num_inference_steps"),
                              (("--steps", "100000"), r"num_inference_steps"),
                              (("--width", "250"), r"width: must be a multiple of 16"),
                              (("--height", "-16"), r"height"),
                              (("--width", "99999999999"), r"width"),
                              (("--guidance", "nan"), r"guidance"),
                              (("--guidance", "inf"), r"guidance"),
                              (("--steps", "3x"), r"steps"),
                              (("--seed", "-1"), r"seed"),
                              (("--seed", "9007199254740992"), r"seed"),
                              (("--device", "tpu"), r"device"),
                              (("--bogus",), r"bogus")):
            self.assert_fails(self.gen(MODEL, *args), EXIT_USAGE, pattern)
        res = fluxgen("--model", MODEL, "-o", self.out, check=False)
        self.assert_fails(res, EXIT_USAGE, r"prompt")

    def test_missing_module(self):
        d = self.model_copy()
        os.remove(os.path.join(d, "transformer.pt"))
        self.assert_fails(self.gen(d), EXIT_MODEL, r"transformer.pt' not found")

    def test_corrupted_module(self):
        d = self.model_copy()
        with open(os.path.join(d, "ae_decoder.pt"), "r+b") as f:
            f.truncate(1000)
        self.assert_fails(self.gen(d), EXIT_MODEL, r"cannot load '.*ae_decoder.pt'")

    def test_other_format_version(self):
        d = self.model_copy(lambda m: m.update(format_version=2))
        self.assert_fails(self.gen(d), EXIT_MODEL, r"format_version 2; this build reads version 1")

    def test_missing_manifest_and_bad_json(self):
        self.assert_fails(self.gen(os.path.join(self.tmp, "none")), EXIT_MODEL, r"manifest.json")
        d = self.model_copy()
        with open(os.path.join(d, "manifest.json"), "w") as f:
            f.write("{\"format\": ")
        self.assert_fails(self.gen(d), EXIT_MODEL, r"not valid JSON")

    def test_hostile_module_path(self):
        d = self.model_copy(lambda m: m["modules"]["transformer"].update(file="../../etc/passwd"))
        self.assert_fails(self.gen(d), EXIT_MODEL, r"must be a file inside the model dir")

    def test_unwritable_output(self):
        res = fluxgen("--model", MODEL, "--prompt", PROMPT, "--steps", "1", "--width", "256",
                      "--height", "256", "-o", os.path.join(self.tmp, "no", "dir", "x.png"),
                      check=False)
        self.assertEqual(res.returncode, EXIT_RUNTIME, res.stderr)
        self.assertRegex(res.stderr.decode(), r"x.png")


if __name__ == "__main__":
    unittest.main()
