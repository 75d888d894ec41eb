"""Reading FLUX checkpoints in the layouts users download, with strict key accounting.

Layouts (docs/architecture.md, "Model dirs"):
  bfl        flux1-*.safetensors (keys optionally prefixed 'model.diffusion_model.') and
             ae.safetensors, with the text encoders and tokenizers from the diffusers-style
             sub-folders (text_encoder/, text_encoder_2/, tokenizer/, tokenizer_2/) that the
             BFL repositories ship beside them
  diffusers  transformer/, vae/, text_encoder/, text_encoder_2/ (each a single safetensors
             file or shards with a *.safetensors.index.json), tokenizer/, tokenizer_2/

Every source tensor must be used by a module parameter or match a known pattern of tensors
that text-to-image does not need (the AE encoder, CLIP's position_ids); every parameter must
be found. Otherwise CheckpointError names the first offending keys. Tensors are read from
memory-mapped files one at a time, converted to the target dtype and device, and handed to
the module: no second full copy of a checkpoint is held in memory.
"""

import glob
import json
import os
import re

import torch
from torch import nn

from . import keymap
from .autoencoder import AEDecoder, AEParams
from .clip import CLIPParams, CLIPTextModel
from .flux import Flux, FluxParams
from .stio import FLOAT_DTYPES, CheckpointError, SafeTensorsFile
from .t5 import T5EncoderModel, T5Params

BFL_PREFIX = "model.diffusion_model."
SHOW = 5


class TensorSource:
    """Named tensors from one safetensors file or a sharded set (keys may carry a prefix that
    is stripped)."""

    def __init__(self, files, where, index=None, prefix=""):
        self.files = files          # list of SafeTensorsFile
        self.where = where          # for messages
        self.paths = [f.path for f in files] + ([index] if index else [])
        self.owner = {}
        for f in files:
            for k in f.keys():
                if k in self.owner:
                    raise CheckpointError(f"{where}: tensor '{k}' appears in both "
                                          f"'{self.owner[k].path}' and '{f.path}'")
                self.owner[k] = f
        self.prefix = prefix

    def keys(self):
        n = len(self.prefix)
        return [k[n:] for k in self.owner]

    def _file(self, key):
        return self.owner[self.prefix + key]

    def shape(self, key):
        return self._file(key).shape(self.prefix + key)

    def dtype_name(self, key):
        return self._file(key).dtype_name(self.prefix + key)

    def get(self, key):
        return self._file(key).get(self.prefix + key)


def open_file(path, strip_prefix=None):
    """One safetensors file; strip_prefix is removed when every key carries it."""
    f = SafeTensorsFile(path)
    prefix = ""
    if strip_prefix and f.keys() and all(k.startswith(strip_prefix) for k in f.keys()):
        prefix = strip_prefix
    elif strip_prefix and any(k.startswith(strip_prefix) for k in f.keys()):
        bad = [k for k in f.keys() if not k.startswith(strip_prefix)][:SHOW]
        raise CheckpointError(f"'{path}': some keys carry the '{strip_prefix}' prefix and some "
                              f"do not, e.g. {bad}")
    return TensorSource([f], f"'{path}'", prefix=prefix)


def open_folder(folder, base):
    """folder/base.safetensors, or the shards listed in folder/base.safetensors.index.json."""
    index = os.path.join(folder, base + ".safetensors.index.json")
    single = os.path.join(folder, base + ".safetensors")
    if os.path.isfile(index):
        try:
            with open(index, encoding="utf-8") as fh:
                wmap = json.load(fh)["weight_map"]
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise CheckpointError(f"'{index}': unreadable shard index ({e})") from None
        if not isinstance(wmap, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                                 for k, v in wmap.items()):
            raise CheckpointError(f"'{index}': weight_map must map names to file names")
        files = []
        for shard in sorted(set(wmap.values())):
            if os.path.basename(shard) != shard or shard in (".", ".."):
                raise CheckpointError(f"'{index}': shard name '{shard}' is not a plain file name")
            path = os.path.join(folder, shard)
            if not os.path.isfile(path):
                raise CheckpointError(f"'{index}': shard '{shard}' is missing from '{folder}'")
            f = SafeTensorsFile(path)
            listed = {k for k, v in wmap.items() if v == shard}
            extra = sorted(set(f.keys()) - listed)
            absent = sorted(listed - set(f.keys()))
            if absent:
                raise CheckpointError(f"'{path}': tensors listed in the index are not in the "
                                      f"shard, e.g. {absent[:SHOW]}")
            if extra:
                raise CheckpointError(f"'{path}': tensors not listed in the index, e.g. "
                                      f"{extra[:SHOW]}")
            files.append(f)
        return TensorSource(files, f"'{folder}'", index=index)
    if os.path.isfile(single):
        return TensorSource([SafeTensorsFile(single)], f"'{single}'")
    raise CheckpointError(f"'{folder}': neither {base}.safetensors nor "
                          f"{base}.safetensors.index.json found")


def read_json(path):
    try:
        with open(path, encoding="utf-8") as f:
            d = json.load(f)
    except OSError as e:
        raise CheckpointError(f"cannot read '{path}': {e.strerror}") from None
    except ValueError as e:
        raise CheckpointError(f"'{path}': not valid JSON ({e})") from None
    if not isinstance(d, dict):
        raise CheckpointError(f"'{path}': expected a JSON object")
    return d


def _cfg(cfg, key, path, default=None):
    if key in cfg:
        return cfg[key]
    if default is None:
        raise CheckpointError(f"'{path}': missing '{key}'")
    return default


# ----------------------------------------------------------------------------- configs

def flux_params_from_diffusers(path, src):
    cfg = read_json(path)
    if not _cfg(cfg, "guidance_embeds", path, False):
        raise CheckpointError(f"'{path}': guidance_embeds is false (a schnell-style model); only "
                              "guidance-distilled FLUX.1 dev / Krea-dev models are supported")
    if _cfg(cfg, "patch_size", path, 1) != 1:
        raise CheckpointError(f"'{path}': patch_size must be 1")
    heads = _cfg(cfg, "num_attention_heads", path)
    hd = _cfg(cfg, "attention_head_dim", path)
    mlp_key = "transformer_blocks.0.ff.net.0.proj.weight"
    if mlp_key not in src.keys():
        mlp_key = "single_transformer_blocks.0.proj_mlp.weight"
    mlp_hidden = src.shape(mlp_key)[0] if mlp_key in src.keys() else 4 * heads * hd
    try:
        return FluxParams(in_channels=_cfg(cfg, "in_channels", path),
                          vec_in_dim=_cfg(cfg, "pooled_projection_dim", path),
                          context_in_dim=_cfg(cfg, "joint_attention_dim", path),
                          hidden_size=heads * hd, mlp_hidden=mlp_hidden, num_heads=heads,
                          depth=_cfg(cfg, "num_layers", path),
                          depth_single_blocks=_cfg(cfg, "num_single_layers", path),
                          axes_dim=cfg.get("axes_dims_rope") or default_axes(hd))
    except (ValueError, TypeError) as e:
        raise CheckpointError(f"'{path}': {e}") from None


def _count(keys, pattern):
    n = -1
    for k in keys:
        m = re.match(pattern, k)
        if m:
            n = max(n, int(m.group(1)))
    return n + 1


def default_axes(head_dim):
    """FLUX's RoPE axes (16, 56, 56) for head dim 128, scaled for smaller head dims."""
    if head_dim % 16:
        raise CheckpointError(f"transformer: head dim {head_dim} is not a multiple of 16; give "
                              "the RoPE axes explicitly")
    return [head_dim // 8, head_dim * 7 // 16, head_dim * 7 // 16]


def flux_params_from_bfl(src, axes_dim=None):
    """BFL files carry no config: the dimensions come from the tensor shapes."""
    keys = set(src.keys())
    for k in ("img_in.weight", "txt_in.weight", "vector_in.in_layer.weight"):
        if k not in keys:
            raise CheckpointError(f"{src.where}: not a FLUX transformer checkpoint (no '{k}')")
    if "guidance_in.in_layer.weight" not in keys:
        raise CheckpointError(f"{src.where}: no guidance_in (a schnell-style model); only "
                              "guidance-distilled FLUX.1 dev / Krea-dev models are supported")
    hidden, in_ch = src.shape("img_in.weight")[:2]
    depth = _count(keys, r"double_blocks\.(\d+)\.")
    single = _count(keys, r"single_blocks\.(\d+)\.")
    if depth:
        head_dim = src.shape("double_blocks.0.img_attn.norm.query_norm.scale")[0] \
            if "double_blocks.0.img_attn.norm.query_norm.scale" in keys else 0
        mlp_hidden = src.shape("double_blocks.0.img_mlp.0.weight")[0] \
            if "double_blocks.0.img_mlp.0.weight" in keys else 4 * hidden
    else:
        head_dim = src.shape("single_blocks.0.norm.query_norm.scale")[0] \
            if "single_blocks.0.norm.query_norm.scale" in keys else 0
        mlp_hidden = src.shape("single_blocks.0.linear1.weight")[0] - 3 * hidden \
            if "single_blocks.0.linear1.weight" in keys else 4 * hidden
    if head_dim <= 0 or hidden % head_dim:
        raise CheckpointError(f"{src.where}: cannot tell the head dim from the QK norm scales")
    try:
        return FluxParams(in_channels=in_ch, vec_in_dim=src.shape("vector_in.in_layer.weight")[1],
                          context_in_dim=src.shape("txt_in.weight")[1], hidden_size=hidden,
                          mlp_hidden=mlp_hidden, num_heads=hidden // head_dim, depth=depth,
                          depth_single_blocks=single,
                          axes_dim=axes_dim or default_axes(head_dim))
    except ValueError as e:
        raise CheckpointError(f"{src.where}: {e}") from None


def ae_params_from_diffusers(path):
    cfg = read_json(path)
    for flag in ("use_quant_conv", "use_post_quant_conv"):
        if cfg.get(flag, False):
            raise CheckpointError(f"'{path}': {flag} is set; the FLUX AE has no quant convs")
    if not cfg.get("mid_block_add_attention", True):
        raise CheckpointError(f"'{path}': mid_block_add_attention false is not the FLUX AE")
    boc = _cfg(cfg, "block_out_channels", path)
    if not isinstance(boc, list) or not boc or any(not isinstance(c, int) or c <= 0 for c in boc) \
            or any(c % boc[0] for c in boc):
        raise CheckpointError(f"'{path}': bad block_out_channels {boc!r}")
    try:
        return AEParams(ch=boc[0], out_ch=_cfg(cfg, "out_channels", path, 3),
                        ch_mult=[c // boc[0] for c in boc],
                        num_res_blocks=_cfg(cfg, "layers_per_block", path),
                        z_channels=_cfg(cfg, "latent_channels", path),
                        num_groups=_cfg(cfg, "norm_num_groups", path, 32),
                        scale_factor=_cfg(cfg, "scaling_factor", path),
                        shift_factor=_cfg(cfg, "shift_factor", path, 0.0))
    except (ValueError, TypeError) as e:
        raise CheckpointError(f"'{path}': {e}") from None


def ae_params_from_bfl(src):
    keys = set(src.keys())
    if "decoder.conv_in.weight" not in keys or "decoder.conv_out.weight" not in keys:
        raise CheckpointError(f"{src.where}: not a FLUX AE checkpoint (no decoder.conv_in / "
                              "decoder.conv_out)")
    levels = _count(keys, r"decoder\.up\.(\d+)\.")
    chans = []
    for i in range(levels):
        k = f"decoder.up.{i}.block.0.conv1.weight"
        if k not in keys:
            raise CheckpointError(f"{src.where}: missing '{k}'")
        chans.append(src.shape(k)[0])
    if not chans or any(c % chans[0] for c in chans):
        raise CheckpointError(f"{src.where}: cannot tell the decoder channels")
    try:
        return AEParams(ch=chans[0], out_ch=src.shape("decoder.conv_out.weight")[0],
                        ch_mult=[c // chans[0] for c in chans],
                        num_res_blocks=_count(keys, r"decoder\.up\.0\.block\.(\d+)\.") - 1,
                        z_channels=src.shape("decoder.conv_in.weight")[1])
    except ValueError as e:
        raise CheckpointError(f"{src.where}: {e}") from None


def clip_params(path):
    cfg = read_json(path)
    if cfg.get("hidden_act", "quick_gelu") != "quick_gelu":
        raise CheckpointError(f"'{path}': hidden_act {cfg['hidden_act']!r}; CLIP-L uses quick_gelu")
    try:
        return CLIPParams(**{f: _cfg(cfg, f, path, d) for f, d in
                             (("vocab_size", None), ("hidden_size", None),
                              ("intermediate_size", None), ("num_hidden_layers", None),
                              ("num_attention_heads", None), ("max_position_embeddings", 77),
                              ("layer_norm_eps", 1e-5))})
    except (ValueError, TypeError) as e:
        raise CheckpointError(f"'{path}': {e}") from None


def t5_params(path):
    cfg = read_json(path)
    ff = cfg.get("feed_forward_proj", "gated-gelu")
    if ff != "gated-gelu" or cfg.get("dense_act_fn", "gelu_new") != "gelu_new":
        raise CheckpointError(f"'{path}': feed_forward_proj {ff!r}; T5 v1.1 uses gated-gelu "
                              "with gelu_new")
    try:
        return T5Params(**{f: _cfg(cfg, f, path, d) for f, d in
                           (("vocab_size", None), ("d_model", None), ("d_kv", None),
                            ("num_heads", None), ("d_ff", None), ("num_layers", None),
                            ("relative_attention_num_buckets", 32),
                            ("relative_attention_max_distance", 128),
                            ("layer_norm_epsilon", 1e-6))})
    except (ValueError, TypeError) as e:
        raise CheckpointError(f"'{path}': {e}") from None


# ----------------------------------------------------------------------------- loading

def _first(items):
    items = sorted(items)
    more = f" (and {len(items) - SHOW} more)" if len(items) > SHOW else ""
    return ", ".join(f"'{k}'" for k in items[:SHOW]) + more


def account(rules, src, ignore, what):
    """Checks that the rules' source keys are all present and that every source key is used
    or ignorable; raises CheckpointError naming the first offending keys."""
    keys = set(src.keys())
    needed = {s for r in rules for s in r.sources}
    missing = needed - keys
    unexpected = {k for k in keys - needed if not (ignore and ignore.fullmatch(k))}
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing key(s): {_first(missing)}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected key(s): {_first(unexpected)}")
        raise CheckpointError(f"{what} checkpoint {src.where}: " + "; ".join(parts))


def _set_param(module, name, tensor):
    path, _, leaf = name.rpartition(".")
    owner = module.get_submodule(path) if path else module
    setattr(owner, leaf, nn.Parameter(tensor, requires_grad=False))


def materialise(module, rules, src, dtype, device, what, cat_sizes=None, progress=None):
    """Fills the parameters of a module built on the meta device from src through the rules."""
    params = dict(module.named_parameters())
    assert set(params) == {r.canon for r in rules}, "rules do not cover the module"
    for i, r in enumerate(rules):
        want = tuple(params[r.canon].shape)
        sizes = cat_sizes(r) if (cat_sizes and r.op == "cat") else None
        for s, exp in zip(r.sources, r.expected_shapes(want, sizes)):
            dt = src.dtype_name(s)
            if dt not in FLOAT_DTYPES:
                raise CheckpointError(f"{what} checkpoint {src.where}: tensor '{s}' has dtype "
                                      f"{dt}; weights must be F32, F16 or BF16")
            if tuple(src.shape(s)) != exp:
                raise CheckpointError(f"{what} checkpoint {src.where}: tensor '{s}' has shape "
                                      f"{list(src.shape(s))}, expected {list(exp)}")
        t = r.build([src.get(s) for s in r.sources]).to(device=device, dtype=dtype)
        _set_param(module, r.canon, t)
        if progress and (i + 1) % 64 == 0:
            progress(i + 1, len(rules))
    return module.eval()


def meta_module(cls, params, dtype):
    return cls(params, device="meta", dtype=dtype)


def load_transformer(src, layout, params, dtype=torch.float32, device="cpu", progress=None):
    m = meta_module(Flux, params, dtype)
    keys = [k for k, _ in m.named_parameters()]
    if layout == "bfl":
        rules = keymap.identity_rules(keys)
    else:
        rules = keymap.flux_diffusers_rules(keys)
    account(rules, src, None, "transformer")
    sizes = (lambda r: keymap.flux_cat_sizes(r, params.hidden_size, params.mlp_hidden))
    return materialise(m, rules, src, dtype, device, "transformer", sizes, progress)


def load_ae(src, layout, params, dtype=torch.float32, device="cpu"):
    m = meta_module(AEDecoder, params, dtype)
    keys = [k for k, _ in m.named_parameters()]
    if layout == "bfl":
        rules, ignore = keymap.ae_bfl_rules(keys, len(params.ch_mult)), keymap.AE_BFL_IGNORE
    else:
        rules, ignore = keymap.identity_rules(keys), keymap.AE_DIFFUSERS_IGNORE
    account(rules, src, ignore, "AE")
    return materialise(m, rules, src, dtype, device, "AE")


def load_clip(src, params, dtype=torch.float32, device="cpu"):
    m = meta_module(CLIPTextModel, params, dtype)
    rules = keymap.identity_rules([k for k, _ in m.named_parameters()])
    account(rules, src, keymap.CLIP_IGNORE, "CLIP")
    return materialise(m, rules, src, dtype, device, "CLIP")


def t5_rules(keys, src):
    """T5 ties shared.weight and encoder.embed_tokens.weight: either may be stored, or both."""
    have = set(src.keys())
    rules, ignore = [], None
    for k in keys:
        if k == "shared.weight" and k not in have and "encoder.embed_tokens.weight" in have:
            rules.append(keymap.Rule(k, ["encoder.embed_tokens.weight"]))
        else:
            rules.append(keymap.Rule(k, [k]))
    if "shared.weight" in have:
        ignore = re.compile(r"encoder\.embed_tokens\.weight")
    return rules, ignore


def load_t5(src, params, dtype=torch.float32, device="cpu"):
    m = meta_module(T5EncoderModel, params, dtype)
    rules, ignore = t5_rules([k for k, _ in m.named_parameters()], src)
    account(rules, src, ignore, "T5")
    return materialise(m, rules, src, dtype, device, "T5")


# ----------------------------------------------------------------------------- layouts

class Checkpoint:
    """A resolved set of sources: where each part comes from and its dimensions."""

    def __init__(self, layout, transformer, ae, clip, t5, flux_params, ae_params, clip_params_,
                 t5_params_, tokenizer_dir, tokenizer2_dir, config_files):
        self.layout = layout
        self.transformer = transformer
        self.ae = ae
        self.clip = clip
        self.t5 = t5
        self.flux_params = flux_params
        self.ae_params = ae_params
        self.clip_params = clip_params_
        self.t5_params = t5_params_
        self.tokenizer_dir = tokenizer_dir
        self.tokenizer2_dir = tokenizer2_dir
        self.config_files = config_files

    def source_files(self):
        """Every file the export reads, for the manifest's hashes."""
        files = []
        for s in (self.transformer, self.ae, self.clip, self.t5):
            files.extend(s.paths)
        files.extend(self.config_files)
        files.extend(tokenizer_files(self.tokenizer_dir, self.tokenizer2_dir))
        return files

    def load(self, part, dtype=torch.float32, device="cpu", progress=None):
        if part == "transformer":
            return load_transformer(self.transformer, self.layout, self.flux_params, dtype,
                                    device, progress)
        if part == "ae":
            return load_ae(self.ae, self.layout, self.ae_params, dtype, device)
        if part == "clip":
            return load_clip(self.clip, self.clip_params, dtype, device)
        if part == "t5":
            return load_t5(self.t5, self.t5_params, dtype, device)
        raise ValueError(part)


def tokenizer_files(tok_dir, tok2_dir):
    files = [os.path.join(tok_dir, "vocab.json"), os.path.join(tok_dir, "merges.txt"),
             os.path.join(tok2_dir, "spiece.model")]
    for f in files:
        if not os.path.isfile(f):
            raise CheckpointError(f"tokenizer file '{f}' is missing")
    return files


def detect_layout(root):
    if glob.glob(os.path.join(root, "flux1-*.safetensors")) and \
            os.path.isfile(os.path.join(root, "ae.safetensors")):
        return "bfl"
    if os.path.isdir(os.path.join(root, "transformer")):
        return "diffusers"
    raise CheckpointError(f"'{root}': neither a BFL layout (flux1-*.safetensors + ae.safetensors) "
                          "nor a diffusers folder (transformer/, vae/, ...)")


def open_checkpoint(root, layout="auto", transformer_file=None, ae_file=None, axes_dim=None):
    """Resolves a checkpoint folder (optionally with explicit BFL files) and validates every
    safetensors header and config; tensors are read later by Checkpoint.load."""
    if not os.path.isdir(root):
        raise CheckpointError(f"'{root}' is not a folder")
    if layout == "auto":
        layout = "bfl" if (transformer_file or ae_file) else detect_layout(root)
    configs = []
    if layout == "bfl":
        if transformer_file is None:
            found = sorted(glob.glob(os.path.join(root, "flux1-*.safetensors")))
            if len(found) != 1:
                raise CheckpointError(f"'{root}': expected one flux1-*.safetensors, found "
                                      f"{len(found)}; name it with --transformer")
            transformer_file = found[0]
        ae_file = ae_file or os.path.join(root, "ae.safetensors")
        tr = open_file(transformer_file, strip_prefix=BFL_PREFIX)
        ae = open_file(ae_file)
        fp = flux_params_from_bfl(tr, axes_dim)
        ap = ae_params_from_bfl(ae)
    elif layout == "diffusers":
        tr = open_folder(os.path.join(root, "transformer"), "diffusion_pytorch_model")
        ae = open_folder(os.path.join(root, "vae"), "diffusion_pytorch_model")
        tcfg = os.path.join(root, "transformer", "config.json")
        vcfg = os.path.join(root, "vae", "config.json")
        configs += [tcfg, vcfg]
        fp = flux_params_from_diffusers(tcfg, tr)
        if axes_dim:
            fp = FluxParams.from_dict(dict(fp.to_dict(), axes_dim=axes_dim))
        ap = ae_params_from_diffusers(vcfg)
    else:
        raise CheckpointError(f"unknown layout '{layout}' (bfl, diffusers or auto)")
    ccfg = os.path.join(root, "text_encoder", "config.json")
    t5cfg = os.path.join(root, "text_encoder_2", "config.json")
    clip = open_folder(os.path.join(root, "text_encoder"), "model")
    t5 = open_folder(os.path.join(root, "text_encoder_2"), "model")
    configs += [ccfg, t5cfg]
    cp = clip_params(ccfg)
    tp = t5_params(t5cfg)
    if fp.vec_in_dim != cp.hidden_size:
        raise CheckpointError(f"transformer takes a {fp.vec_in_dim}-d pooled vector but the CLIP "
                              f"encoder gives {cp.hidden_size}")
    if fp.context_in_dim != tp.d_model:
        raise CheckpointError(f"transformer takes {fp.context_in_dim}-d text states but the T5 "
                              f"encoder gives {tp.d_model}")
    if 4 * ap.z_channels != fp.in_channels:
        raise CheckpointError(f"transformer takes {fp.in_channels} channels per token but the AE "
                              f"has {ap.z_channels} latent channels (x4 = {4 * ap.z_channels})")
    tok, tok2 = os.path.join(root, "tokenizer"), os.path.join(root, "tokenizer_2")
    tokenizer_files(tok, tok2)
    return Checkpoint(layout, tr, ae, clip, t5, fp, ap, cp, tp, tok, tok2, configs)
