"""The same weights in the BFL and diffusers layouts load to the same modules and outputs,
and the diffusers files hold what the spec says relative to the BFL files."""

import os
import shutil
import tempfile
import unittest

import torch

from tests.export import helpers
from fluxexport import stio
from fluxexport.checkpoint import open_checkpoint, open_folder


class LayoutParity(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.root, cls.params = helpers.tiny_checkpoints()
        cls.bfl = open_checkpoint(os.path.join(cls.root, "bfl"))
        cls.dif = open_checkpoint(os.path.join(cls.root, "diffusers"))

    def test_detected_layouts_and_dims(self):
        self.assertEqual(self.bfl.layout, "bfl")
        self.assertEqual(self.dif.layout, "diffusers")
        self.assertEqual(self.bfl.flux_params.to_dict(), self.dif.flux_params.to_dict())
        self.assertEqual(self.bfl.ae_params.to_dict(), self.dif.ae_params.to_dict())
        self.assertEqual(self.bfl.flux_params.to_dict(), self.params[0].to_dict())
        self.assertEqual(self.bfl.ae_params.to_dict(), self.params[1].to_dict())

    def test_identical_parameters(self):
        for part in ("transformer", "ae", "clip", "t5"):
            a = dict(self.bfl.load(part).named_parameters())
            b = dict(self.dif.load(part).named_parameters())
            self.assertEqual(sorted(a), sorted(b))
            for k in a:
                self.assertTrue(torch.equal(a[k], b[k]), f"{part}: {k} differs")

    def test_identical_outputs(self):
        fp = self.params[0]
        args = helpers.transformer_inputs(fp, 256, 256)
        z = torch.randn(1, 16, 32, 48, generator=torch.Generator().manual_seed(3))
        with torch.no_grad():
            a = self.bfl.load("transformer")(*args)
            b = self.dif.load("transformer")(*args)
            self.assertEqual(helpers.max_abs(a, b), 0.0)
            self.assertGreater(a.abs().mean().item(), 1e-3)
            a = self.bfl.load("ae")(z)
            b = self.dif.load("ae")(z)
            self.assertEqual(tuple(a.shape), (1, 3, 256, 384))
            self.assertEqual(helpers.max_abs(a, b), 0.0)

    def test_prefixed_bfl_transformer(self):
        tmp = tempfile.mkdtemp(prefix="fluxtest-")
        try:
            src = stio.SafeTensorsFile(os.path.join(self.root, "bfl", "flux1-krea-dev.safetensors"))
            stio.write(os.path.join(tmp, "comfy.safetensors"),
                       {"model.diffusion_model." + k: src.get(k).clone() for k in src.keys()})
            ck = open_checkpoint(os.path.join(self.root, "bfl"), "bfl",
                                 transformer_file=os.path.join(tmp, "comfy.safetensors"))
            a = dict(ck.load("transformer").named_parameters())
            b = dict(self.bfl.load("transformer").named_parameters())
            for k in a:
                self.assertTrue(torch.equal(a[k], b[k]), k)
        finally:
            shutil.rmtree(tmp)


class SpecFacts(unittest.TestCase):
    """What the diffusers files must hold relative to the BFL files."""

    @classmethod
    def setUpClass(cls):
        root, cls.params = helpers.tiny_checkpoints()
        cls.h = cls.params[0].hidden_size
        cls.bt = stio.SafeTensorsFile(os.path.join(root, "bfl", "flux1-krea-dev.safetensors"))
        cls.dt = open_folder(os.path.join(root, "diffusers", "transformer"),
                             "diffusion_pytorch_model")
        cls.ba = stio.SafeTensorsFile(os.path.join(root, "bfl", "ae.safetensors"))
        cls.da = open_folder(os.path.join(root, "diffusers", "vae"), "diffusion_pytorch_model")

    def eq(self, a, b):
        self.assertEqual(tuple(a.shape), tuple(b.shape))
        self.assertTrue(torch.equal(a, b))

    def test_double_block_qkv_split(self):
        h = self.h
        qkv = self.bt.get("double_blocks.1.img_attn.qkv.weight")
        self.eq(self.dt.get("transformer_blocks.1.attn.to_q.weight"), qkv[:h])
        self.eq(self.dt.get("transformer_blocks.1.attn.to_k.weight"), qkv[h:2 * h])
        self.eq(self.dt.get("transformer_blocks.1.attn.to_v.weight"), qkv[2 * h:])
        bias = self.bt.get("double_blocks.0.txt_attn.qkv.bias")
        self.eq(self.dt.get("transformer_blocks.0.attn.add_v_proj.bias"), bias[2 * h:])
        self.eq(self.dt.get("transformer_blocks.0.attn.norm_added_k.weight"),
                self.bt.get("double_blocks.0.txt_attn.norm.key_norm.scale"))
        self.eq(self.dt.get("transformer_blocks.0.attn.to_add_out.weight"),
                self.bt.get("double_blocks.0.txt_attn.proj.weight"))

    def test_single_block_linear1_split(self):
        h = self.h
        l1 = self.bt.get("single_blocks.1.linear1.weight")
        self.eq(self.dt.get("single_transformer_blocks.1.attn.to_q.weight"), l1[:h])
        self.eq(self.dt.get("single_transformer_blocks.1.attn.to_v.weight"), l1[2 * h:3 * h])
        self.eq(self.dt.get("single_transformer_blocks.1.proj_mlp.weight"), l1[3 * h:])
        self.eq(self.dt.get("single_transformer_blocks.1.proj_out.weight"),
                self.bt.get("single_blocks.1.linear2.weight"))

    def test_final_layer_halves_swapped(self):
        h = self.h
        for leaf in ("weight", "bias"):
            b = self.bt.get(f"final_layer.adaLN_modulation.1.{leaf}")   # [shift; scale]
            d = self.dt.get(f"norm_out.linear.{leaf}")                  # [scale; shift]
            self.eq(d[:h], b[h:])
            self.eq(d[h:], b[:h])

    def test_ae_up_blocks_reversed(self):
        n = len(self.params[1].ch_mult)
        for k in range(n):
            self.eq(self.da.get(f"decoder.up_blocks.{k}.resnets.0.conv1.weight"),
                    self.ba.get(f"decoder.up.{n - 1 - k}.block.0.conv1.weight"))
        self.eq(self.da.get("decoder.up_blocks.0.upsamplers.0.conv.weight"),
                self.ba.get(f"decoder.up.{n - 1}.upsample.conv.weight"))
        self.eq(self.da.get(f"decoder.up_blocks.{n - 1}.resnets.0.conv_shortcut.weight"),
                self.ba.get("decoder.up.0.block.0.nin_shortcut.weight"))

    def test_ae_attention_1x1_conv_is_linear(self):
        q = self.ba.get("decoder.mid.attn_1.q.weight")
        self.assertEqual(q.dim(), 4)
        self.eq(self.da.get("decoder.mid_block.attentions.0.to_q.weight"), q[:, :, 0, 0])
        self.eq(self.da.get("decoder.mid_block.attentions.0.to_out.0.weight"),
                self.ba.get("decoder.mid.attn_1.proj_out.weight")[:, :, 0, 0])
        self.eq(self.da.get("decoder.conv_norm_out.weight"), self.ba.get("decoder.norm_out.weight"))


class StoredDtypes(unittest.TestCase):
    def test_bf16_and_fp16_checkpoints_load(self):
        ref_root, _ = helpers.tiny_checkpoints()
        ref = dict(open_checkpoint(os.path.join(ref_root, "diffusers")).load(
            "transformer").named_parameters())
        for dtype, tdt in (("bf16", torch.bfloat16), ("fp16", torch.float16)):
            root, _ = helpers.tiny_checkpoints(dtype=dtype)
            for layout in ("bfl", "diffusers"):
                ck = open_checkpoint(os.path.join(root, layout))
                self.assertEqual(ck.transformer.dtype_name("img_in.weight") if layout == "bfl"
                                 else ck.transformer.dtype_name("x_embedder.weight"),
                                 {"bf16": "BF16", "fp16": "F16"}[dtype])
                got = dict(ck.load("transformer", torch.float32).named_parameters())
                for k in ref:
                    self.assertTrue(torch.equal(got[k], ref[k].to(tdt).float()), f"{dtype} {k}")
                m = ck.load("transformer", torch.bfloat16)
                self.assertEqual(m.img_in.weight.dtype, torch.bfloat16)


if __name__ == "__main__":
    unittest.main()
