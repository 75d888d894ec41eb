"""Weight formats (fluxexport export --weights, quant.py): the stored bytes are what they
claim, the quantised modules script, save and load on this torch, their error against the
float weights is bounded, the manifest records what the C plan reads, and fp8 is refused on
a torch without float8 dtypes.

Tolerances, and why:
- per weight: int8 rounds to the nearest of 255 levels of absmax/127, so |w - q s| <= s/2 per
  weight (+1e-6 for fp32 arithmetic); int4 likewise with absmax/7 per group of 64.
- per layer output (rel. RMS over a random batch, gaussian weights, rows of 256): int8 <= 0.01
  (expected ~0.7%: rounding error step/sqrt(12) with a step of absmax/127, and the absmax of
  256 gaussians is ~2.9 sigma); int4 <= 0.15 (expected ~10%: steps of absmax/7 over groups of
  64, absmax ~2.4 sigma). The draws are seeded, so the margin (1.5x) covers the formula's
  approximation, not luck; a wrong scale or nibble order gives errors near 100%.
- whole tiny model, transformer output vs fp32 weights: int8 <= 0.02, int4 <= 0.25 rel. RMS
  (errors of 8 quantised layers add up roughly as independent noise).
"""

import json
import os
import tempfile
import unittest

import torch
from torch import nn

from tests.export import helpers
from fluxexport import quant
from fluxexport.checkpoint import open_checkpoint
from fluxexport.flux import Flux, FluxParams


def rel_rms(a, b):
    a, b = a.float(), b.float()
    return ((a - b).pow(2).mean().sqrt() / b.pow(2).mean().sqrt()).item()


def roundtrip(module):
    """torch.jit.script, save and load: what the shim will load."""
    with tempfile.NamedTemporaryFile(suffix=".pt") as f:
        torch.jit.save(torch.jit.script(module), f.name)
        return torch.jit.load(f.name), os.path.getsize(f.name)


class Layers(unittest.TestCase):
    def test_weight_error_bounded_by_half_a_step(self):
        g = torch.Generator().manual_seed(0)
        w = torch.randn(48, 192, generator=g)
        q, s = quant.quantise_weight(w, "int8", torch.float32)
        self.assertEqual(q.dtype, torch.int8)
        err = (quant.dequantise_weight(q, s, "int8") - w).abs()
        self.assertTrue(bool((err <= s[:, None] / 2 + 1e-6).all()))
        q, s = quant.quantise_weight(w, "int4", torch.float32)
        self.assertEqual((q.dtype, tuple(q.shape), tuple(s.shape)),
                         (torch.uint8, (48, 96), (48, 3)))
        err = (quant.dequantise_weight(q, s, "int4") - w).abs().view(48, 3, 64)
        self.assertTrue(bool((err <= s[:, :, None] / 2 + 1e-6).all()))

    def test_int4_packing_order(self):
        # codes c + 8, even columns in the low nibble: a ramp -7..7 reads back exactly
        w = torch.arange(-7.0, 9.0).clamp(max=7.0).repeat(2, 4)  # (2, 64), absmax 7
        q, s = quant.quantise_weight(w, "int4", torch.float32)
        self.assertEqual(int(q[0, 0]), (-7 + 8) | ((-6 + 8) << 4))
        self.assertTrue(torch.equal(quant.dequantise_weight(q, s, "int4"), w))

    def test_modules_script_and_match(self):
        g = torch.Generator().manual_seed(1)
        x = torch.randn(4, 7, 256, generator=g)
        for fmt, tol in (("int8", 0.01), ("int4", 0.15)):
            for bias in (True, False):
                lin = nn.Linear(256, 96, bias=bias)
                with torch.no_grad():
                    lin.weight.copy_(torch.randn(96, 256, generator=g) / 16)
                ts, _ = roundtrip(quant.quantised_linear(lin, fmt, torch.float32))
                with torch.no_grad():
                    q, s = quant.quantise_weight(lin.weight, fmt, torch.float32)
                    want = nn.functional.linear(x, quant.dequantise_weight(q, s, fmt), lin.bias)
                    got = ts(x)
                    self.assertLessEqual(helpers.max_abs(got, want), 1e-5, (fmt, bias))
                    self.assertLessEqual(rel_rms(got, lin(x)), tol, (fmt, bias))
        # bf16 compute: the module keeps its output in the input's dtype
        ts, _ = roundtrip(quant.quantised_linear(nn.Linear(64, 8), "int4", torch.bfloat16))
        self.assertEqual(ts(torch.randn(2, 64).bfloat16()).dtype, torch.bfloat16)

    def test_int4_small_rows_use_smaller_groups(self):
        self.assertEqual([quant.int4_group(n) for n in (64, 96, 32, 48, 24)], [64, 32, 32, 16, 0])
        self.assertFalse(quant.quantisable(nn.Linear(24, 8), "int4"))
        self.assertTrue(quant.quantisable(nn.Linear(24, 8), "int8"))


class Sizes(unittest.TestCase):
    """A 512-wide transformer (1 + 1 blocks) saved in each format: the file holds what the
    format claims (the layers outside the blocks stay in bf16)."""

    def test_file_sizes(self):
        p = FluxParams(in_channels=64, vec_in_dim=32, context_in_dim=32, hidden_size=512,
                       mlp_hidden=2048, num_heads=4, depth=1, depth_single_blocks=1)
        torch.manual_seed(0)
        sizes, blocks_bf16 = {}, None
        for fmt in ("bf16", "int8", "int4"):
            m = Flux(p, dtype=torch.bfloat16).eval()
            rec = quant.quantise_module(m, "transformer", fmt, torch.bfloat16)
            mem = quant.memory_record(m, "transformer")
            _, sizes[fmt] = roundtrip(m)
            # the file is its parameters plus code and zip headers (<4%)
            self.assertLess(sizes[fmt], mem["param_bytes"] * 1.04 + 150_000, fmt)
            self.assertGreater(sizes[fmt], mem["param_bytes"], fmt)
            blocks = mem["double_block_bytes"] + mem["single_block_bytes"]
            if fmt == "bf16":
                blocks_bf16, rest = blocks, mem["param_bytes"] - blocks
                self.assertEqual(rec["quantised_linears"], 0)
            else:
                self.assertEqual(mem["param_bytes"] - blocks, rest, "outside the blocks: bf16")
                self.assertEqual(rec["quantised_linears"], 13)
                ratio = blocks / blocks_bf16
                if fmt == "int8":   # 1 byte per weight + a bf16 scale per row, biases in bf16
                    self.assertTrue(0.50 <= ratio <= 0.51, ratio)
                else:               # half a byte per weight + a bf16 scale per 64
                    self.assertTrue(0.265 <= ratio <= 0.275, ratio)
        self.assertLess(sizes["int8"], 0.60 * sizes["bf16"])
        self.assertLess(sizes["int4"], 0.36 * sizes["bf16"])


class Export(unittest.TestCase):
    """The exporter on the tiny checkpoint: manifest records, planned = actual, parity of
    the scripted quantised transformer with the eager one, the fp8 refusal."""

    @classmethod
    def setUpClass(cls):
        cls.root, cls.params = helpers.tiny_checkpoints()
        cls.out = {}
        for fmt in ("int8", "int4"):
            out = os.path.join(cls.root, f"model-{fmt}")
            res = helpers.run_cli("export", "--source", os.path.join(cls.root, "bfl"), "-o", out,
                                  "--quiet", "--weights", fmt)
            if res.returncode != 0:
                raise RuntimeError(res.stderr)
            cls.out[fmt] = out

    def manifest(self, fmt):
        with open(os.path.join(self.out[fmt], "manifest.json")) as f:
            return json.load(f)

    def test_manifest_records(self):
        for fmt in ("int8", "int4"):
            man = self.manifest(fmt)
            self.assertEqual(man["weights"], fmt)
            mods = man["modules"]
            self.assertEqual(mods["transformer"]["weights"]["format"], fmt)
            self.assertEqual(mods["t5_encoder"]["weights"]["format"], fmt)
            self.assertEqual(mods["clip_text"]["weights"]["format"], "fp32")
            self.assertEqual(mods["ae_decoder"]["weights"]["format"], "fp32")
            # 2 double blocks x 10 linears + 2 single x 3; T5: 2 blocks x 7
            self.assertEqual(mods["transformer"]["weights"]["quantised_linears"], 26)
            self.assertEqual(mods["t5_encoder"]["weights"]["quantised_linears"], 14)
            for key in ("clip_text", "t5_encoder", "transformer", "ae_decoder"):
                self.assertLess(mods[key]["param_bytes"], mods[key]["bytes"])
        self.assertEqual(self.manifest("int4")["modules"]["t5_encoder"]["weights"]["group_sizes"],
                         [64, 32])

    def test_planned_equals_exported(self):
        """What a manifest-only dir records is what an export records."""
        ck = open_checkpoint(os.path.join(self.root, "bfl"))
        for fmt in ("int8", "int4"):
            man = self.manifest(fmt)["modules"]
            for part, key in (("transformer", "transformer"), ("t5", "t5_encoder"),
                              ("clip", "clip_text")):
                m = ck.load(part).to("meta")
                wrec, mem = quant.planned_record(m, part, fmt, torch.float32)
                self.assertEqual(wrec, man[key]["weights"], (fmt, part))
                for k, v in mem.items():
                    self.assertEqual(v, man[key][k], (fmt, part, k))

    def test_scripted_matches_eager_quantised(self):
        ck = open_checkpoint(os.path.join(self.root, "bfl"))
        args = helpers.transformer_inputs(self.params[0], 256, 256, txt_len=32)
        ref = ck.load("transformer")
        with torch.no_grad():
            want_fp32 = ref(*args)
        for fmt, tol in (("int8", 0.02), ("int4", 0.25)):
            eager = ck.load("transformer")
            quant.quantise_module(eager, "transformer", fmt, torch.float32)
            ts = torch.jit.load(os.path.join(self.out[fmt], "transformer.pt"))
            with torch.no_grad():
                a, b = eager(*args), ts(*args)
            self.assertLessEqual(helpers.max_abs(a, b), 1e-5, fmt)
            self.assertLessEqual(rel_rms(b, want_fp32), tol, fmt)
            self.assertGreater(rel_rms(b, want_fp32), 0.0, fmt)

    def test_fp8_refused_or_written(self):
        out = os.path.join(self.root, "model-fp8")
        res = helpers.run_cli("export", "--source", os.path.join(self.root, "bfl"), "-o", out,
                              "--quiet", "--weights", "fp8")
        if quant.has_fp8():
            self.assertEqual(res.returncode, 0, res.stderr)
            return
        self.assertEqual(res.returncode, 2)
        self.assertIn("float8", res.stderr)
        self.assertIn("--weights int8", res.stderr)
        self.assertFalse(os.path.exists(out))

    @unittest.skipUnless(quant.has_fp8(), "this torch has no float8 dtypes (2.1+)")
    def test_fp8_module(self):
        lin = nn.Linear(128, 32)
        ts, _ = roundtrip(quant.quantised_linear(lin, "fp8", torch.float32))
        x = torch.randn(3, 128)
        with torch.no_grad():
            self.assertLessEqual(rel_rms(ts(x), lin(x)), 0.05)

    def test_plain_weights_must_match_dtype(self):
        res = helpers.run_cli("export", "--source", os.path.join(self.root, "bfl"), "-o",
                              os.path.join(self.root, "never"), "--weights", "bf16")
        self.assertEqual(res.returncode, 2)
        self.assertIn("use --dtype bf16", res.stderr)


if __name__ == "__main__":
    unittest.main()
