"""The C pipeline (build/fluxgen) against the Python reference on the tiny model: latents,
pixels, noise, determinism, the PNG it writes and its errors.

Run by `make test-pipeline` with FLUXGEN (the binary), FLUX_MODEL (the tiny model dir) and
PYTHONPATH=export in the environment."""

import io
import json
import os
import re
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
        params = json.loads(img.info["fluxcgi"])
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
        # the A1111-style text that image viewers and A1111 tools read: prompt, then settings
        text = img.info["parameters"]
        self.assertEqual(text.split("\n")[0], PROMPT)
        last = text.split("\n")[-1]
        for part in ("Steps: 2", "Seed: 77", "Size: 256x256", "Distilled CFG Scale: 4.5",
                     "Model: flux-tiny", "Model hash: " + params["model_sha256"][:10]):
            self.assertIn(part, last)

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
            self.assertEqual(json.loads(img.info["fluxcgi"])["seed"], info["seed"])
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
        size = r"must be a multiple of 16 from 64 to 2048 \(the model's limits\), got"
        for args, pattern in ((("--steps", "0"), r"--steps: must be from 1 to 100, got '0'"),
                              (("--steps", "100000"), r"--steps: must be from 1 to 100, got"),
                              (("--steps", "abc"), r"--steps: 'abc' is not an integer"),
                              (("--steps", "3x"), r"--steps: '3x' is not an integer"),
                              (("--steps", ""), r"--steps: '' is not an integer"),
                              (("--steps", "99999999999999999999999"),
                               r"--steps: must be from 1 to 100, got '9+'"),
                              (("--width", "250"), r"--width: " + size + " '250'"),
                              (("--height", "-16"), r"--height: " + size + " '-16'"),
                              (("--width", "99999999999"), r"--width: " + size),
                              (("--width", "wide"), r"--width: 'wide' is not an integer"),
                              (("--height", "1e3"), r"--height: '1e3' is not an integer"),
                              (("--guidance", "nan"), r"--guidance: must be a number from 0 to 100"),
                              (("--guidance", "inf"), r"--guidance: must be a number from 0 to 100"),
                              (("--guidance", "101"), r"--guidance: must be a number from 0 to 100"),
                              (("--guidance", "x"), r"--guidance: 'x' is not a number"),
                              (("--seed", "-1"), r"--seed: must be from 0 to 9007199254740991"),
                              (("--seed", "9007199254740992"), r"--seed: must be from 0 to"),
                              (("--seed", "abc"), r"--seed: 'abc' is not an integer"),
                              (("--count", "0"), r"--count: must be from 1 to 100000, got '0'"),
                              (("--count", "two"), r"--count: 'two' is not an integer"),
                              (("--threads", "-1"), r"--threads: must be from 0 to 1024"),
                              (("--threads", "x"), r"--threads: 'x' is not an integer"),
                              (("--device", "tpu"), r"--device: 'tpu' is not cpu, cuda or cuda:N"),
                              (("--bogus",), r"unknown option '--bogus'")):
            with self.subTest(args=args):
                self.assert_fails(self.gen(MODEL, *args), EXIT_USAGE, pattern)
        res = fluxgen("--model", MODEL, "-o", self.out, check=False)
        self.assert_fails(res, EXIT_USAGE, r"missing --prompt")
        res = fluxgen("--prompt", PROMPT, check=False)
        self.assert_fails(res, EXIT_USAGE, r"missing --model, -o")
        res = fluxgen("--model", MODEL, "--prompt", PROMPT, "-o", check=False)
        self.assert_fails(res, EXIT_USAGE, r"-o needs a value")

    def test_a_value_that_is_no_number_beats_a_missing_model(self):
        """A value that is no number is wrong whatever the model: exit 2, not 3."""
        self.assert_fails(self.gen(os.path.join(self.tmp, "none"), "--steps", "abc"), EXIT_USAGE,
                          r"--steps: 'abc' is not an integer")

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
        self.assert_fails(self.gen(os.path.join(self.tmp, "none")), EXIT_MODEL,
                          r"model '.*none': the directory does not exist")
        empty = os.path.join(self.tmp, "empty")
        os.mkdir(empty)
        self.assert_fails(self.gen(empty), EXIT_MODEL, r"no manifest.json: not a model dir")
        self.assert_fails(self.gen(os.path.join(MODEL, "manifest.json")), EXIT_MODEL,
                          r"not a directory")
        d = self.model_copy()
        with open(os.path.join(d, "manifest.json"), "w") as f:
            f.write("{\"format\": ")
        self.assert_fails(self.gen(d), EXIT_MODEL, r"not valid JSON")

    def test_checkpoint_folder_instead_of_model_dir(self):
        """A checkpoint folder gets the exporter command that converts it."""
        bfl = os.path.join(self.tmp, "bfl")
        os.mkdir(bfl)
        for name in ("flux1-krea-dev.safetensors", "ae.safetensors"):
            open(os.path.join(bfl, name), "wb").close()
        diffusers = os.path.join(self.tmp, "diffusers")
        os.makedirs(os.path.join(diffusers, "transformer"))
        index = os.path.join(self.tmp, "index")
        os.mkdir(index)
        open(os.path.join(index, "model_index.json"), "w").close()
        for d, layout, name in ((bfl, "bfl", "BFL"), (diffusers, "diffusers", "diffusers"),
                                (index, "diffusers", "diffusers")):
            with self.subTest(layout=layout, dir=d):
                self.assert_fails(
                    self.gen(d), EXIT_MODEL,
                    rf"no manifest.json: this looks like a {name} checkpoint, not a model dir; "
                    rf"convert it with `fluxexport export --source '{d}' --layout {layout} -o OUT`")

    def test_hostile_module_path(self):
        d = self.model_copy(lambda m: m["modules"]["transformer"].update(file="../../etc/passwd"))
        self.assert_fails(self.gen(d), EXIT_MODEL, r"must be a file inside the model dir")

    def test_unwritable_output(self):
        res = fluxgen("--model", MODEL, "--prompt", PROMPT, "--steps", "1", "--width", "256",
                      "--height", "256", "-o", os.path.join(self.tmp, "no", "dir", "x.png"),
                      check=False)
        self.assertEqual(res.returncode, EXIT_RUNTIME, res.stderr)
        self.assertRegex(res.stderr.decode(), r"x.png")


class Help(unittest.TestCase):
    """Help on stdout with status 0; usage errors on stderr, saying what was wrong, status 2."""

    GENERATE_OPTIONS = ("--model", "--prompt", "-o", "--output", "--steps", "--guidance",
                        "--width", "--height", "--seed", "--count", "--device", "--threads",
                        "--json", "--dump-latents", "--quiet", "--help")

    def test_generate_help_describes_every_option_and_exit_status(self):
        for args in (("generate", "--help"), ("generate", "-h"),
                     ("--model", "x", "--help")):
            res = fluxgen(*args)
            out = res.stdout.decode()
            self.assertEqual(res.stderr, b"")
            for opt in self.GENERATE_OPTIONS:
                self.assertRegex(out, rf"(?m)^  (-o, |-h, )?{opt}\b.*\S", opt)
            for default in ("28", "3.5", "1024", "random"):
                self.assertIn(default, out)
            self.assertRegex(out, r"exit status: 0 done, 2 bad arguments, 3 bad model dir")
            self.assertRegex(out, r"4 generation or writing the output failed, 130 interrupted")

    def test_top_level_help_lists_subcommands(self):
        for flag in ("--help", "-h"):
            res = fluxgen(flag)
            out = res.stdout.decode()
            self.assertEqual(res.stderr, b"")
            self.assertRegex(out, r"(?m)^  generate +make an image")
            self.assertRegex(out, r"(?m)^  tokenize +print the CLIP and T5 token ids")
            self.assertIn("--version", out)
            self.assertIn("exit status", out)

    def test_version(self):
        with open(os.path.join(os.path.dirname(__file__), "..", "..", "core", "version.h")) as f:
            version = re.search(r'#define FX_VERSION "([^"]+)"', f.read()).group(1)
        res = fluxgen("--version")
        self.assertEqual(res.stdout.decode(), f"fluxgen {version}\n")
        self.assertEqual(res.stderr, b"")

    def test_usage_errors_say_what_was_wrong(self):
        for args, pattern in (((), r"^fluxgen: no command given\n"),
                              (("frobnicate",),
                               r"^fluxgen: unknown command 'frobnicate' \(commands: generate, "
                               r"tokenize"),
                              (("tokenize", "--model", MODEL),
                               r"^fluxgen tokenize: give one of --prompt TEXT and --stdin"),
                              (("tokenize", "--bogus"), r"^fluxgen tokenize: unknown argument")):
            with self.subTest(args=args):
                res = fluxgen(*args, check=False)
                self.assertEqual(res.returncode, EXIT_USAGE)
                self.assertEqual(res.stdout, b"")
                self.assertRegex(res.stderr.decode(), pattern)


class Json(unittest.TestCase):
    def test_output_path_with_tab_and_quote_is_valid_json(self):
        tmp = tempfile.mkdtemp(prefix="fluxtest-json-")
        self.addCleanup(shutil.rmtree, tmp)
        path = os.path.join(tmp, 'a\tb"c\\d.png')
        res = fluxgen("--model", MODEL, "--prompt", PROMPT, "--steps", "1", "--width", "64",
                      "--height", "64", "--seed", "7", "--guidance", "2.5", "--json", "-o", path)
        lines = res.stdout.decode().splitlines()
        self.assertEqual(len(lines), 1, lines)
        info = json.loads(lines[0])
        self.assertEqual(info["output"], path)
        self.assertTrue(os.path.exists(path))
        self.assertEqual((info["seed"], info["width"], info["height"], info["steps"]),
                         (7, 64, 64, 1))
        self.assertEqual(info["guidance"], 2.5)
        self.assertEqual(set(info["timings"]),
                         {"lora", "tokenize", "encode", "denoise", "decode", "png"})
        self.assertEqual((info["loras"], info["lora_skipped"]), ([], True))


if __name__ == "__main__":
    unittest.main()
