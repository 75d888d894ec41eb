"""The GPU run's scripts (tools/gpu/device.sh, bench_gpu.py, the fluxexport commands they
call) import nothing but torch, numpy and the standard library: both stages rehearsed on the
CPU (SMOKE=1) under tests/deploy/importguard.py, which refuses every other module to the
project's code.  And bench_gpu's PNG reader (zlib, no Pillow) against known pixels.

Needs build/fluxgen (or $FLUXGEN) and the tiny checkpoints (make tiny-model); the Makefile's
test-deploy target builds both."""

import os
import shutil
import struct
import subprocess
import sys
import tempfile
import unittest
import zlib

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
GUARD = os.path.join(ROOT, "tests", "deploy", "importguard.py")
FLUXGEN = os.environ.get("FLUXGEN", os.path.join(ROOT, "build", "fluxgen"))
sys.path.insert(0, os.path.join(ROOT, "tools", "gpu"))
sys.path.insert(0, os.path.join(ROOT, "export"))

import bench_gpu  # noqa: E402


def guarded(*args, env=None, timeout=120):
    e = dict(os.environ, PYTHONPATH=os.path.join(ROOT, "export"), **(env or {}))
    return subprocess.run([sys.executable, GUARD, *args], capture_output=True, text=True,
                          cwd=ROOT, env=e, timeout=timeout)


class Guard(unittest.TestCase):
    """The guard itself: refuses what the device lacks, lets the rest through."""

    def test_refuses_a_third_party_module(self):
        res = guarded("-c", "import PIL")   # installed here, maybe not there
        self.assertNotEqual(res.returncode, 0)
        self.assertIn("import guard: 'PIL'", res.stderr)

    def test_refuses_in_project_modules(self):
        res = guarded("-c", "import fluxexport.tokenizers")     # needs 'regex'
        self.assertNotEqual(res.returncode, 0)
        self.assertIn("import guard: 'regex'", res.stderr)

    def test_lets_torch_numpy_and_the_standard_library_through(self):
        res = guarded("-c", "import json, zlib, numpy, torch, fluxexport.randmodel; print('ok')")
        self.assertEqual(res.returncode, 0, res.stderr)
        self.assertEqual(res.stdout.strip(), "ok")

    def test_entry_points_import_clean(self):
        for args in (("-m", "fluxexport", "--help"), ("-m", "fluxexport", "export", "--help"),
                     ("-m", "fluxexport", "random-model", "--help"),
                     ("tools/gpu/bench_gpu.py", "--help")):
            res = guarded(*args)
            self.assertEqual(res.returncode, 0, f"{args}: {res.stderr}")
            self.assertIn("usage", res.stdout, args)


def png(pixels, filters):
    """An 8-bit RGB PNG of pixels (H, W, 3) with the given filter type per row."""
    h, w, _ = pixels.shape
    bpp, out, prev = 3, b"", [0] * (w * 3)
    for y in range(h):
        row, ft, enc = pixels[y].reshape(-1).tolist(), filters[y % len(filters)], []
        for i, x in enumerate(row):
            a = row[i - bpp] if i >= bpp else 0
            b = prev[i]
            c = prev[i - bpp] if i >= bpp else 0
            if ft == 0:
                pred = 0
            elif ft == 1:
                pred = a
            elif ft == 2:
                pred = b
            elif ft == 3:
                pred = (a + b) // 2
            else:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                pred = a if pa <= pb and pa <= pc else (b if pb <= pc else c)
            enc.append((x - pred) & 255)
        out += bytes([ft] + enc)
        prev = row

    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + \
            struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(out)) + chunk(b"IEND", b""))


class PngReader(unittest.TestCase):
    def test_every_filter_type(self):
        rng = np.random.default_rng(3)
        px = rng.integers(0, 256, size=(12, 7, 3), dtype=np.uint8)
        px[4:8] = 250                                   # runs, where the predictors matter
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "f.png")
            with open(path, "wb") as f:
                f.write(png(px, [0, 1, 2, 3, 4]))
            np.testing.assert_array_equal(bench_gpu.read_png(path), px)
            with open(path, "wb") as f:
                f.write(png(px, [4, 3]))
            np.testing.assert_array_equal(bench_gpu.read_png(path), px)

    def test_refuses_what_it_does_not_read(self):
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "x.png")
            with open(path, "wb") as f:
                f.write(b"GIF89a")
            with self.assertRaisesRegex(ValueError, "not a PNG"):
                bench_gpu.read_png(path)


class Stages(unittest.TestCase):
    """device.sh smoke, then full, rehearsed on the CPU under the guard: every fluxexport and
    bench_gpu.py run on the device path goes through it (PY)."""

    def test_smoke_then_full_on_the_cpu(self):
        self.assertTrue(os.access(FLUXGEN, os.X_OK), f"{FLUXGEN}: build it first (make c)")
        self.assertTrue(os.path.isdir(os.path.join(ROOT, "build", "tiny-src", "bfl")),
                        "make tiny-model first")
        tmp = tempfile.mkdtemp(prefix="fluxgpu-")
        self.addCleanup(shutil.rmtree, tmp, True)
        log = os.path.join(tmp, "refused.txt")
        env = dict(os.environ, SMOKE="1", FLUXGEN=FLUXGEN, OUT=os.path.join(tmp, "out"),
                   WORK=os.path.join(tmp, "work"), PY=f"{sys.executable} {GUARD}",
                   DEPTH="2", SINGLE="1", IMPORTGUARD_LOG=log)
        for stage in ("smoke", "full"):
            res = subprocess.run([os.path.join(ROOT, "tools", "gpu", "device.sh"), stage],
                                 capture_output=True, text=True, cwd=ROOT, env=env, timeout=600)
            self.assertEqual(res.returncode, 0, f"{stage}:\n{res.stdout[-3000:]}{res.stderr}")
        self.assertFalse(os.path.exists(log), open(log).read() if os.path.exists(log) else "")
        with open(os.path.join(tmp, "out", "results.txt")) as f:
            results = f.read()
        self.assertIn("tolerance (max-abs latent <= 1e-4, pixels within 1 level): PASS", results)
        self.assertIn("stage smoke: exit 0", results)
        self.assertIn("stage full: exit 0", results)
        # full wrote only its transformer: the rest is smoke's, linked
        work = os.path.join(tmp, "work")
        for name in ("t5_encoder.pt", "clip_text.pt", "ae_decoder.pt"):
            self.assertTrue(os.path.samefile(os.path.join(work, "rand-2+2", name),
                                             os.path.join(work, "rand-full", name)), name)
        self.assertFalse(os.path.samefile(os.path.join(work, "rand-2+2", "transformer.pt"),
                                          os.path.join(work, "rand-full", "transformer.pt")))
        self.assertIn("== full: transformer 64 wide, 2 + 1 blocks", results)
        self.assertIn("fluxgen / Python (same TorchScript modules)", results)


if __name__ == "__main__":
    unittest.main()
