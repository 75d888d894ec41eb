"""The FLUX autoencoder's decoder, with diffusers parameter names
(``decoder.up_blocks.k`` runs k-th, i.e. BFL's ``decoder.up.{n-1-k}``); the checkpoint readers
map BFL ``ae.safetensors`` names onto these.

Forward contract (ae_decoder.pt): z (B, z_channels, h, w) in the model dtype, the raw latents as
the sampler leaves them; the module applies z / scale_factor + shift_factor itself, then decodes
to (B, 3, 8h, 8w) RGB in roughly [-1, 1] (not clamped).
"""

from typing import List

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .layers import attention, factory


class AEParams:
    """Decoder dimensions. Defaults are the FLUX.1 AE."""

    FIELDS = ("ch", "out_ch", "ch_mult", "num_res_blocks", "z_channels", "num_groups",
              "scale_factor", "shift_factor")

    def __init__(self, ch=128, out_ch=3, ch_mult=(1, 2, 4, 4), num_res_blocks=2, z_channels=16,
                 num_groups=32, scale_factor=0.3611, shift_factor=0.1159):
        self.ch = int(ch)
        self.out_ch = int(out_ch)
        self.ch_mult = [int(c) for c in ch_mult]
        self.num_res_blocks = int(num_res_blocks)
        self.z_channels = int(z_channels)
        self.num_groups = int(num_groups)
        self.scale_factor = float(scale_factor)
        self.shift_factor = float(shift_factor)
        if not self.ch_mult or any(c <= 0 for c in self.ch_mult) or self.ch <= 0:
            raise ValueError(f"ae: bad ch {self.ch} / ch_mult {self.ch_mult}")
        if self.num_res_blocks < 0 or self.z_channels <= 0 or self.out_ch <= 0:
            raise ValueError("ae: bad num_res_blocks, z_channels or out_ch")
        for c in self.ch_mult:
            if (self.ch * c) % self.num_groups:
                raise ValueError(f"ae: {self.ch * c} channels do not split into "
                                 f"{self.num_groups} groups")
        if self.scale_factor == 0:
            raise ValueError("ae: scale_factor must not be 0")

    @property
    def downsample(self):
        return 2 ** (len(self.ch_mult) - 1)

    def to_dict(self):
        return {f: getattr(self, f) for f in self.FIELDS}

    @classmethod
    def from_dict(cls, d):
        return cls(**{f: d[f] for f in cls.FIELDS if f in d})


def swish(x: Tensor) -> Tensor:
    return x * torch.sigmoid(x)


class ResnetBlock(nn.Module):
    def __init__(self, cin: int, cout: int, groups: int, device=None, dtype=None):
        super().__init__()
        fk = factory(device, dtype)
        self.norm1 = nn.GroupNorm(groups, cin, eps=1e-6, affine=True, **fk)
        self.conv1 = nn.Conv2d(cin, cout, 3, 1, 1, **fk)
        self.norm2 = nn.GroupNorm(groups, cout, eps=1e-6, affine=True, **fk)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, **fk)
        self.conv_shortcut = nn.Conv2d(cin, cout, 1, 1, 0, **fk) if cin != cout else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv1(swish(self.norm1(x)))
        h = self.conv2(swish(self.norm2(h)))
        return self.conv_shortcut(x) + h


class AttnBlock(nn.Module):
    """Single-head self-attention over the h*w positions (1x1 convs as Linear layers)."""

    def __init__(self, c: int, groups: int, device=None, dtype=None):
        super().__init__()
        fk = factory(device, dtype)
        self.group_norm = nn.GroupNorm(groups, c, eps=1e-6, affine=True, **fk)
        self.to_q = nn.Linear(c, c, **fk)
        self.to_k = nn.Linear(c, c, **fk)
        self.to_v = nn.Linear(c, c, **fk)
        self.to_out = nn.ModuleList([nn.Linear(c, c, **fk)])

    def forward(self, x: Tensor) -> Tensor:
        h = self.group_norm(x).flatten(2).transpose(1, 2)  # (B, HW, C)
        q = self.to_q(h)[:, None]
        k = self.to_k(h)[:, None]
        v = self.to_v(h)[:, None]
        o = attention(q, k, v, None)[:, 0]
        for proj in self.to_out:
            o = proj(o)
        return x + o.transpose(1, 2).reshape_as(x)


class Upsample(nn.Module):
    def __init__(self, c: int, device=None, dtype=None):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, 1, 1, **factory(device, dtype))

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class MidBlock(nn.Module):
    def __init__(self, c: int, groups: int, device=None, dtype=None):
        super().__init__()
        self.resnets = nn.ModuleList([ResnetBlock(c, c, groups, device, dtype),
                                      ResnetBlock(c, c, groups, device, dtype)])
        self.attentions = nn.ModuleList([AttnBlock(c, groups, device, dtype)])

    def forward(self, x: Tensor) -> Tensor:
        x = self.resnets[0](x)
        for attn in self.attentions:
            x = attn(x)
        return self.resnets[1](x)


class UpBlock(nn.Module):
    def __init__(self, cin: int, cout: int, n: int, groups: int, upsample: bool, device=None,
                 dtype=None):
        super().__init__()
        self.resnets = nn.ModuleList([ResnetBlock(cin if j == 0 else cout, cout, groups, device,
                                                  dtype) for j in range(n)])
        self.upsamplers = nn.ModuleList([Upsample(cout, device, dtype)] if upsample else [])

    def forward(self, x: Tensor) -> Tensor:
        for r in self.resnets:
            x = r(x)
        for u in self.upsamplers:
            x = u(x)
        return x


class Decoder(nn.Module):
    def __init__(self, p: AEParams, device=None, dtype=None):
        super().__init__()
        fk = factory(device, dtype)
        chans = [p.ch * m for m in p.ch_mult]
        c = chans[-1]
        self.conv_in = nn.Conv2d(p.z_channels, c, 3, 1, 1, **fk)
        self.mid_block = MidBlock(c, p.num_groups, device, dtype)
        ups: List[nn.Module] = []
        for level in reversed(range(len(chans))):
            ups.append(UpBlock(c, chans[level], p.num_res_blocks + 1, p.num_groups, level != 0,
                               device, dtype))
            c = chans[level]
        self.up_blocks = nn.ModuleList(ups)
        self.conv_norm_out = nn.GroupNorm(p.num_groups, c, eps=1e-6, affine=True, **fk)
        self.conv_out = nn.Conv2d(c, p.out_ch, 3, 1, 1, **fk)

    def forward(self, z: Tensor) -> Tensor:
        h = self.mid_block(self.conv_in(z))
        for up in self.up_blocks:
            h = up(h)
        return self.conv_out(swish(self.conv_norm_out(h)))


class AEDecoder(nn.Module):
    """Latents -> RGB: z / scale_factor + shift_factor, then the decoder."""

    def __init__(self, p: AEParams, device=None, dtype=None):
        super().__init__()
        self.scale_factor = p.scale_factor
        self.shift_factor = p.shift_factor
        self.decoder = Decoder(p, device, dtype)

    def forward(self, z: Tensor) -> Tensor:
        return self.decoder(z / self.scale_factor + self.shift_factor)
