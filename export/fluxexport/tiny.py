"""Tiny random checkpoints in the real FLUX file layouts.

`python3 -m fluxexport tiny --out DIR --seed N` writes, deterministically from the seed:
  DIR/bfl/        flux1-krea-dev.safetensors, ae.safetensors (decoder and encoder tensors),
                  text_encoder/, text_encoder_2/ (2 shards + index), tokenizer/, tokenizer_2/
  DIR/diffusers/  model_index.json, scheduler/, transformer/ (3 shards + index), vae/,
                  text_encoder/, text_encoder_2/, tokenizer/, tokenizer_2/
Both layouts hold the same weights, so a model exported from either computes the same thing.
Real key names and file formats; tiny dimensions (transformer hidden 64 with 2 heads of 32 and
RoPE axes (4, 14, 14), 2 + 2 blocks; CLIP hidden 32; T5 d_model 32; AE ch 32).
"""

import argparse
import json
import os
import shutil
import sys

import torch

from . import keymap, stio
from .autoencoder import AEDecoder, AEParams
from .clip import CLIPParams, CLIPTextModel
from .flux import Flux, FluxParams
from .t5 import T5EncoderModel, T5Params

HERE = os.path.dirname(os.path.abspath(__file__))
CORPUS = os.path.join(HERE, "..", "data", "tiny_corpus.txt")
CLIP_MERGES = 1000
T5_PIECES = 320
TRANSFORMER_FILE = "flux1-krea-dev.safetensors"
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def write_tokenizers(root):
    """Writes root/tokenizer (CLIP BPE) and root/tokenizer_2 (T5 spiece). Returns vocab sizes."""
    # Imported here: training needs 'regex' and sentencepiece, which the GPU machine lacks;
    # tiny_params (random-model --dims tiny) must import without them.
    from . import tokenizers
    with open(CORPUS, encoding="utf-8") as f:
        lines = f.read().splitlines()
    merges = tokenizers.learn_clip_merges(lines, CLIP_MERGES)
    clip_vocab = tokenizers.write_clip_tokenizer(os.path.join(root, "tokenizer"), merges)
    tokenizers.train_t5_spiece(CORPUS, os.path.join(root, "tokenizer_2"), T5_PIECES)
    return clip_vocab, T5_PIECES


def tiny_params(clip_vocab, t5_pieces, depth=2, depth_single=2):
    """The tiny dimensions; depth/depth_single can be raised (e.g. to 19/38 for key-set tests)."""
    t5_vocab = -(-(t5_pieces + 100) // 64) * 64     # pieces + 100 extra ids, padded like 32128
    return (FluxParams(in_channels=64, vec_in_dim=32, context_in_dim=32, hidden_size=64,
                       mlp_hidden=256, num_heads=2, depth=depth, depth_single_blocks=depth_single,
                       axes_dim=(4, 14, 14)),
            AEParams(ch=32, ch_mult=(1, 2, 2, 2), num_res_blocks=1, z_channels=16),
            CLIPParams(vocab_size=clip_vocab, hidden_size=32, intermediate_size=64,
                       num_hidden_layers=2, num_attention_heads=2),
            T5Params(vocab_size=t5_vocab, d_model=32, d_kv=8, num_heads=4, d_ff=64, num_layers=2))


def random_state(module, seed):
    """Deterministic random weights for a module built on the meta device: matrices
    N(0, 1/fan_in), embeddings N(0, 1), norm scales 1 + N(0, 0.1^2), biases N(0, 0.05^2)."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for name, p in sorted(module.named_parameters()):
        shape = tuple(p.shape)
        r = torch.randn(shape, generator=g)
        leaf = name.rsplit(".", 1)[-1]
        if leaf == "bias":
            r = 0.05 * r
        elif len(shape) == 1:
            r = 1.0 + 0.1 * r
        elif "embedding" in name or name.startswith("shared") or "relative_attention" in name:
            pass
        else:
            fan_in = 1
            for d in shape[1:]:
                fan_in *= d
            r = r / fan_in ** 0.5
        out[name] = r
    return out


def ae_encoder_shapes(p, layout):
    """Shapes of the AE encoder tensors (unused by text-to-image, present in the real files)."""
    chans = [p.ch * m for m in p.ch_mult]
    s = {}

    def conv(name, cin, cout, k):
        s[name + ".weight"] = (cout, cin, k, k)
        s[name + ".bias"] = (cout,)

    def norm(name, c):
        s[name + ".weight"] = (c,)
        s[name + ".bias"] = (c,)

    def resnet(name, cin, cout, short):
        norm(f"{name}.norm1", cin)
        conv(f"{name}.conv1", cin, cout, 3)
        norm(f"{name}.norm2", cout)
        conv(f"{name}.conv2", cout, cout, 3)
        if cin != cout:
            conv(f"{name}.{short}", cin, cout, 1)

    bfl = layout == "bfl"
    conv("encoder.conv_in", 3, chans[0], 3)
    cin = chans[0]
    for i, c in enumerate(chans):
        for j in range(p.num_res_blocks):
            resnet(f"encoder.down.{i}.block.{j}" if bfl else f"encoder.down_blocks.{i}.resnets.{j}",
                   cin, c, "nin_shortcut" if bfl else "conv_shortcut")
            cin = c
        if i != len(chans) - 1:
            conv(f"encoder.down.{i}.downsample.conv" if bfl
                 else f"encoder.down_blocks.{i}.downsamplers.0.conv", c, c, 3)
    c = chans[-1]
    for b in (1, 2):
        resnet(f"encoder.mid.block_{b}" if bfl else f"encoder.mid_block.resnets.{b - 1}", c, c, "")
    if bfl:
        norm("encoder.mid.attn_1.norm", c)
        for n in ("q", "k", "v", "proj_out"):
            conv(f"encoder.mid.attn_1.{n}", c, c, 1)
        norm("encoder.norm_out", c)
    else:
        norm("encoder.mid_block.attentions.0.group_norm", c)
        for n in ("to_q", "to_k", "to_v", "to_out.0"):
            s[f"encoder.mid_block.attentions.0.{n}.weight"] = (c, c)
            s[f"encoder.mid_block.attentions.0.{n}.bias"] = (c,)
        norm("encoder.conv_norm_out", c)
    conv("encoder.conv_out", c, 2 * p.z_channels, 3)
    return s


def to_layout(state, rules, cat_sizes=None):
    """Canonical tensors -> source tensors through the rules (the inverse of reading)."""
    out = {}
    for r in rules:
        sizes = cat_sizes(r) if r.op == "cat" else None
        for name, t in zip(r.sources, r.split(state[r.canon], sizes)):
            out[name] = t.contiguous()
    return out


def write_sharded(folder, base, tensors, shards):
    """Writes base.safetensors, or base-0000i-of-0000n shards with base.safetensors.index.json."""
    os.makedirs(folder, exist_ok=True)
    if shards <= 1:
        stio.write(os.path.join(folder, base + ".safetensors"), tensors, {"format": "pt"})
        return
    names = sorted(tensors)
    per = -(-len(names) // shards)
    wmap, total = {}, 0
    for i in range(shards):
        fname = f"{base}-{i + 1:05d}-of-{shards:05d}.safetensors"
        part = {n: tensors[n] for n in names[i * per:(i + 1) * per]}
        stio.write(os.path.join(folder, fname), part, {"format": "pt"})
        for n, t in part.items():
            wmap[n] = fname
            total += t.numel() * t.element_size()
    with open(os.path.join(folder, base + ".safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": wmap}, f, indent=1)


def _json(path, obj):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump(obj, f, indent=1)


def states(params, seed):
    """Canonical random weights of the four modules plus AE encoder tensors (per layout)."""
    fp, ap, cp, tp = params
    out = {}
    for i, (name, cls, p) in enumerate((("transformer", Flux, fp), ("ae", AEDecoder, ap),
                                        ("clip", CLIPTextModel, cp), ("t5", T5EncoderModel, tp))):
        out[name] = random_state(cls(p, device="meta"), seed * 1000 + i)
    g = torch.Generator().manual_seed(seed * 1000 + 10)
    enc = ae_encoder_shapes(ap, "bfl")
    out["ae_encoder_bfl"] = {k: 0.1 * torch.randn(s, generator=g) for k, s in sorted(enc.items())}
    return out


def write_text_encoders(root, params, st, dtype):
    _, _, cp, tp = params
    cast = (lambda d: {k: v.to(dtype) for k, v in d.items()})
    _json(os.path.join(root, "text_encoder", "config.json"), dict(
        architectures=["CLIPTextModel"], model_type="clip_text_model", hidden_act="quick_gelu",
        bos_token_id=0, eos_token_id=2, pad_token_id=1, projection_dim=cp.hidden_size,
        torch_dtype="float32", **cp.to_dict()))
    write_sharded(os.path.join(root, "text_encoder"), "model", cast(st["clip"]), 1)
    _json(os.path.join(root, "text_encoder_2", "config.json"), dict(
        architectures=["T5EncoderModel"], model_type="t5", feed_forward_proj="gated-gelu",
        dense_act_fn="gelu_new", is_gated_act=True, eos_token_id=1, pad_token_id=0,
        num_decoder_layers=tp.num_layers, tie_word_embeddings=False, torch_dtype="float32",
        **tp.to_dict()))
    write_sharded(os.path.join(root, "text_encoder_2"), "model", cast(st["t5"]), 2)


def write_bfl(root, params, st, dtype, tok_src, prefix=""):
    fp, ap, _, _ = params
    os.makedirs(root, exist_ok=True)
    tr = {prefix + k: v.to(dtype) for k, v in st["transformer"].items()}
    stio.write(os.path.join(root, TRANSFORMER_FILE), tr, {"format": "pt"})
    keys = list(st["ae"])
    ae = to_layout(st["ae"], keymap.ae_bfl_rules(keys, len(ap.ch_mult)))
    ae.update(st["ae_encoder_bfl"])
    stio.write(os.path.join(root, "ae.safetensors"), {k: v.to(dtype) for k, v in ae.items()})
    write_text_encoders(root, params, st, dtype)
    _copy_tokenizers(tok_src, root)


def _ae_encoder_diffusers(ap, bfl_enc):
    """The encoder tensors of the BFL file under diffusers names (same values)."""
    names_bfl = list(ae_encoder_shapes(ap, "bfl"))
    names_dif = list(ae_encoder_shapes(ap, "diffusers"))
    out = {}
    for b, d in zip(names_bfl, names_dif):
        t = bfl_enc[b]
        out[d] = t.reshape(t.shape[0], t.shape[1]) if (".attentions.0.to_" in d and
                                                         d.endswith("weight")) else t
    return out


def write_diffusers(root, params, st, dtype, tok_src):
    fp, ap, cp, tp = params
    cast = (lambda d: {k: v.to(dtype) for k, v in d.items()})
    _json(os.path.join(root, "model_index.json"), {
        "_class_name": "FluxPipeline", "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "text_encoder_2": ["transformers", "T5EncoderModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "tokenizer_2": ["transformers", "T5TokenizerFast"],
        "transformer": ["diffusers", "FluxTransformer2DModel"],
        "vae": ["diffusers", "AutoencoderKL"]})
    _json(os.path.join(root, "scheduler", "scheduler_config.json"), {
        "_class_name": "FlowMatchEulerDiscreteScheduler", "base_image_seq_len": 256,
        "base_shift": 0.5, "max_image_seq_len": 4096, "max_shift": 1.15,
        "num_train_timesteps": 1000, "shift": 3.0, "use_dynamic_shifting": True})
    _json(os.path.join(root, "transformer", "config.json"), {
        "_class_name": "FluxTransformer2DModel", "attention_head_dim": fp.head_dim,
        "guidance_embeds": True, "in_channels": fp.in_channels,
        "joint_attention_dim": fp.context_in_dim, "num_attention_heads": fp.num_heads,
        "num_layers": fp.depth, "num_single_layers": fp.depth_single_blocks, "patch_size": 1,
        "pooled_projection_dim": fp.vec_in_dim, "axes_dims_rope": fp.axes_dim})
    rules = keymap.flux_diffusers_rules(list(st["transformer"]))
    tr = to_layout(st["transformer"], rules,
                   lambda r: keymap.flux_cat_sizes(r, fp.hidden_size, fp.mlp_hidden))
    write_sharded(os.path.join(root, "transformer"), "diffusion_pytorch_model", cast(tr), 3)
    _json(os.path.join(root, "vae", "config.json"), {
        "_class_name": "AutoencoderKL", "act_fn": "silu",
        "block_out_channels": [ap.ch * m for m in ap.ch_mult], "in_channels": 3,
        "latent_channels": ap.z_channels, "layers_per_block": ap.num_res_blocks,
        "mid_block_add_attention": True, "norm_num_groups": ap.num_groups,
        "out_channels": ap.out_ch, "sample_size": 1024, "scaling_factor": ap.scale_factor,
        "shift_factor": ap.shift_factor, "use_post_quant_conv": False, "use_quant_conv": False,
        "force_upcast": True})
    vae = dict(st["ae"])
    vae.update(_ae_encoder_diffusers(ap, st["ae_encoder_bfl"]))
    write_sharded(os.path.join(root, "vae"), "diffusion_pytorch_model", cast(vae), 1)
    write_text_encoders(root, params, st, dtype)
    _copy_tokenizers(tok_src, root)


def _copy_tokenizers(src, root):
    for sub in ("tokenizer", "tokenizer_2"):
        shutil.copytree(os.path.join(src, sub), os.path.join(root, sub), dirs_exist_ok=True)


def write_tiny(out, seed=0, dtype="fp32", depth=2, depth_single=2, layouts=("bfl", "diffusers")):
    """Writes the tiny checkpoints under out/ and returns the (flux, ae, clip, t5) params."""
    tok = os.path.join(out, "tokenizers")
    clip_vocab, t5_pieces = write_tokenizers(tok)
    params = tiny_params(clip_vocab, t5_pieces, depth, depth_single)
    st = states(params, seed)
    if "bfl" in layouts:
        write_bfl(os.path.join(out, "bfl"), params, st, DTYPES[dtype], tok)
    if "diffusers" in layouts:
        write_diffusers(os.path.join(out, "diffusers"), params, st, DTYPES[dtype], tok)
    shutil.rmtree(tok)
    return params


def main(cmd, argv):
    ap = argparse.ArgumentParser(prog=f"fluxexport {cmd}")
    ap.add_argument("--out", required=True, help="output folder")
    ap.add_argument("--force", action="store_true", help="replace an existing output folder")
    if cmd == "tiny":
        ap.add_argument("--seed", type=int, default=0)
        ap.add_argument("--dtype", choices=sorted(DTYPES), default="fp32",
                        help="dtype of the stored tensors")
    args = ap.parse_args(argv)
    if os.path.exists(args.out):
        if not args.force:
            print(f"fluxexport: '{args.out}' exists (use --force to replace it)", file=sys.stderr)
            return 1
        shutil.rmtree(args.out)
    if cmd == "tiny-tokenizers":
        write_tokenizers(args.out)
        return 0
    write_tiny(args.out, args.seed, args.dtype)
    return 0
