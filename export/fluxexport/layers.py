"""Building blocks shared by the FLUX modules. Everything here is TorchScript-scriptable."""

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

HAS_SDPA = hasattr(F, "scaled_dot_product_attention")


def _attention_explicit(q: Tensor, k: Tensor, v: Tensor, mask: Optional[Tensor]) -> Tensor:
    # softmax(q k^T / sqrt(d) + mask) v, softmax in fp32; the same numbers as SDPA's math
    # path within fp32 rounding.
    scale = 1.0 / math.sqrt(float(q.size(-1)))
    scores = torch.matmul(q, k.transpose(-2, -1)) * scale
    if mask is not None:
        scores = scores + mask
    return torch.matmul(torch.softmax(scores.float(), dim=-1).to(v.dtype), v)


if HAS_SDPA:
    def attention(q: Tensor, k: Tensor, v: Tensor, mask: Optional[Tensor]) -> Tensor:
        """Scaled dot-product attention over (B, H, L, D); mask is additive (L, L) or None."""
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
else:
    def attention(q: Tensor, k: Tensor, v: Tensor, mask: Optional[Tensor]) -> Tensor:
        """Scaled dot-product attention over (B, H, L, D); mask is additive (L, L) or None."""
        return _attention_explicit(q, k, v, mask)


def split_heads(x: Tensor, heads: int) -> Tensor:
    """(B, L, H*D) -> (B, H, L, D)."""
    b, l, hd = x.shape
    return x.view(b, l, heads, hd // heads).transpose(1, 2)


def merge_heads(x: Tensor) -> Tensor:
    """(B, H, L, D) -> (B, L, H*D)."""
    b, h, l, d = x.shape
    return x.transpose(1, 2).reshape(b, l, h * d)


def factory(device, dtype):
    return {"device": device, "dtype": dtype}
