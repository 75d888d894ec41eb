"""Key mapping between checkpoint layouts and the modules' own (canonical) parameter names.

A layout is a list of Rules, one per canonical parameter: which source tensors make it and how.
The same rules serve both directions: `build` makes a canonical tensor from source tensors
(reading), `split` makes the source tensors from a canonical one (writing the tiny
checkpoints). Operations:
  copy     one source, unchanged
  cat      sources concatenated along dim 0 (diffusers' separate q/k/v -> BFL's fused qkv;
           single-block to_q/to_k/to_v/proj_mlp -> linear1)
  swap     one source whose two halves along dim 0 trade places (final layer shift/scale)
  conv1x1  one source [C, C, 1, 1] seen as a Linear [C, C] (AE attention q/k/v/proj)
Canonical names: the transformer uses BFL names, the AE decoder diffusers names (so its up
blocks are stored in execution order), CLIP and T5 the Hugging Face names.
"""

import re

import torch


class Rule:
    __slots__ = ("canon", "sources", "op")

    def __init__(self, canon, sources, op="copy"):
        self.canon = canon
        self.sources = list(sources)
        self.op = op

    def build(self, tensors):
        """tensors: the source tensors in self.sources order -> the canonical tensor."""
        if self.op == "copy":
            return tensors[0]
        if self.op == "cat":
            return torch.cat(tensors, dim=0)
        if self.op == "swap":
            a, b = tensors[0].chunk(2, dim=0)
            return torch.cat((b, a), dim=0)
        if self.op == "conv1x1":
            return tensors[0].reshape(tensors[0].shape[0], tensors[0].shape[1])
        raise AssertionError(self.op)

    def expected_shapes(self, canon_shape, sizes=None):
        """Source shapes implied by a canonical shape (sizes: the cat split along dim 0)."""
        if self.op == "cat":
            return [(s,) + tuple(canon_shape[1:]) for s in sizes]
        if self.op == "conv1x1":
            return [tuple(canon_shape) + (1, 1)]
        return [tuple(canon_shape)]

    def split(self, t, sizes=None):
        """The inverse of build: canonical tensor -> source tensors."""
        if self.op == "copy":
            return [t]
        if self.op == "cat":
            return list(torch.split(t, sizes, dim=0))
        if self.op == "swap":
            a, b = t.chunk(2, dim=0)
            return [torch.cat((b, a), dim=0)]
        if self.op == "conv1x1":
            return [t.reshape(t.shape[0], t.shape[1], 1, 1)]
        raise AssertionError(self.op)


def identity_rules(canon_keys, prefix=""):
    return [Rule(k, [prefix + k]) for k in canon_keys]


# ----------------------------------------------------------------------------- transformer

_FLUX_TOP = {
    "img_in": "x_embedder",
    "time_in.in_layer": "time_text_embed.timestep_embedder.linear_1",
    "time_in.out_layer": "time_text_embed.timestep_embedder.linear_2",
    "guidance_in.in_layer": "time_text_embed.guidance_embedder.linear_1",
    "guidance_in.out_layer": "time_text_embed.guidance_embedder.linear_2",
    "vector_in.in_layer": "time_text_embed.text_embedder.linear_1",
    "vector_in.out_layer": "time_text_embed.text_embedder.linear_2",
    "txt_in": "context_embedder",
    "final_layer.linear": "proj_out",
}
_FLUX_DOUBLE = {
    "img_mod.lin": "norm1.linear",
    "txt_mod.lin": "norm1_context.linear",
    "img_attn.proj": "attn.to_out.0",
    "txt_attn.proj": "attn.to_add_out",
    "img_mlp.0": "ff.net.0.proj",
    "img_mlp.2": "ff.net.2",
    "txt_mlp.0": "ff_context.net.0.proj",
    "txt_mlp.2": "ff_context.net.2",
    "img_attn.norm.query_norm": "attn.norm_q",
    "img_attn.norm.key_norm": "attn.norm_k",
    "txt_attn.norm.query_norm": "attn.norm_added_q",
    "txt_attn.norm.key_norm": "attn.norm_added_k",
}
_FLUX_DOUBLE_QKV = {
    "img_attn.qkv": ["attn.to_q", "attn.to_k", "attn.to_v"],
    "txt_attn.qkv": ["attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj"],
}
_FLUX_SINGLE = {
    "modulation.lin": "norm.linear",
    "linear2": "proj_out",
    "norm.query_norm": "attn.norm_q",
    "norm.key_norm": "attn.norm_k",
}


def _leaf(name):
    # RMSNorm scales are 'scale' in BFL and 'weight' in diffusers.
    return "weight" if name == "scale" else name


def flux_diffusers_rules(canon_keys):
    """Rules making BFL-named transformer parameters from a diffusers transformer/ folder."""
    rules = []
    for k in canon_keys:
        mod, _, leaf = k.rpartition(".")
        m = re.fullmatch(r"double_blocks\.(\d+)\.(.+)", mod)
        s = re.fullmatch(r"single_blocks\.(\d+)\.(.+)", mod)
        if mod == "final_layer.adaLN_modulation.1":
            rules.append(Rule(k, [f"norm_out.linear.{leaf}"], "swap"))
        elif mod in _FLUX_TOP:
            rules.append(Rule(k, [f"{_FLUX_TOP[mod]}.{leaf}"]))
        elif m and m.group(2) in _FLUX_DOUBLE_QKV:
            p = f"transformer_blocks.{m.group(1)}."
            rules.append(Rule(k, [f"{p}{n}.{leaf}" for n in _FLUX_DOUBLE_QKV[m.group(2)]], "cat"))
        elif m and m.group(2) in _FLUX_DOUBLE:
            rules.append(Rule(k, [f"transformer_blocks.{m.group(1)}.{_FLUX_DOUBLE[m.group(2)]}."
                                  f"{_leaf(leaf)}"]))
        elif s and s.group(2) == "linear1":
            p = f"single_transformer_blocks.{s.group(1)}."
            rules.append(Rule(k, [f"{p}attn.to_q.{leaf}", f"{p}attn.to_k.{leaf}",
                                  f"{p}attn.to_v.{leaf}", f"{p}proj_mlp.{leaf}"], "cat"))
        elif s and s.group(2) in _FLUX_SINGLE:
            rules.append(Rule(k, [f"single_transformer_blocks.{s.group(1)}."
                                  f"{_FLUX_SINGLE[s.group(2)]}.{_leaf(leaf)}"]))
        else:
            raise AssertionError(f"no diffusers mapping for transformer parameter '{k}'")
    return rules


def flux_cat_sizes(rule, hidden, mlp_hidden):
    """Split sizes along dim 0 of a transformer cat rule."""
    if rule.canon.endswith(("attn.qkv.weight", "attn.qkv.bias")):
        return [hidden] * 3
    return [hidden] * 3 + [mlp_hidden]


# ----------------------------------------------------------------------------- autoencoder

_AE_RESNET_LEAF = {"conv_shortcut": "nin_shortcut"}
_AE_ATTN = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}


def ae_bfl_rules(canon_keys, levels):
    """Rules making diffusers-named AE decoder parameters from a BFL ae.safetensors."""
    rules = []
    for k in canon_keys:
        mod, _, leaf = k.rpartition(".")
        up = re.fullmatch(r"decoder\.up_blocks\.(\d+)\.(resnets\.(\d+)\.(\w+)|upsamplers\.0\.conv)",
                          mod)
        mid_r = re.fullmatch(r"decoder\.mid_block\.resnets\.(\d)\.(\w+)", mod)
        mid_a = re.fullmatch(r"decoder\.mid_block\.attentions\.0\.(.+)", mod)
        if up:
            i = levels - 1 - int(up.group(1))
            if up.group(3) is None:
                src = f"decoder.up.{i}.upsample.conv"
            else:
                part = _AE_RESNET_LEAF.get(up.group(4), up.group(4))
                src = f"decoder.up.{i}.block.{up.group(3)}.{part}"
            rules.append(Rule(k, [f"{src}.{leaf}"]))
        elif mid_r:
            rules.append(Rule(k, [f"decoder.mid.block_{int(mid_r.group(1)) + 1}.{mid_r.group(2)}"
                                  f".{leaf}"]))
        elif mid_a:
            part = mid_a.group(1)
            op = "conv1x1" if part != "group_norm" and leaf == "weight" else "copy"
            rules.append(Rule(k, [f"decoder.mid.attn_1.{_AE_ATTN[part]}.{leaf}"], op))
        elif mod == "decoder.conv_norm_out":
            rules.append(Rule(k, [f"decoder.norm_out.{leaf}"]))
        elif mod in ("decoder.conv_in", "decoder.conv_out"):
            rules.append(Rule(k, [k]))
        else:
            raise AssertionError(f"no BFL mapping for AE parameter '{k}'")
    return rules


# Encoder tensors are part of the AE files but not of text-to-image; they are recognised by
# their exact structure (so a misspelt key is still reported) and skipped.
AE_BFL_IGNORE = re.compile(
    r"encoder\.(conv_in|conv_out|norm_out"
    r"|down\.\d+\.block\.\d+\.(norm1|conv1|norm2|conv2|nin_shortcut)"
    r"|down\.\d+\.downsample\.conv"
    r"|mid\.block_[12]\.(norm1|conv1|norm2|conv2)"
    r"|mid\.attn_1\.(norm|q|k|v|proj_out))\.(weight|bias)")
AE_DIFFUSERS_IGNORE = re.compile(
    r"encoder\.(conv_in|conv_out|conv_norm_out"
    r"|down_blocks\.\d+\.resnets\.\d+\.(norm1|conv1|norm2|conv2|conv_shortcut)"
    r"|down_blocks\.\d+\.downsamplers\.0\.conv"
    r"|mid_block\.resnets\.[01]\.(norm1|conv1|norm2|conv2)"
    r"|mid_block\.attentions\.0\.(group_norm|to_q|to_k|to_v|to_out\.0))\.(weight|bias)")
CLIP_IGNORE = re.compile(r"text_model\.embeddings\.position_ids")


# ----------------------------------------------------------------------------- LoRA adapters
# The key forms of LoRA files (docs/architecture.md, "LoRA adapters"). One table serves the
# exporter's lora_map.json (which the C reader follows) and the Python reader (lora.py).
# A key is PREFIX + NAME + SUFFIX: the prefix says the layout and the part, NAME the layer
# (bfl: its canonical name; kohya: the same with '.' -> '_'; diffusers: a diffusers name,
# which may cover only some rows of a fused layer), the suffix which factor it holds.

LORA_LAYOUTS = ("kohya", "diffusers", "bfl")
LORA_PARTS = ("transformer", "clip", "t5")
LORA_SUFFIXES = {
    "down": [".lora_down.weight", ".lora_A.weight"],
    "up": [".lora_up.weight", ".lora_B.weight"],
    "alpha": [".alpha"],
}
LORA_PREFIXES = {
    "transformer": {"bfl": ["diffusion_model.", "model.diffusion_model."],
                    "diffusers": ["transformer."], "kohya": ["lora_unet_"]},
    "clip": {"bfl": ["text_encoders.clip_l.transformer."], "diffusers": ["text_encoder."],
             "kohya": ["lora_te1_", "lora_te_"]},
    "t5": {"bfl": ["text_encoders.t5xxl.transformer."], "diffusers": ["text_encoder_2."],
           "kohya": ["lora_te2_"]},
}


def lora_diffusers_targets(part, layer, out, hidden=None, mlp_hidden=None):
    """The diffusers names of one adaptable layer and the rows each covers:
    [{"name", "row0", "rows"[, "swap": True]}]. The transformer's come from
    flux_diffusers_rules (cat: q/k/v or q/k/v/mlp row blocks; swap: the final layer's
    shift/scale halves); CLIP's and T5's diffusers names are their Hugging Face names."""
    if part != "transformer":
        return [{"name": layer, "row0": 0, "rows": out}]
    (rule,) = flux_diffusers_rules([layer + ".weight"])
    names = [s[:-len(".weight")] for s in rule.sources]
    if rule.op == "cat":
        sizes = flux_cat_sizes(rule, hidden, mlp_hidden)
        if sum(sizes) != out:
            raise AssertionError(f"'{layer}': row blocks {sizes} do not add up to {out}")
        row0, targets = 0, []
        for n, s in zip(names, sizes):
            targets.append({"name": n, "row0": row0, "rows": s})
            row0 += s
        return targets
    entry = {"name": names[0], "row0": 0, "rows": out}
    if rule.op == "swap":
        entry["swap"] = True
    return [entry]
