"""Shared fixtures for the export tests: tiny checkpoints and model dirs in temp folders."""

import os
import subprocess
import sys
import tempfile

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
EXPORT = os.path.join(ROOT, "export")
if EXPORT not in sys.path:
    sys.path.insert(0, EXPORT)

from fluxexport import sampling, stio, tiny  # noqa: E402

_CACHE = {}


def tiny_checkpoints(seed=0, dtype="fp32"):
    """(root, params): root/bfl and root/diffusers written once per process."""
    key = ("tiny", seed, dtype)
    if key not in _CACHE:
        tmp = tempfile.mkdtemp(prefix="fluxtest-")
        params = tiny.write_tiny(tmp, seed=seed, dtype=dtype)
        _CACHE[key] = (tmp, params)
    return _CACHE[key]


def run_cli(*args, env=None):
    """Runs python3 -m fluxexport ARGS; returns CompletedProcess with text output."""
    e = dict(os.environ)
    e["PYTHONPATH"] = EXPORT
    e.update(env or {})
    return subprocess.run([sys.executable, "-m", "fluxexport", *args], capture_output=True,
                          text=True, env=e)


def exported(layout="bfl", seed=0, dtype="fp32"):
    """Path of a model dir exported from the tiny checkpoint of the given layout."""
    key = ("model", layout, seed, dtype)
    if key not in _CACHE:
        root, _ = tiny_checkpoints(seed)
        out = os.path.join(root, f"model-{layout}-{dtype}")
        res = run_cli("export", "--source", os.path.join(root, layout), "-o", out, "--quiet",
                      "--dtype", dtype)
        if res.returncode != 0:
            raise RuntimeError(f"export failed: {res.stderr}")
        _CACHE[key] = out
    return _CACHE[key]


def transformer_inputs(params, width, height, txt_len=16, seed=1, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    n = (width // 16) * (height // 16)
    return (torch.randn(1, n, params.in_channels, generator=g).to(dtype),
            sampling.img_ids(width, height),
            torch.randn(1, txt_len, params.context_in_dim, generator=g).to(dtype),
            sampling.txt_ids(txt_len),
            torch.tensor([0.7]).to(dtype),
            torch.randn(1, params.vec_in_dim, generator=g).to(dtype),
            torch.tensor([3.5]).to(dtype))


def token_ids(clip_vocab, t5_vocab, seed=2, n_clip=9, n_t5=11):
    """Plausible token ids: CLIP bos ... eos then eos padding to 77; T5 pieces, eos, 0 pad."""
    g = torch.Generator().manual_seed(seed)
    bos, eos = clip_vocab - 2, clip_vocab - 1
    body = torch.randint(0, clip_vocab - 2, (n_clip,), generator=g).tolist()
    clip = [bos] + body + [eos] * (77 - 1 - n_clip)
    t5 = torch.randint(3, t5_vocab, (n_t5,), generator=g).tolist() + [1]
    return clip, t5 + [0] * (512 - len(t5))


def max_abs(a, b):
    return (a.float() - b.float()).abs().max().item()


def rewrite_safetensors(path, edit):
    """Reads a safetensors file, lets edit(dict name -> tensor) change it, writes it back."""
    f = stio.SafeTensorsFile(path)
    tensors = {k: f.get(k).clone() for k in f.keys()}
    del f
    edit(tensors)
    stio.write(path, tensors)
