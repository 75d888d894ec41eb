"""safetensors reading and writing without the safetensors package."""

import os
import shutil
import tempfile
import unittest

import torch

from tests.export import helpers
from fluxexport import stio
from fluxexport.checkpoint import open_checkpoint


class SafeTensors(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="fluxtest-st-")
        self.addCleanup(shutil.rmtree, self.tmp)

    def test_round_trip_all_float_dtypes_and_unaligned(self):
        g = torch.Generator().manual_seed(0)
        ts = {"a_half": torch.randn(3, generator=g).half(),          # 6 bytes: misaligns the next
              "b_f32": torch.randn(2, 5, generator=g),
              "c_bf16": torch.randn(7, generator=g).bfloat16(),
              "d_empty": torch.zeros(0, 4),
              "e_i64": torch.arange(77)[None]}
        p = os.path.join(self.tmp, "x.safetensors")
        stio.write(p, ts, {"format": "pt"})
        f = stio.SafeTensorsFile(p)
        self.assertEqual(f.metadata, {"format": "pt"})
        self.assertEqual(sorted(f.keys()), sorted(ts))
        for k, t in ts.items():
            got = f.get(k)
            self.assertEqual(got.dtype, t.dtype, k)
            self.assertTrue(torch.equal(got, t), k)

    def test_tensors_view_the_mapping(self):
        # Same dtype on the CPU: module parameters are views of the mapped file, not copies.
        root, _ = helpers.tiny_checkpoints()
        ck = open_checkpoint(os.path.join(root, "bfl"))
        src = ck.transformer
        a = src.get("img_in.weight")
        self.assertEqual(a.data_ptr(), src.get("img_in.weight").data_ptr())
        m = ck.load("transformer", torch.float32)
        self.assertEqual(m.img_in.weight.data_ptr(), a.data_ptr())


if __name__ == "__main__":
    unittest.main()
