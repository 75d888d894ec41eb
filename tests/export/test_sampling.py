"""Sampling facts (docs/numerics.md) and the model math's small pieces."""

import math
import unittest

import torch

from tests.export import helpers  # noqa: F401  (sets sys.path)
from fluxexport import flux, layers, sampling


class Schedule(unittest.TestCase):
    def test_mu(self):
        self.assertAlmostEqual(sampling.mu(4096), 1.15, places=12)
        self.assertAlmostEqual(sampling.mu(256), 0.5, places=12)
        self.assertAlmostEqual(sampling.mu(4080), 1.147292, places=6)

    def test_sigmas_28_steps_1024(self):
        s = sampling.schedule(28, 4096)
        self.assertEqual(len(s), 29)
        self.assertEqual(s.dtype, torch.float32)
        self.assertEqual(s[0].item(), 1.0)
        self.assertAlmostEqual(s[1].item(), 0.988409, places=6)
        self.assertAlmostEqual(s[2].item(), 0.976222, places=6)
        self.assertAlmostEqual(s[3].item(), 0.963394, places=6)
        self.assertAlmostEqual(s[27].item(), 0.104721, places=6)
        self.assertEqual(s[28].item(), 0.0)
        self.assertTrue(bool((s[1:] < s[:-1]).all()))

    def test_one_step(self):
        self.assertEqual(sampling.schedule(1, 256).tolist(), [1.0, 0.0])
        with self.assertRaises(ValueError):
            sampling.schedule(0, 256)


class Latents(unittest.TestCase):
    def test_noise_is_the_seeded_cpu_generator(self):
        for dtype in (torch.float32, torch.bfloat16):
            n = sampling.noise(1234, 384, 256, dtype)
            self.assertEqual(tuple(n.shape), (1, 16, 32, 48))
            self.assertEqual(n.dtype, dtype)
            g = torch.Generator("cpu").manual_seed(1234)
            self.assertTrue(torch.equal(n, torch.randn(1, 16, 32, 48, generator=g, dtype=dtype)))

    def test_pack_layout(self):
        z = torch.arange(16 * 4 * 6, dtype=torch.float32).reshape(1, 16, 4, 6)
        x = sampling.pack(z)
        self.assertEqual(tuple(x.shape), (1, 6, 64))
        # token index i * (W/16) + j, feature c * 4 + ph * 2 + pw
        for (i, j, c, ph, pw) in ((0, 0, 0, 0, 0), (1, 2, 5, 1, 0), (1, 1, 15, 1, 1)):
            self.assertEqual(x[0, i * 3 + j, c * 4 + ph * 2 + pw].item(),
                             z[0, c, 2 * i + ph, 2 * j + pw].item())
        self.assertTrue(torch.equal(sampling.unpack(x, 48, 32), z))

    def test_ids(self):
        ids = sampling.img_ids(48, 32)
        self.assertEqual(tuple(ids.shape), (1, 6, 3))
        self.assertEqual(ids[0, 5].tolist(), [0.0, 1.0, 2.0])
        self.assertEqual(ids[0, 2].tolist(), [0.0, 0.0, 2.0])

    def test_sizes(self):
        for w, h in ((0, 256), (250, 256), (256, -16)):
            with self.assertRaises(ValueError):
                sampling.check_size(w, h)

    def test_to_uint8_rounds_half_even_and_clamps(self):
        x = torch.tensor([-2.0, -1.0, 1.0, 3.0, 2 * 0.5 / 255 - 1, 2 * 1.5 / 255 - 1])
        out = sampling.to_uint8(x.reshape(1, 1, 1, 6).expand(1, 3, 1, 6))[0, 0, :, 0].tolist()
        self.assertEqual(out[:4], [0, 0, 255, 255])
        self.assertIn(out[4], (0, 1))
        self.assertIn(out[5], (1, 2))


class ModelMath(unittest.TestCase):
    def test_timestep_embedding_cos_first(self):
        t = torch.tensor([0.25])
        e = flux.timestep_embedding(t, 256)
        self.assertEqual(tuple(e.shape), (1, 256))
        self.assertAlmostEqual(e[0, 0].item(), math.cos(250.0), places=5)
        self.assertAlmostEqual(e[0, 128].item(), math.sin(250.0), places=5)
        f1 = math.exp(-math.log(10000.0) / 128)
        self.assertAlmostEqual(e[0, 1].item(), math.cos(250.0 * f1), places=4)

    def test_timestep_embedding_bf16_rounds_1000t(self):
        # guidance 3.5 becomes 3504 after the bf16 multiply (docs/numerics.md)
        e = flux.timestep_embedding(torch.tensor([3.5], dtype=torch.bfloat16), 256)
        self.assertEqual(e.dtype, torch.bfloat16)
        f = math.exp(-math.log(10000.0) * 127 / 128)
        want = torch.tensor(math.cos(3504.0 * f)).to(torch.bfloat16).item()
        self.assertEqual(e[0, 127].item(), want)

    def test_rope_rotates_adjacent_pairs(self):
        ids = torch.tensor([[[0.0, 3.0, 5.0]]])
        cos, sin = flux.rope_tables(ids, [4, 14, 14], 10000)
        self.assertEqual(tuple(cos.shape), (1, 1, 1, 16))
        # pair 2 is axis 1 (position 3), k = 0: angle 3 * 1
        self.assertAlmostEqual(cos[0, 0, 0, 2].item(), math.cos(3.0), places=6)
        # pair 9 is axis 2 (position 5), k = 0: angle 5
        self.assertAlmostEqual(sin[0, 0, 0, 9].item(), math.sin(5.0), places=6)
        x = torch.zeros(1, 1, 1, 32)
        x[..., 4] = 1.0                                     # pair 2, first element
        out = flux.apply_rope(x, cos, sin)
        self.assertAlmostEqual(out[0, 0, 0, 4].item(), math.cos(3.0), places=6)
        self.assertAlmostEqual(out[0, 0, 0, 5].item(), math.sin(3.0), places=6)
        self.assertAlmostEqual(out.norm().item(), 1.0, places=6)


class Attention(unittest.TestCase):
    def setUp(self):
        g = torch.Generator().manual_seed(0)
        self.q, self.k, self.v = (torch.randn(2, 3, 17, 32, generator=g) for _ in range(3))
        self.mask = torch.full((17, 17), float("-inf")).triu(1)

    def naive(self, mask):
        q, k, v = self.q.double(), self.k.double(), self.v.double()
        s = q @ k.transpose(-2, -1) / math.sqrt(32)
        if mask is not None:
            s = s + mask.double()
        return torch.softmax(s, dim=-1) @ v

    def test_explicit_matches_float64(self):
        for mask in (None, self.mask):
            out = layers._attention_explicit(self.q, self.k, self.v, mask)
            self.assertLess((out.double() - self.naive(mask)).abs().max().item(), 1e-5)

    def test_sdpa_matches_explicit_where_available(self):
        if not layers.HAS_SDPA:
            self.skipTest(f"torch {torch.__version__} has no scaled_dot_product_attention; "
                          "the explicit path is the one in use")
        for mask in (None, self.mask):
            a = layers.attention(self.q, self.k, self.v, mask)
            b = layers._attention_explicit(self.q, self.k, self.v, mask)
            self.assertLess((a - b).abs().max().item(), 1e-5)


if __name__ == "__main__":
    unittest.main()
