"""Checkpoints holding every real FLUX.1-dev key (names and ranks of the published checkpoints, tiny
sizes, the real block counts) load with zero missing and zero unexpected keys; a renamed, an
extra or a missing key is reported by name. The key lists are written out here by hand,
independently of the modules and the key maps under test."""

import json
import os
import shutil
import tempfile
import unittest

import torch

from tests.export import helpers
from fluxexport import stio
from fluxexport.checkpoint import open_checkpoint
from fluxexport.stio import CheckpointError

H, HEADS, MLP, CTX, VEC, IN = 64, 2, 128, 32, 32, 64     # transformer (head dim 32)
DEPTH, SINGLE = 19, 38
AE_CH, AE_MULT, AE_RES, Z = 32, (1, 2, 4, 4), 2, 16       # the real AE structure, tiny width
CLIP_D, CLIP_LAYERS, CLIP_VOCAB = 32, 12, 49408
T5_D, T5_HEADS, T5_KV, T5_FF, T5_LAYERS, T5_VOCAB = 32, 4, 8, 64, 24, 32128


def lin(keys, name, cout, cin, bias=True):
    keys[name + ".weight"] = (cout, cin)
    if bias:
        keys[name + ".bias"] = (cout,)


def flux_bfl_keys():
    k, d = {}, H // HEADS
    lin(k, "img_in", H, IN)
    for e, cin in (("time_in", 256), ("guidance_in", 256), ("vector_in", VEC)):
        lin(k, f"{e}.in_layer", H, cin)
        lin(k, f"{e}.out_layer", H, H)
    lin(k, "txt_in", H, CTX)
    lin(k, "final_layer.adaLN_modulation.1", 2 * H, H)
    lin(k, "final_layer.linear", IN, H)
    for n in range(DEPTH):
        p = f"double_blocks.{n}."
        for s in ("img", "txt"):
            lin(k, p + f"{s}_mod.lin", 6 * H, H)
            lin(k, p + f"{s}_attn.qkv", 3 * H, H)
            lin(k, p + f"{s}_attn.proj", H, H)
            lin(k, p + f"{s}_mlp.0", MLP, H)
            lin(k, p + f"{s}_mlp.2", H, MLP)
            k[p + f"{s}_attn.norm.query_norm.scale"] = (d,)
            k[p + f"{s}_attn.norm.key_norm.scale"] = (d,)
    for n in range(SINGLE):
        p = f"single_blocks.{n}."
        lin(k, p + "modulation.lin", 3 * H, H)
        lin(k, p + "linear1", 3 * H + MLP, H)
        lin(k, p + "linear2", H, H + MLP)
        k[p + "norm.query_norm.scale"] = (d,)
        k[p + "norm.key_norm.scale"] = (d,)
    return k


def flux_diffusers_keys():
    k, d = {}, H // HEADS
    lin(k, "x_embedder", H, IN)
    for e, cin in (("timestep_embedder", 256), ("guidance_embedder", 256), ("text_embedder", VEC)):
        lin(k, f"time_text_embed.{e}.linear_1", H, cin)
        lin(k, f"time_text_embed.{e}.linear_2", H, H)
    lin(k, "context_embedder", H, CTX)
    lin(k, "norm_out.linear", 2 * H, H)
    lin(k, "proj_out", IN, H)
    for n in range(DEPTH):
        p = f"transformer_blocks.{n}."
        lin(k, p + "norm1.linear", 6 * H, H)
        lin(k, p + "norm1_context.linear", 6 * H, H)
        for q in ("to_q", "to_k", "to_v", "add_q_proj", "add_k_proj", "add_v_proj", "to_out.0",
                  "to_add_out"):
            lin(k, p + "attn." + q, H, H)
        for f in ("ff", "ff_context"):
            lin(k, p + f"{f}.net.0.proj", MLP, H)
            lin(k, p + f"{f}.net.2", H, MLP)
        for q in ("norm_q", "norm_k", "norm_added_q", "norm_added_k"):
            k[p + f"attn.{q}.weight"] = (d,)
    for n in range(SINGLE):
        p = f"single_transformer_blocks.{n}."
        lin(k, p + "norm.linear", 3 * H, H)
        for q in ("to_q", "to_k", "to_v"):
            lin(k, p + "attn." + q, H, H)
        lin(k, p + "proj_mlp", MLP, H)
        lin(k, p + "proj_out", H, H + MLP)
        k[p + "attn.norm_q.weight"] = (d,)
        k[p + "attn.norm_k.weight"] = (d,)
    return k


def conv(keys, name, cout, cin, ks):
    keys[name + ".weight"] = (cout, cin, ks, ks)
    keys[name + ".bias"] = (cout,)


def norm(keys, name, c):
    keys[name + ".weight"] = (c,)
    keys[name + ".bias"] = (c,)


def resnet(keys, p, cin, cout, short):
    norm(keys, p + ".norm1", cin)
    conv(keys, p + ".conv1", cout, cin, 3)
    norm(keys, p + ".norm2", cout)
    conv(keys, p + ".conv2", cout, cout, 3)
    if cin != cout:
        conv(keys, p + "." + short, cout, cin, 1)


def ae_keys(bfl):
    k = {}
    ch = [AE_CH * m for m in AE_MULT]
    top = ch[-1]
    # encoder
    conv(k, "encoder.conv_in", ch[0], 3, 3)
    cin = ch[0]
    for i, c in enumerate(ch):
        for j in range(AE_RES):
            resnet(k, f"encoder.down.{i}.block.{j}" if bfl else f"encoder.down_blocks.{i}.resnets.{j}",
                   cin, c, "nin_shortcut" if bfl else "conv_shortcut")
            cin = c
        if i < len(ch) - 1:
            conv(k, f"encoder.down.{i}.downsample.conv" if bfl
                 else f"encoder.down_blocks.{i}.downsamplers.0.conv", c, c, 3)
    # decoder
    conv(k, "decoder.conv_in", top, Z, 3)
    for part in ("encoder", "decoder"):
        for b in (1, 2):
            resnet(k, f"{part}.mid.block_{b}" if bfl else f"{part}.mid_block.resnets.{b - 1}",
                   top, top, "")
        if bfl:
            norm(k, f"{part}.mid.attn_1.norm", top)
            for q in ("q", "k", "v", "proj_out"):
                conv(k, f"{part}.mid.attn_1.{q}", top, top, 1)
            norm(k, f"{part}.norm_out", top if part == "encoder" else ch[0])
        else:
            norm(k, f"{part}.mid_block.attentions.0.group_norm", top)
            for q in ("to_q", "to_k", "to_v", "to_out.0"):
                lin(k, f"{part}.mid_block.attentions.0.{q}", top, top)
            norm(k, f"{part}.conv_norm_out", top if part == "encoder" else ch[0])
    conv(k, "encoder.conv_out", 2 * Z, top, 3)
    cin = top
    for i in reversed(range(len(ch))):
        up = len(ch) - 1 - i
        for j in range(AE_RES + 1):
            resnet(k, f"decoder.up.{i}.block.{j}" if bfl else f"decoder.up_blocks.{up}.resnets.{j}",
                   cin, ch[i], "nin_shortcut" if bfl else "conv_shortcut")
            cin = ch[i]
        if i != 0:
            conv(k, f"decoder.up.{i}.upsample.conv" if bfl
                 else f"decoder.up_blocks.{up}.upsamplers.0.conv", ch[i], ch[i], 3)
    conv(k, "decoder.conv_out", 3, ch[0], 3)
    return k


def clip_keys():
    k = {"text_model.embeddings.token_embedding.weight": (CLIP_VOCAB, CLIP_D),
         "text_model.embeddings.position_embedding.weight": (77, CLIP_D)}
    for n in range(CLIP_LAYERS):
        p = f"text_model.encoder.layers.{n}."
        for q in ("q_proj", "k_proj", "v_proj", "out_proj"):
            lin(k, p + "self_attn." + q, CLIP_D, CLIP_D)
        norm(k, p + "layer_norm1", CLIP_D)
        norm(k, p + "layer_norm2", CLIP_D)
        lin(k, p + "mlp.fc1", 4 * CLIP_D, CLIP_D)
        lin(k, p + "mlp.fc2", CLIP_D, 4 * CLIP_D)
    norm(k, "text_model.final_layer_norm", CLIP_D)
    return k


def t5_keys():
    inner = T5_HEADS * T5_KV
    k = {"shared.weight": (T5_VOCAB, T5_D), "encoder.embed_tokens.weight": (T5_VOCAB, T5_D),
         "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight": (32, T5_HEADS),
         "encoder.final_layer_norm.weight": (T5_D,)}
    for n in range(T5_LAYERS):
        p = f"encoder.block.{n}.layer."
        for q in ("q", "k", "v"):
            k[p + f"0.SelfAttention.{q}.weight"] = (inner, T5_D)
        k[p + "0.SelfAttention.o.weight"] = (T5_D, inner)
        k[p + "0.layer_norm.weight"] = (T5_D,)
        k[p + "1.DenseReluDense.wi_0.weight"] = (T5_FF, T5_D)
        k[p + "1.DenseReluDense.wi_1.weight"] = (T5_FF, T5_D)
        k[p + "1.DenseReluDense.wo.weight"] = (T5_D, T5_FF)
        k[p + "1.layer_norm.weight"] = (T5_D,)
    return k


def tensors(shapes, seed):
    g = torch.Generator().manual_seed(seed)
    out = {n: 0.02 * torch.randn(s, generator=g) for n, s in sorted(shapes.items())}
    if "encoder.embed_tokens.weight" in out:
        out["encoder.embed_tokens.weight"] = out["shared.weight"]
    return out


def write_json(path, obj):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump(obj, f)


def write_full_checkpoint(root, tok_src, clip=None, t5=None):
    """root/bfl and root/diffusers with the full real key sets at tiny sizes."""
    clip = clip if clip is not None else tensors(clip_keys(), 3)
    clip["text_model.embeddings.position_ids"] = torch.arange(77)[None]
    t5 = t5 if t5 is not None else tensors(t5_keys(), 4)
    for layout in ("bfl", "diffusers"):
        d = os.path.join(root, layout)
        os.makedirs(d)
        for sub in ("tokenizer", "tokenizer_2"):
            shutil.copytree(os.path.join(tok_src, sub), os.path.join(d, sub))
        write_json(os.path.join(d, "text_encoder", "config.json"), {
            "vocab_size": CLIP_VOCAB, "hidden_size": CLIP_D, "intermediate_size": 4 * CLIP_D,
            "num_hidden_layers": CLIP_LAYERS, "num_attention_heads": 2, "hidden_act": "quick_gelu",
            "max_position_embeddings": 77, "layer_norm_eps": 1e-5})
        stio.write(os.path.join(d, "text_encoder", "model.safetensors"), clip)
        write_json(os.path.join(d, "text_encoder_2", "config.json"), {
            "vocab_size": T5_VOCAB, "d_model": T5_D, "d_kv": T5_KV, "num_heads": T5_HEADS,
            "d_ff": T5_FF, "num_layers": T5_LAYERS, "feed_forward_proj": "gated-gelu",
            "dense_act_fn": "gelu_new"})
        stio.write(os.path.join(d, "text_encoder_2", "model.safetensors"), t5)
    b = os.path.join(root, "bfl")
    stio.write(os.path.join(b, "flux1-krea-dev.safetensors"), tensors(flux_bfl_keys(), 1))
    stio.write(os.path.join(b, "ae.safetensors"), tensors(ae_keys(True), 2))
    d = os.path.join(root, "diffusers")
    write_json(os.path.join(d, "transformer", "config.json"), {
        "attention_head_dim": H // HEADS, "num_attention_heads": HEADS, "guidance_embeds": True,
        "in_channels": IN, "joint_attention_dim": CTX, "pooled_projection_dim": VEC,
        "num_layers": DEPTH, "num_single_layers": SINGLE, "patch_size": 1})
    stio.write(os.path.join(d, "transformer", "diffusion_pytorch_model.safetensors"),
               tensors(flux_diffusers_keys(), 1))
    write_json(os.path.join(d, "vae", "config.json"), {
        "block_out_channels": [AE_CH * m for m in AE_MULT], "layers_per_block": AE_RES,
        "latent_channels": Z, "norm_num_groups": 32, "scaling_factor": 0.3611,
        "shift_factor": 0.1159, "out_channels": 3, "use_quant_conv": False,
        "use_post_quant_conv": False})
    stio.write(os.path.join(d, "vae", "diffusion_pytorch_model.safetensors"),
               tensors(ae_keys(False), 2))


class FullKeySets(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix="fluxtest-keys-")
        tiny_root, _ = helpers.tiny_checkpoints()
        write_full_checkpoint(cls.tmp, os.path.join(tiny_root, "bfl"))

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.tmp)

    def test_counts_match_the_spec(self):
        # 11,901,408,320 parameters at full size: check the formula that
        # the key list implies at the real dimensions.
        h, m, d = 3072, 12288, 128
        top = (h * 64 + h) + 2 * (256 * h + h + h * h + h) + (768 * h + h + h * h + h) \
            + (4096 * h + h) + (h * 2 * h + 2 * h) + (h * 64 + 64)
        dbl = 2 * ((h * 6 * h + 6 * h) + (h * 3 * h + 3 * h) + (h * h + h) + (h * m + m)
                   + (m * h + h) + 2 * d)
        sgl = (h * 3 * h + 3 * h) + (h * (3 * h + m) + 3 * h + m) + ((h + m) * h + h) + 2 * d
        self.assertEqual(top + 19 * dbl + 38 * sgl, 11_901_408_320)
        self.assertEqual(len(flux_bfl_keys()), 20 + 19 * 24 + 38 * 8)

    def test_both_layouts_load_every_key(self):
        for layout in ("bfl", "diffusers"):
            ck = open_checkpoint(os.path.join(self.tmp, layout))
            self.assertEqual(ck.flux_params.depth, DEPTH)
            self.assertEqual(ck.flux_params.depth_single_blocks, SINGLE)
            self.assertEqual(ck.flux_params.axes_dim, [4, 14, 14])
            self.assertEqual(ck.ae_params.ch_mult, list(AE_MULT))
            self.assertEqual(ck.ae_params.num_res_blocks, AE_RES)
            self.assertEqual(ck.clip_params.num_hidden_layers, CLIP_LAYERS)
            self.assertEqual(ck.t5_params.num_layers, T5_LAYERS)
            for part in ("transformer", "ae", "clip", "t5"):
                ck.load(part)   # raises on any missing or unexpected key

    def test_full_layouts_give_the_same_transformer(self):
        # Independent random tensors per layout: only the key sets are under test here, so
        # compare parameter shapes, not values.
        a = dict(open_checkpoint(os.path.join(self.tmp, "bfl")).load("transformer")
                 .named_parameters())
        b = dict(open_checkpoint(os.path.join(self.tmp, "diffusers")).load("transformer")
                 .named_parameters())
        self.assertEqual({k: tuple(v.shape) for k, v in a.items()},
                         {k: tuple(v.shape) for k, v in b.items()})

    def edited(self, layout, fname, edit):
        """Copy of the full checkpoint with one file's tensors edited; returns its root."""
        root = tempfile.mkdtemp(prefix="fluxtest-edit-")
        self.addCleanup(shutil.rmtree, root)
        dst = os.path.join(root, layout)
        shutil.copytree(os.path.join(self.tmp, layout), dst)
        helpers.rewrite_safetensors(os.path.join(dst, fname), edit)
        return dst

    def test_unexpected_key_is_named(self):
        def add(ts):
            ts["double_blocks.3.img_attn.extra.weight"] = torch.zeros(2, 2)
        ck = open_checkpoint(self.edited("bfl", "flux1-krea-dev.safetensors", add))
        with self.assertRaisesRegex(CheckpointError,
                                    r"1 unexpected key\(s\): 'double_blocks.3.img_attn.extra"):
            ck.load("transformer")

    def test_missing_key_is_named(self):
        def drop(ts):
            del ts["transformer_blocks.7.attn.add_k_proj.bias"]
        ck = open_checkpoint(self.edited("diffusers",
                                         "transformer/diffusion_pytorch_model.safetensors", drop))
        with self.assertRaisesRegex(CheckpointError,
                                    r"1 missing key\(s\): 'transformer_blocks.7.attn.add_k_proj"):
            ck.load("transformer")

    def test_misspelt_encoder_key_is_not_ignored(self):
        def rename(ts):
            ts["encoder.down.0.block.0.norm3.weight"] = ts.pop("encoder.down.0.block.0.norm1.weight")
        ck = open_checkpoint(self.edited("bfl", "ae.safetensors", rename))
        with self.assertRaisesRegex(CheckpointError, r"unexpected key\(s\): 'encoder.down.0"):
            ck.load("ae")

    def test_wrong_shape_is_named(self):
        def shrink(ts):
            ts["single_blocks.5.linear2.weight"] = torch.zeros(H, H)
        ck = open_checkpoint(self.edited("bfl", "flux1-krea-dev.safetensors", shrink))
        with self.assertRaisesRegex(CheckpointError, r"'single_blocks.5.linear2.weight' has shape"):
            ck.load("transformer")


if __name__ == "__main__":
    unittest.main()
