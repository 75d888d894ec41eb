"""The CLIP-L text encoder (Hugging Face CLIPTextModel parameter names).

Forward contract (clip_text.pt): input_ids (B, 77) int64 -> pooled output (B, hidden), the
final-LayerNorm state at the first position holding the largest id (the eos, as in the
reference: argmax over the ids). Causal mask, quick_gelu, no attention mask for padding.
"""

import torch
from torch import Tensor, nn

from .layers import attention, factory, merge_heads, split_heads


class CLIPParams:
    FIELDS = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
              "num_attention_heads", "max_position_embeddings", "layer_norm_eps")

    def __init__(self, vocab_size=49408, hidden_size=768, intermediate_size=3072,
                 num_hidden_layers=12, num_attention_heads=12, max_position_embeddings=77,
                 layer_norm_eps=1e-5):
        self.vocab_size = int(vocab_size)
        self.hidden_size = int(hidden_size)
        self.intermediate_size = int(intermediate_size)
        self.num_hidden_layers = int(num_hidden_layers)
        self.num_attention_heads = int(num_attention_heads)
        self.max_position_embeddings = int(max_position_embeddings)
        self.layer_norm_eps = float(layer_norm_eps)
        if min(self.vocab_size, self.hidden_size, self.intermediate_size,
               self.num_attention_heads, self.max_position_embeddings) <= 0:
            raise ValueError("clip: dimensions must be positive")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError("clip: hidden_size is not a multiple of num_attention_heads")

    def to_dict(self):
        return {f: getattr(self, f) for f in self.FIELDS}

    @classmethod
    def from_dict(cls, d):
        return cls(**{f: d[f] for f in cls.FIELDS if f in d})


class CLIPAttention(nn.Module):
    def __init__(self, p: CLIPParams, device=None, dtype=None):
        super().__init__()
        fk = factory(device, dtype)
        d = p.hidden_size
        self.heads = p.num_attention_heads
        self.q_proj = nn.Linear(d, d, **fk)
        self.k_proj = nn.Linear(d, d, **fk)
        self.v_proj = nn.Linear(d, d, **fk)
        self.out_proj = nn.Linear(d, d, **fk)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        q = split_heads(self.q_proj(x), self.heads)
        k = split_heads(self.k_proj(x), self.heads)
        v = split_heads(self.v_proj(x), self.heads)
        return self.out_proj(merge_heads(attention(q, k, v, mask)))


class CLIPMLP(nn.Module):
    def __init__(self, p: CLIPParams, device=None, dtype=None):
        super().__init__()
        fk = factory(device, dtype)
        self.fc1 = nn.Linear(p.hidden_size, p.intermediate_size, **fk)
        self.fc2 = nn.Linear(p.intermediate_size, p.hidden_size, **fk)

    def forward(self, x: Tensor) -> Tensor:
        h = self.fc1(x)
        return self.fc2(h * torch.sigmoid(1.702 * h))


class CLIPLayer(nn.Module):
    def __init__(self, p: CLIPParams, device=None, dtype=None):
        super().__init__()
        fk = factory(device, dtype)
        self.self_attn = CLIPAttention(p, device, dtype)
        self.layer_norm1 = nn.LayerNorm(p.hidden_size, eps=p.layer_norm_eps, **fk)
        self.mlp = CLIPMLP(p, device, dtype)
        self.layer_norm2 = nn.LayerNorm(p.hidden_size, eps=p.layer_norm_eps, **fk)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        x = x + self.self_attn(self.layer_norm1(x), mask)
        return x + self.mlp(self.layer_norm2(x))


class CLIPEmbeddings(nn.Module):
    def __init__(self, p: CLIPParams, device=None, dtype=None):
        super().__init__()
        fk = factory(device, dtype)
        self.token_embedding = nn.Embedding(p.vocab_size, p.hidden_size, **fk)
        self.position_embedding = nn.Embedding(p.max_position_embeddings, p.hidden_size, **fk)

    def forward(self, ids: Tensor) -> Tensor:
        return self.token_embedding(ids) + self.position_embedding.weight[:ids.shape[1]][None]


class CLIPEncoder(nn.Module):
    def __init__(self, p: CLIPParams, device=None, dtype=None):
        super().__init__()
        self.layers = nn.ModuleList([CLIPLayer(p, device, dtype)
                                     for _ in range(p.num_hidden_layers)])

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        for layer in self.layers:
            x = layer(x, mask)
        return x


class CLIPTextTransformer(nn.Module):
    def __init__(self, p: CLIPParams, device=None, dtype=None):
        super().__init__()
        self.embeddings = CLIPEmbeddings(p, device, dtype)
        self.encoder = CLIPEncoder(p, device, dtype)
        self.final_layer_norm = nn.LayerNorm(p.hidden_size, eps=p.layer_norm_eps,
                                             **factory(device, dtype))

    def forward(self, input_ids: Tensor) -> Tensor:
        x = self.embeddings(input_ids)
        n = input_ids.shape[1]
        mask = torch.full((n, n), float("-inf"), dtype=x.dtype, device=x.device).triu(1)
        x = self.final_layer_norm(self.encoder(x, mask))
        eos = input_ids.argmax(dim=-1)
        return x[torch.arange(x.shape[0], device=x.device), eos]


class CLIPTextModel(nn.Module):
    def __init__(self, p: CLIPParams, device=None, dtype=None):
        super().__init__()
        self.text_model = CLIPTextTransformer(p, device, dtype)

    def forward(self, input_ids: Tensor) -> Tensor:
        return self.text_model(input_ids)
