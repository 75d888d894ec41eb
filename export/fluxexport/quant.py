"""Weight formats chosen at export (`fluxexport export --weights FORMAT`), and the scriptable
modules that hold quantised linear layers and dequantise them in their forward.

What is quantised: every nn.Linear inside the transformer's blocks (double_blocks.*,
single_blocks.*: attention, MLP and modulation layers, 99.4% of the full model's weights) and
inside T5's blocks (encoder.block.*: q, k, v, o, wi_0, wi_1, wo). The layers outside the blocks
(img_in, txt_in, the time / guidance / vector embedders, final_layer), biases, norms, T5's
token embedding, CLIP and the AE stay in the compute dtype: they are small, and the first and
last layers are where errors are least diluted.

Formats (QUANTISED; "bf16" / "fp32" mean plain weights in the compute dtype, as before):
  int8  int8 weights, one scale per output channel (absmax / 127, round to nearest): 1 byte
        per weight plus one scale per row, half of bf16. Works on every torch that scripts.
  fp8   float8 e4m3 ("fn") weights, one scale per output channel (absmax / 448): 1 byte per
        weight. Needs torch's float8 dtypes (2.1+); the exporter refuses it on an older torch
        and names the format that would work (int8, the same size).
  int4  symmetric 4-bit codes -7..7, two per byte (low nibble first), one scale per group of
        64 consecutive weights of a row (absmax / 7; 32 or 16 when the row length is not a
        multiple of 64): 4 bits per weight + one scale per 64 = 4.25 bits with bf16 scales,
        0.27 of bf16.

Scales are stored in the compute dtype and the codes are made against that rounded scale, so
dequantisation multiplies by exactly the stored number. Dequantisation happens in the
forward, in the compute dtype, right before F.linear: one transient weight-sized tensor per
layer call (DEQUANT_FACTOR per weight; recorded in the manifest as dequant_bytes so that the
memory plan counts it).

Why int4 with group scales and not nf4: nf4 (QLoRA's 16 normal quantiles with per-block
absmax) has about 25% lower error on gaussian weights, but dequantising it is a table lookup,
and a lookup in TorchScript without custom kernels goes through an int64 index tensor of the
layer's size (8 bytes per weight, 4x the bf16 weight it produces: 528 MB transient for one
3072 x 21504 layer). int4 dequantises with a mask, a shift and a multiply (no gather, no index
tensor, the same on torch 1.13 and 2.x, and the layout of the int4 GEMM kernels torch 2.x
and others ship, so a fused path can replace the unpacking later without re-exporting).
Group scales of 64 keep an outlier's damage inside its group of 64, which matters for the
heavy-tailed layers real checkpoints have; docs/formats.md has the measured errors.
"""

import torch
import torch.nn.functional as F
from torch import Tensor, nn

PLAIN = ("fp32", "bf16")
QUANTISED = ("int8", "fp8", "int4")
FORMATS = PLAIN + QUANTISED
INT4_GROUPS = (64, 32, 16)
FP8_MAX = 448.0
# Bytes of transient tensors per weight while a layer dequantises, besides the weight in the
# compute dtype itself (itemsize bytes): int4 unpacks through two half-size uint8 tensors and
# one full-size one before the cast.
DEQUANT_EXTRA = {"int8": 0, "fp8": 0, "int4": 2}
# Module name prefixes whose Linear layers are quantised, per exported part.
PREFIXES = {"transformer": ("double_blocks.", "single_blocks."), "t5": ("encoder.block.",)}


def has_fp8():
    return hasattr(torch, "float8_e4m3fn")


def fp8_refusal():
    """The message for --weights fp8 on a torch without float8 dtypes (None when it has them)."""
    if has_fp8():
        return None
    return (f"--weights fp8 needs torch's float8 dtypes (torch 2.1 or later); this torch is "
            f"{torch.__version__}. Use --weights int8 (the same size on disk, works on this "
            "torch), or run the exporter on a newer torch (PYTHON=/path/to/venv/bin/python "
            "fluxexport export ...)")


def _row_scales(absmax, qmax, dtype):
    """absmax / qmax per row or group, rounded to the storage dtype (never 0)."""
    s = torch.where(absmax > 0, absmax / qmax, torch.ones_like(absmax))
    return s.to(dtype)


class Int8Linear(nn.Module):
    """y = x W^T + b with W = qweight (int8, out x in) * scale[:, None] (compute dtype)."""

    def __init__(self, qweight: Tensor, scale: Tensor, bias):
        super().__init__()
        self.in_features = int(qweight.shape[1])
        self.out_features = int(qweight.shape[0])
        self.register_buffer("qweight", qweight)
        self.register_buffer("scale", scale)
        self.register_buffer("bias", bias)

    def forward(self, x: Tensor) -> Tensor:
        w = self.qweight.to(x.dtype)
        w.mul_(self.scale.to(x.dtype)[:, None])
        return F.linear(x, w, self.bias)


class FP8Linear(nn.Module):
    """y = x W^T + b with W = qweight (float8 e4m3fn, out x in) * scale[:, None]."""

    def __init__(self, qweight: Tensor, scale: Tensor, bias):
        super().__init__()
        self.in_features = int(qweight.shape[1])
        self.out_features = int(qweight.shape[0])
        self.register_buffer("qweight", qweight)
        self.register_buffer("scale", scale)
        self.register_buffer("bias", bias)

    def forward(self, x: Tensor) -> Tensor:
        w = self.qweight.to(x.dtype)
        w.mul_(self.scale.to(x.dtype)[:, None])
        return F.linear(x, w, self.bias)


class Int4Linear(nn.Module):
    """y = x W^T + b; packed (out, in/2) uint8 holds codes c + 8 (c in -7..7), even columns in
    the low nibble; scale (out, in/group) in the compute dtype."""

    def __init__(self, packed: Tensor, scale: Tensor, bias, in_features: int):
        super().__init__()
        self.in_features = in_features
        self.out_features = int(packed.shape[0])
        self.group = in_features // int(scale.shape[1])
        self.register_buffer("packed", packed)
        self.register_buffer("scale", scale)
        self.register_buffer("bias", bias)

    def forward(self, x: Tensor) -> Tensor:
        p = self.packed
        codes = torch.stack((torch.bitwise_and(p, 15), torch.bitwise_right_shift(p, 4)), dim=-1)
        w = codes.view(self.out_features, -1, self.group).to(x.dtype)
        w.sub_(8.0)
        w.mul_(self.scale.to(x.dtype)[:, :, None])
        return F.linear(x, w.view(self.out_features, self.in_features), self.bias)


def int4_group(in_features):
    for g in INT4_GROUPS:
        if in_features % g == 0:
            return g
    return 0


def quantise_weight(w, fmt, dtype):
    """The stored tensors of one weight (out, in) in a format: (codes, scale); w any float."""
    w = w.detach().float()
    if fmt == "int8":
        s = _row_scales(w.abs().amax(dim=1), 127.0, dtype)
        q = torch.clamp(torch.round(w / s.float()[:, None]), -127, 127).to(torch.int8)
        return q, s
    if fmt == "fp8":
        s = _row_scales(w.abs().amax(dim=1), FP8_MAX, dtype)
        q = torch.clamp(w / s.float()[:, None], -FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn)
        return q, s
    if fmt == "int4":
        out, n = w.shape
        g = int4_group(n)
        wg = w.view(out, n // g, g)
        s = _row_scales(wg.abs().amax(dim=2), 7.0, dtype)
        c = torch.clamp(torch.round(wg / s.float()[:, :, None]), -7, 7).to(torch.int16) + 8
        c = c.view(out, n).to(torch.uint8)
        return torch.bitwise_or(c[:, 0::2], torch.bitwise_left_shift(c[:, 1::2], 4)), s
    raise ValueError(f"unknown weight format '{fmt}'")


def dequantise_weight(q, s, fmt, in_features=None):
    """The float32 weight the stored tensors stand for (tests, benchmarks)."""
    if fmt in ("int8", "fp8"):
        return q.float() * s.float()[:, None]
    out = q.shape[0]
    c = torch.stack((torch.bitwise_and(q, 15), torch.bitwise_right_shift(q, 4)), dim=-1)
    c = c.view(out, s.shape[1], -1).float() - 8.0
    return (c * s.float()[:, :, None]).view(out, -1)


def quantisable(lin, fmt):
    """Whether a Linear can be stored in fmt (int4 needs a row length that groups evenly)."""
    return fmt != "int4" or int4_group(lin.in_features) > 0


def quantised_linear(lin, fmt, dtype):
    """A scriptable module computing lin in fmt (lin's bias kept in dtype)."""
    q, s = quantise_weight(lin.weight, fmt, dtype)
    bias = None if lin.bias is None else lin.bias.detach().to(dtype).clone()
    if fmt == "int8":
        return Int8Linear(q, s, bias)
    if fmt == "fp8":
        return FP8Linear(q, s, bias)
    return Int4Linear(q, s, bias, lin.in_features)


def quantise_module(module, part, fmt, dtype):
    """Replaces the Linear layers of part's blocks in module (in place) by quantised ones.
    Returns the manifest's weights record: format, counts, group size, dequant_bytes."""
    if fmt in PLAIN:
        return {"format": fmt, "quantised_linears": 0}
    if fmt == "fp8" and not has_fp8():
        raise ValueError(fp8_refusal())
    itemsize = torch.empty((), dtype=dtype).element_size()
    done, kept, scratch, groups = 0, [], 0, set()
    targets = [(n, m) for n, m in module.named_modules()
               if isinstance(m, nn.Linear) and n.startswith(PREFIXES.get(part, ("\0",)))]
    for name, lin in targets:
        if not quantisable(lin, fmt):
            kept.append(name)
            continue
        owner, _, leaf = name.rpartition(".")
        parent = module.get_submodule(owner) if owner else module
        numel = lin.weight.numel()
        setattr(parent, leaf, quantised_linear(lin, fmt, dtype))
        scratch = max(scratch, numel * (itemsize + DEQUANT_EXTRA[fmt]))
        if fmt == "int4":
            groups.add(int4_group(lin.in_features))
        done += 1
    rec = {"format": fmt, "quantised_linears": done, "kept_linears": len(kept),
           "dequant_bytes": scratch}
    if fmt == "int4":
        rec["group_sizes"] = sorted(groups, reverse=True)
    return rec


def state_bytes(module, prefix=""):
    """Bytes of the parameters and buffers under prefix, each storage counted once."""
    seen, total = set(), 0
    for name, t in module.state_dict(keep_vars=True).items():
        if not name.startswith(prefix) or t is None:
            continue
        key = (t.data_ptr(), t.numel(), t.dtype)
        if key in seen:
            continue
        seen.add(key)
        total += t.numel() * t.element_size()
    return total


def memory_record(module, part):
    """param_bytes of a module, and for the transformer the bytes of one block of each kind
    (what the stream placement moves per block)."""
    rec = {"param_bytes": state_bytes(module)}
    if part == "transformer":
        rec["double_block_bytes"] = state_bytes(module, "double_blocks.0.") \
            if len(module.double_blocks) else 0
        rec["single_block_bytes"] = state_bytes(module, "single_blocks.0.") \
            if len(module.single_blocks) else 0
    return rec


def _stored_bytes(lin, fmt, itemsize):
    """Bytes of one Linear stored in fmt (weight codes, scales, bias)."""
    out, n = lin.out_features, lin.in_features
    bias = out * itemsize if lin.bias is not None else 0
    if fmt in ("int8", "fp8"):
        return out * n + out * itemsize + bias
    return out * n // 2 + out * (n // int4_group(n)) * itemsize + bias


def planned_record(module, part, fmt, dtype):
    """(weights record, memory record) that quantise_module + memory_record would give, from
    the shapes alone: works on a module built on the meta device (a manifest for the real
    sizes without weights). The export tests check that both agree on a real export."""
    itemsize = torch.empty((), dtype=dtype).element_size()
    quantised = fmt in QUANTISED and part in PREFIXES
    replaced = {}
    kept = 0
    if quantised:
        # no tensors are made: fp8 can be planned on a torch without float8 dtypes
        for n, m in module.named_modules():
            if isinstance(m, nn.Linear) and n.startswith(PREFIXES[part]):
                if quantisable(m, fmt):
                    replaced[n] = m
                else:
                    kept += 1

    def bytes_under(prefix):
        total = 0
        for name, p in module.named_parameters():
            owner = name.rpartition(".")[0]
            if name.startswith(prefix) and owner not in replaced:
                total += p.numel() * itemsize
        for name, m in replaced.items():
            if name.startswith(prefix):
                total += _stored_bytes(m, fmt, itemsize)
        return total

    if quantised:
        scratch = max((m.weight.numel() * (itemsize + DEQUANT_EXTRA[fmt])
                       for m in replaced.values()), default=0)
        wrec = {"format": fmt, "quantised_linears": len(replaced), "kept_linears": kept,
                "dequant_bytes": scratch}
        if fmt == "int4":
            wrec["group_sizes"] = sorted({int4_group(m.in_features) for m in replaced.values()},
                                         reverse=True)
    else:
        wrec = {"format": {4: "fp32", 2: "bf16"}[itemsize], "quantised_linears": 0}
    mem = {"param_bytes": bytes_under("")}
    if part == "transformer":
        mem["double_block_bytes"] = bytes_under("double_blocks.0.") \
            if len(module.double_blocks) else 0
        mem["single_block_bytes"] = bytes_under("single_blocks.0.") \
            if len(module.single_blocks) else 0
    return wrec, mem
