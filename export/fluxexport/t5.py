"""The T5 v1.1 encoder (Hugging Face T5EncoderModel parameter names).

Forward contract (t5_encoder.pt): input_ids (B, L) int64 -> last hidden state (B, L, d_model)
in the model dtype. No attention mask (pads are attended, as in the reference).
"""

import math

import torch
from torch import Tensor, nn

from .layers import factory, merge_heads, split_heads


class T5Params:
    FIELDS = ("vocab_size", "d_model", "d_kv", "num_heads", "d_ff", "num_layers",
              "relative_attention_num_buckets", "relative_attention_max_distance",
              "layer_norm_epsilon")

    def __init__(self, vocab_size=32128, d_model=4096, d_kv=64, num_heads=64, d_ff=10240,
                 num_layers=24, relative_attention_num_buckets=32,
                 relative_attention_max_distance=128, layer_norm_epsilon=1e-6):
        self.vocab_size = int(vocab_size)
        self.d_model = int(d_model)
        self.d_kv = int(d_kv)
        self.num_heads = int(num_heads)
        self.d_ff = int(d_ff)
        self.num_layers = int(num_layers)
        self.relative_attention_num_buckets = int(relative_attention_num_buckets)
        self.relative_attention_max_distance = int(relative_attention_max_distance)
        self.layer_norm_epsilon = float(layer_norm_epsilon)
        if min(self.vocab_size, self.d_model, self.d_kv, self.num_heads, self.d_ff,
               self.num_layers) <= 0:
            raise ValueError("t5: dimensions must be positive")
        if self.relative_attention_num_buckets < 4 or self.relative_attention_num_buckets % 2:
            raise ValueError("t5: relative_attention_num_buckets must be even and >= 4")

    def to_dict(self):
        return {f: getattr(self, f) for f in self.FIELDS}

    @classmethod
    def from_dict(cls, d):
        return cls(**{f: d[f] for f in cls.FIELDS if f in d})


class T5LayerNorm(nn.Module):
    """RMSNorm without mean or bias: variance in fp32, result cast to the weight dtype."""

    def __init__(self, d: int, eps: float, device=None, dtype=None):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(d, **factory(device, dtype)))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        var = x.float().pow(2).mean(-1, keepdim=True)
        x = x * torch.rsqrt(var + self.eps)
        return self.weight * x.to(self.weight.dtype)


def relative_buckets(n: int, num_buckets: int, max_distance: int, device: torch.device) -> Tensor:
    """Bidirectional bucket index (n, n) of (key position - query position)."""
    pos = torch.arange(n, dtype=torch.long, device=device)
    rel = pos[None, :] - pos[:, None]
    half = num_buckets // 2
    buckets = (rel > 0).to(torch.long) * half
    rel = torch.abs(rel)
    max_exact = half // 2
    large = max_exact + (torch.log(rel.float() / max_exact) / math.log(max_distance / max_exact)
                         * (half - max_exact)).to(torch.long)
    large = torch.clamp(large, max=half - 1)
    return buckets + torch.where(rel < max_exact, rel, large)


class T5Attention(nn.Module):
    def __init__(self, p: T5Params, has_bias: bool, device=None, dtype=None):
        super().__init__()
        fk = factory(device, dtype)
        inner = p.num_heads * p.d_kv
        self.heads = p.num_heads
        self.q = nn.Linear(p.d_model, inner, bias=False, **fk)
        self.k = nn.Linear(p.d_model, inner, bias=False, **fk)
        self.v = nn.Linear(p.d_model, inner, bias=False, **fk)
        self.o = nn.Linear(inner, p.d_model, bias=False, **fk)
        if has_bias:
            self.relative_attention_bias = nn.Embedding(p.relative_attention_num_buckets,
                                                        p.num_heads, **fk)

    def forward(self, x: Tensor, bias: Tensor) -> Tensor:
        q = split_heads(self.q(x), self.heads)
        k = split_heads(self.k(x), self.heads)
        v = split_heads(self.v(x), self.heads)
        scores = torch.matmul(q, k.transpose(-2, -1)) + bias  # no 1/sqrt(d) in T5
        w = torch.softmax(scores.float(), dim=-1).to(scores.dtype)
        return self.o(merge_heads(torch.matmul(w, v)))


class T5LayerSelfAttention(nn.Module):
    def __init__(self, p: T5Params, has_bias: bool, device=None, dtype=None):
        super().__init__()
        self.SelfAttention = T5Attention(p, has_bias, device, dtype)
        self.layer_norm = T5LayerNorm(p.d_model, p.layer_norm_epsilon, device, dtype)

    def forward(self, x: Tensor, bias: Tensor) -> Tensor:
        return x + self.SelfAttention(self.layer_norm(x), bias)


class T5DenseGatedGelu(nn.Module):
    def __init__(self, p: T5Params, device=None, dtype=None):
        super().__init__()
        fk = factory(device, dtype)
        self.wi_0 = nn.Linear(p.d_model, p.d_ff, bias=False, **fk)
        self.wi_1 = nn.Linear(p.d_model, p.d_ff, bias=False, **fk)
        self.wo = nn.Linear(p.d_ff, p.d_model, bias=False, **fk)
        self.act = nn.GELU(approximate="tanh")

    def forward(self, x: Tensor) -> Tensor:
        # h is in x's dtype already (all weights share it); wo may be a quantised module
        # without a float weight, so its dtype is not asked for
        return self.wo(self.act(self.wi_0(x)) * self.wi_1(x))


class T5LayerFF(nn.Module):
    def __init__(self, p: T5Params, device=None, dtype=None):
        super().__init__()
        self.DenseReluDense = T5DenseGatedGelu(p, device, dtype)
        self.layer_norm = T5LayerNorm(p.d_model, p.layer_norm_epsilon, device, dtype)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.DenseReluDense(self.layer_norm(x))


class T5Block(nn.Module):
    def __init__(self, p: T5Params, has_bias: bool, device=None, dtype=None):
        super().__init__()
        self.layer = nn.ModuleList([T5LayerSelfAttention(p, has_bias, device, dtype),
                                    T5LayerFF(p, device, dtype)])

    def forward(self, x: Tensor, bias: Tensor) -> Tensor:
        x = self.layer[0](x, bias)
        return self.layer[1](x)


class T5Stack(nn.Module):
    def __init__(self, p: T5Params, device=None, dtype=None):
        super().__init__()
        self.num_buckets = p.relative_attention_num_buckets
        self.max_distance = p.relative_attention_max_distance
        self.block = nn.ModuleList([T5Block(p, i == 0, device, dtype)
                                    for i in range(p.num_layers)])
        self.final_layer_norm = T5LayerNorm(p.d_model, p.layer_norm_epsilon, device, dtype)

    def forward(self, x: Tensor, bias_table: Tensor) -> Tensor:
        n = x.shape[1]
        buckets = relative_buckets(n, self.num_buckets, self.max_distance, x.device)
        bias = bias_table[buckets].permute(2, 0, 1)[None].to(x.dtype)  # (1, H, n, n)
        for blk in self.block:
            x = blk(x, bias)
        return self.final_layer_norm(x)


class T5EncoderModel(nn.Module):
    def __init__(self, p: T5Params, device=None, dtype=None):
        super().__init__()
        self.shared = nn.Embedding(p.vocab_size, p.d_model, **factory(device, dtype))
        self.encoder = T5Stack(p, device, dtype)

    def forward(self, input_ids: Tensor) -> Tensor:
        table = self.encoder.block[0].layer[0].SelfAttention.relative_attention_bias.weight
        return self.encoder(self.shared(input_ids), table)
