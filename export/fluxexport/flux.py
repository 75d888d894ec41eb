"""The FLUX.1 rectified-flow transformer (BFL parameter names).

Forward contract (what the exported transformer.pt takes):
  img (B, L, in_channels) model dtype     packed latent tokens
  img_ids (B, L, 3) float32               (0, i, j) per packed position
  txt (B, Lt, context_in_dim) model dtype T5 hidden states
  txt_ids (B, Lt, 3) float32              zeros
  timesteps (B,) model dtype              sigma in [0, 1]
  y (B, vec_in_dim) model dtype           CLIP pooled output
  guidance (B,) model dtype               guidance scale (e.g. 3.5)
returns (B, L, in_channels) velocity in the model dtype.
Text tokens come first in the joint sequence; there is no attention mask.
"""

import math
from typing import List, Tuple

import torch
from torch import Tensor, nn

from .layers import attention, factory, merge_heads


class FluxParams:
    """Transformer dimensions. The defaults are FLUX.1-dev / Krea-dev."""

    FIELDS = ("in_channels", "vec_in_dim", "context_in_dim", "hidden_size", "mlp_hidden",
              "num_heads", "depth", "depth_single_blocks", "axes_dim", "theta")

    def __init__(self, in_channels=64, vec_in_dim=768, context_in_dim=4096, hidden_size=3072,
                 mlp_hidden=12288, num_heads=24, depth=19, depth_single_blocks=38,
                 axes_dim=(16, 56, 56), theta=10000):
        self.in_channels = int(in_channels)
        self.vec_in_dim = int(vec_in_dim)
        self.context_in_dim = int(context_in_dim)
        self.hidden_size = int(hidden_size)
        self.mlp_hidden = int(mlp_hidden)
        self.num_heads = int(num_heads)
        self.depth = int(depth)
        self.depth_single_blocks = int(depth_single_blocks)
        self.axes_dim = [int(a) for a in axes_dim]
        self.theta = int(theta)
        self.validate()

    def validate(self):
        for f in self.FIELDS:
            v = getattr(self, f)
            if f != "axes_dim" and v <= 0 and not (f in ("depth", "depth_single_blocks") and v == 0):
                raise ValueError(f"transformer: {f} must be positive, got {v}")
        if self.hidden_size % self.num_heads:
            raise ValueError(f"transformer: hidden_size {self.hidden_size} is not a multiple of "
                             f"num_heads {self.num_heads}")
        head_dim = self.hidden_size // self.num_heads
        if len(self.axes_dim) != 3 or any(a <= 0 or a % 2 for a in self.axes_dim):
            raise ValueError(f"transformer: axes_dim {self.axes_dim} must be 3 positive even sizes")
        if sum(self.axes_dim) != head_dim:
            raise ValueError(f"transformer: axes_dim {self.axes_dim} sums to "
                             f"{sum(self.axes_dim)}, head dim is {head_dim}")

    @property
    def head_dim(self):
        return self.hidden_size // self.num_heads

    def to_dict(self):
        return {f: getattr(self, f) for f in self.FIELDS}

    @classmethod
    def from_dict(cls, d):
        return cls(**{f: d[f] for f in cls.FIELDS if f in d})


def timestep_embedding(t: Tensor, dim: int) -> Tensor:
    """Sinusoidal embedding of 1000*t (cos first, max period 10000), cast back to t's dtype.
    The scaling by 1000 happens in t's dtype, as in the reference (bf16 rounds it)."""
    t = 1000.0 * t
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0)
                      * torch.arange(0, half, dtype=torch.float32, device=t.device) / half)
    args = t[:, None].float() * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1).to(t.dtype)


def rope_tables(ids: Tensor, axes_dim: List[int], theta: int) -> Tuple[Tensor, Tensor]:
    """cos and sin tables (B, 1, L, head_dim/2) in float32 for ids (B, L, 3).
    Angles are computed in float64 (pos * theta^(-2k/d) per axis, axes concatenated)."""
    pos = ids.to(torch.float64)
    angles: List[Tensor] = []
    for a in range(len(axes_dim)):
        d = axes_dim[a]
        scale = torch.arange(0, d, 2, dtype=torch.float64, device=ids.device) / d
        omega = 1.0 / (float(theta) ** scale)
        angles.append(pos[:, :, a, None] * omega[None, None, :])
    ang = torch.cat(angles, dim=-1)[:, None]
    return torch.cos(ang).float(), torch.sin(ang).float()


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotates adjacent pairs (x[2k], x[2k+1]) of (B, H, L, D) in float32; returns x's dtype."""
    b, h, l, d = x.shape
    xf = x.float().reshape(b, h, l, d // 2, 2)
    x0 = xf[..., 0]
    x1 = xf[..., 1]
    out = torch.stack([cos * x0 - sin * x1, sin * x0 + cos * x1], dim=-1)
    return out.reshape(b, h, l, d).to(x.dtype)


class MLPEmbedder(nn.Module):
    def __init__(self, in_dim: int, hidden: int, device=None, dtype=None):
        super().__init__()
        fk = factory(device, dtype)
        self.in_layer = nn.Linear(in_dim, hidden, bias=True, **fk)
        self.silu = nn.SiLU()
        self.out_layer = nn.Linear(hidden, hidden, bias=True, **fk)

    def forward(self, x: Tensor) -> Tensor:
        return self.out_layer(self.silu(self.in_layer(x)))


class RMSNorm(nn.Module):
    """x * rsqrt(mean(x^2) + 1e-6) in float32, cast back, times a learned scale."""

    def __init__(self, dim: int, device=None, dtype=None):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(dim, **factory(device, dtype)))

    def forward(self, x: Tensor) -> Tensor:
        xf = x.float()
        rrms = torch.rsqrt(torch.mean(xf * xf, dim=-1, keepdim=True) + 1e-6)
        return (xf * rrms).to(x.dtype) * self.scale


class QKNorm(nn.Module):
    def __init__(self, dim: int, device=None, dtype=None):
        super().__init__()
        self.query_norm = RMSNorm(dim, device, dtype)
        self.key_norm = RMSNorm(dim, device, dtype)

    def forward(self, q: Tensor, k: Tensor, v: Tensor) -> Tuple[Tensor, Tensor]:
        return self.query_norm(q).to(v.dtype), self.key_norm(k).to(v.dtype)


class SelfAttention(nn.Module):
    """Parameters only (qkv, norm, proj): the blocks drive the computation."""

    def __init__(self, dim: int, num_heads: int, device=None, dtype=None):
        super().__init__()
        fk = factory(device, dtype)
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=True, **fk)
        self.norm = QKNorm(dim // num_heads, device, dtype)
        self.proj = nn.Linear(dim, dim, bias=True, **fk)

    def qkv_heads(self, x: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
        """x (B, L, dim) -> normed q, k and v, each (B, H, L, D)."""
        b, l, _ = x.shape
        qkv = self.qkv(x).view(b, l, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        q, k = self.norm(qkv[0], qkv[1], qkv[2])
        return q, k, qkv[2]


class Modulation(nn.Module):
    def __init__(self, dim: int, double: bool, device=None, dtype=None):
        super().__init__()
        self.multiplier = 6 if double else 3
        self.lin = nn.Linear(dim, self.multiplier * dim, bias=True, **factory(device, dtype))

    def forward(self, vec: Tensor) -> List[Tensor]:
        """(shift, scale, gate[, shift2, scale2, gate2]), each (B, 1, dim)."""
        return self.lin(nn.functional.silu(vec))[:, None, :].chunk(self.multiplier, dim=-1)


def rope_attention(q: Tensor, k: Tensor, v: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    return merge_heads(attention(apply_rope(q, cos, sin), apply_rope(k, cos, sin), v, None))


def mlp(hidden: int, mlp_hidden: int, device, dtype) -> nn.Sequential:
    fk = factory(device, dtype)
    return nn.Sequential(nn.Linear(hidden, mlp_hidden, bias=True, **fk),
                         nn.GELU(approximate="tanh"),
                         nn.Linear(mlp_hidden, hidden, bias=True, **fk))


class DoubleStreamBlock(nn.Module):
    def __init__(self, p: FluxParams, device=None, dtype=None):
        super().__init__()
        h = p.hidden_size
        self.img_mod = Modulation(h, True, device, dtype)
        self.img_norm1 = nn.LayerNorm(h, elementwise_affine=False, eps=1e-6)
        self.img_attn = SelfAttention(h, p.num_heads, device, dtype)
        self.img_norm2 = nn.LayerNorm(h, elementwise_affine=False, eps=1e-6)
        self.img_mlp = mlp(h, p.mlp_hidden, device, dtype)
        self.txt_mod = Modulation(h, True, device, dtype)
        self.txt_norm1 = nn.LayerNorm(h, elementwise_affine=False, eps=1e-6)
        self.txt_attn = SelfAttention(h, p.num_heads, device, dtype)
        self.txt_norm2 = nn.LayerNorm(h, elementwise_affine=False, eps=1e-6)
        self.txt_mlp = mlp(h, p.mlp_hidden, device, dtype)

    def forward(self, img: Tensor, txt: Tensor, vec: Tensor, cos: Tensor,
                sin: Tensor) -> Tuple[Tensor, Tensor]:
        im = self.img_mod(vec)
        tm = self.txt_mod(vec)
        img_q, img_k, img_v = self.img_attn.qkv_heads((1 + im[1]) * self.img_norm1(img) + im[0])
        txt_q, txt_k, txt_v = self.txt_attn.qkv_heads((1 + tm[1]) * self.txt_norm1(txt) + tm[0])
        attn = rope_attention(torch.cat((txt_q, img_q), dim=2), torch.cat((txt_k, img_k), dim=2),
                              torch.cat((txt_v, img_v), dim=2), cos, sin)
        lt = txt.shape[1]
        txt_a = attn[:, :lt]
        img_a = attn[:, lt:]
        img = img + im[2] * self.img_attn.proj(img_a)
        img = img + im[5] * self.img_mlp((1 + im[4]) * self.img_norm2(img) + im[3])
        txt = txt + tm[2] * self.txt_attn.proj(txt_a)
        txt = txt + tm[5] * self.txt_mlp((1 + tm[4]) * self.txt_norm2(txt) + tm[3])
        return img, txt


class SingleStreamBlock(nn.Module):
    def __init__(self, p: FluxParams, device=None, dtype=None):
        super().__init__()
        fk = factory(device, dtype)
        h = p.hidden_size
        self.hidden_size = h
        self.mlp_hidden = p.mlp_hidden
        self.num_heads = p.num_heads
        self.linear1 = nn.Linear(h, h * 3 + p.mlp_hidden, bias=True, **fk)
        self.linear2 = nn.Linear(h + p.mlp_hidden, h, bias=True, **fk)
        self.norm = QKNorm(p.head_dim, device, dtype)
        self.pre_norm = nn.LayerNorm(h, elementwise_affine=False, eps=1e-6)
        self.mlp_act = nn.GELU(approximate="tanh")
        self.modulation = Modulation(h, False, device, dtype)

    def forward(self, x: Tensor, vec: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
        m = self.modulation(vec)
        b, l, _ = x.shape
        h1 = self.linear1((1 + m[1]) * self.pre_norm(x) + m[0])
        qkv = h1[:, :, :3 * self.hidden_size].reshape(b, l, 3, self.num_heads, -1)
        qkv = qkv.permute(2, 0, 3, 1, 4)
        q, k = self.norm(qkv[0], qkv[1], qkv[2])
        attn = rope_attention(q, k, qkv[2], cos, sin)
        out = self.linear2(torch.cat((attn, self.mlp_act(h1[:, :, 3 * self.hidden_size:])), 2))
        return x + m[2] * out


class LastLayer(nn.Module):
    def __init__(self, hidden: int, out_channels: int, device=None, dtype=None):
        super().__init__()
        fk = factory(device, dtype)
        self.norm_final = nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(hidden, out_channels, bias=True, **fk)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(),
                                              nn.Linear(hidden, 2 * hidden, bias=True, **fk))

    def forward(self, x: Tensor, vec: Tensor) -> Tensor:
        shift, scale = self.adaLN_modulation(vec).chunk(2, dim=1)
        x = (1 + scale[:, None, :]) * self.norm_final(x) + shift[:, None, :]
        return self.linear(x)


class Flux(nn.Module):
    """The guidance-distilled FLUX transformer (dev / Krea-dev)."""

    def __init__(self, p: FluxParams, device=None, dtype=None):
        super().__init__()
        fk = factory(device, dtype)
        h = p.hidden_size
        self.axes_dim: List[int] = list(p.axes_dim)
        self.theta = p.theta
        self.img_in = nn.Linear(p.in_channels, h, bias=True, **fk)
        self.time_in = MLPEmbedder(256, h, device, dtype)
        self.vector_in = MLPEmbedder(p.vec_in_dim, h, device, dtype)
        self.guidance_in = MLPEmbedder(256, h, device, dtype)
        self.txt_in = nn.Linear(p.context_in_dim, h, bias=True, **fk)
        self.double_blocks = nn.ModuleList([DoubleStreamBlock(p, device, dtype)
                                            for _ in range(p.depth)])
        self.single_blocks = nn.ModuleList([SingleStreamBlock(p, device, dtype)
                                            for _ in range(p.depth_single_blocks)])
        self.final_layer = LastLayer(h, p.in_channels, device, dtype)

    # The placement `stream` (docs/operations.md) drives the blocks one at a time from the
    # C side: embed, then each of double_blocks.N / single_blocks.N through its scripted
    # forward (the text and image streams joined by torch.cat((txt, img), 1) in between),
    # then final.  These two methods repeat forward's first and last lines, op for op, so
    # that the streamed result is bit-identical to forward's; forward itself is unchanged.
    @torch.jit.export
    def embed(self, img: Tensor, img_ids: Tensor, txt: Tensor, txt_ids: Tensor,
              timesteps: Tensor, y: Tensor,
              guidance: Tensor) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        """forward's inputs -> (img, txt, vec, cos, sin) as the first block takes them."""
        img = self.img_in(img)
        vec = self.time_in(timestep_embedding(timesteps, 256))
        vec = vec + self.guidance_in(timestep_embedding(guidance, 256))
        vec = vec + self.vector_in(y)
        txt = self.txt_in(txt)
        cos, sin = rope_tables(torch.cat((txt_ids, img_ids), dim=1), self.axes_dim, self.theta)
        return img, txt, vec, cos, sin

    @torch.jit.export
    def final(self, x: Tensor, vec: Tensor, txt_len: int) -> Tensor:
        """The joint sequence after the last single block -> the velocity of the image tokens."""
        return self.final_layer(x[:, txt_len:], vec)

    def forward(self, img: Tensor, img_ids: Tensor, txt: Tensor, txt_ids: Tensor,
                timesteps: Tensor, y: Tensor, guidance: Tensor) -> Tensor:
        img = self.img_in(img)
        vec = self.time_in(timestep_embedding(timesteps, 256))
        vec = vec + self.guidance_in(timestep_embedding(guidance, 256))
        vec = vec + self.vector_in(y)
        txt = self.txt_in(txt)
        cos, sin = rope_tables(torch.cat((txt_ids, img_ids), dim=1), self.axes_dim, self.theta)
        for block in self.double_blocks:
            img, txt = block(img, txt, vec, cos, sin)
        lt = txt.shape[1]
        x = torch.cat((txt, img), dim=1)
        for block in self.single_blocks:
            x = block(x, vec, cos, sin)
        return self.final_layer(x[:, lt:], vec)
