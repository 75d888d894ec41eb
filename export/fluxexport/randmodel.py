"""A model dir with random weights at any dimensions, written straight from the modules (no
checkpoint files): for benchmarks at the real FLUX.1 sizes, where real weights cannot be had.

    python3 -m fluxexport random-model --out DIR --tokenizers MODEL_DIR
        [--dims full|medium|tiny] [--depth N] [--single N] [--t5-layers N] [--device cuda]
        [--dtype bf16] [--weights FORMAT] [--manifest-only] [--seed 0] [--reuse MODEL_DIR]

--dims full is FLUX.1-dev / Krea-dev (transformer 3072 wide, 19 + 38 blocks, T5-XXL, CLIP-L,
the 16-channel AE); --depth / --single (and --t5-layers) give fewer blocks (label results so).
--dims medium is a 512-wide transformer (4 heads of 128, the real RoPE axes) with the tiny
encoders and AE. --weights quantises as `fluxexport export --weights` does. --manifest-only
writes no module files, only manifest.json (and the tokenizers) with the sizes an export would
record: what `fluxgen --plan` needs for the full-size layout on a machine that cannot hold it.
The tokenizer files come from an existing model dir (e.g. build/models/tiny): their ids stay
inside the real vocabularies. The weights are N(0, 1/fan_in) matrices, unit norm scales and
small biases, drawn on --device directly in --dtype; the images are noise, the compute is the
real one. The modules are not hashed (sha256 null in the manifest: random weights, and hashing
34 GB takes a minute). --reuse links the modules of an earlier random model dir whose
parameters, dtype, weight format and seed match (the T5-XXL of a 2 + 2 block model serves a
19 + 38 one).
"""

import argparse
import json
import os
import sys

import torch

from . import exporter, quant
from .autoencoder import AEDecoder, AEParams
from .clip import CLIPParams, CLIPTextModel
from .flux import Flux, FluxParams
from .stio import CheckpointError
from .t5 import T5EncoderModel, T5Params
from .tiny import tiny_params


class RandomCheckpoint:
    """The Checkpoint interface (params, tokenizer dirs, source_files, load) over random weights."""

    layout = "random"

    def __init__(self, params, tokenizer_root, seed):
        self.flux_params, self.ae_params, self.clip_params, self.t5_params = params
        self.tokenizer_dir = f"{tokenizer_root}/tokenizer"
        self.tokenizer2_dir = f"{tokenizer_root}/tokenizer_2"
        self.seed = seed

    def source_files(self):
        return []

    def meta(self, part, dtype=torch.float32):
        """The part's module on the meta device (shapes, no storage)."""
        cls, p = {"transformer": (Flux, self.flux_params), "ae": (AEDecoder, self.ae_params),
                  "clip": (CLIPTextModel, self.clip_params),
                  "t5": (T5EncoderModel, self.t5_params)}[part]
        return cls(p, device="meta", dtype=dtype)

    def load(self, part, dtype=torch.float32, device="cpu", progress=None):
        m = self.meta(part, dtype)
        part_no = ("clip", "t5", "transformer", "ae").index(part)
        g = torch.Generator(device=device).manual_seed(self.seed * 10 + part_no)
        names = sorted(n for n, _ in m.named_parameters())
        for i, name in enumerate(names):
            shape = dict(m.named_parameters())[name].shape
            t = torch.empty(shape, dtype=dtype, device=device)
            if name.endswith("bias"):
                t.normal_(0.0, 0.02, generator=g)
            elif len(shape) == 1:
                t.fill_(1.0)
            else:
                fan_in = 1
                for d in shape[1:]:
                    fan_in *= d
                std = 1.0 if ("embedding" in name or name.startswith("shared")
                              or "relative_attention" in name) else fan_in ** -0.5
                t.normal_(0.0, std, generator=g)
            owner, _, leaf = name.rpartition(".")
            setattr(m.get_submodule(owner) if owner else m, leaf,
                    torch.nn.Parameter(t, requires_grad=False))
            if progress and (i + 1) % 200 == 0:
                progress(i + 1, len(names))
        return m.eval()


def full_params(depth, single, t5_layers=24):
    return (FluxParams(depth=depth, depth_single_blocks=single), AEParams(), CLIPParams(),
            T5Params(num_layers=t5_layers))


MANIFEST_KEYS = {"clip": "clip_text", "t5": "t5_encoder", "transformer": "transformer",
                 "ae": "ae_decoder"}


def reusable(ck, dtype_name, device, root, weights=None):
    """The parts of the random model dir root that ck would write again bit for bit: same
    layout, seed, dtype, weight format, device (its generator draws the weights) and
    parameters.  Returns {part: (path, manifest entry)}."""
    try:
        with open(os.path.join(root, "manifest.json")) as f:
            man = json.load(f)
    except (OSError, ValueError):
        return {}
    if man.get("layout") != "random" or man.get("dtype") != dtype_name or \
            man.get("random_seed") != ck.seed or man.get("device") != device or \
            man.get("weights", dtype_name) != (weights or dtype_name) or \
            man.get("manifest_only"):
        return {}
    mine = {"clip": ck.clip_params, "t5": ck.t5_params, "transformer": ck.flux_params,
            "ae": ck.ae_params}
    out = {}
    for part, key in MANIFEST_KEYS.items():
        entry = man.get("modules", {}).get(key)
        if not entry or entry.get("params") != json.loads(json.dumps(mine[part].to_dict())):
            continue
        path = os.path.join(root, entry["file"])
        if os.path.isfile(path) and os.path.getsize(path) == entry.get("bytes"):
            # everything the export recorded (sizes, format, memory figures) but what the
            # manifest writes itself
            out[part] = (path, {k: v for k, v in entry.items()
                                if k not in ("file", "params", "inputs", "output",
                                             "applies_scale_shift")})
    return out


def medium_params(clip_vocab, depth, single):
    """A 512-wide transformer (4 heads of 128, RoPE axes 16/56/56) over the tiny encoders."""
    fp, ae, clip, t5 = tiny_params(clip_vocab, 320, depth, single)
    return (FluxParams(in_channels=64, vec_in_dim=fp.vec_in_dim, context_in_dim=fp.context_in_dim,
                       hidden_size=512, mlp_hidden=2048, num_heads=4, depth=depth,
                       depth_single_blocks=single), ae, clip, t5)


def main(cmd, argv):
    ap = argparse.ArgumentParser(prog=f"fluxexport {cmd}")
    ap.add_argument("--out", required=True)
    ap.add_argument("--tokenizers", required=True,
                    help="a model dir (or checkpoint) holding tokenizer/ and tokenizer_2/")
    ap.add_argument("--dims", choices=("full", "medium", "tiny"), default="full")
    ap.add_argument("--depth", type=int, default=19)
    ap.add_argument("--single", type=int, default=38)
    ap.add_argument("--t5-layers", type=int, default=24,
                    help="T5 encoder layers with --dims full (24; fewer only to time the writing)")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--dtype", choices=sorted(exporter.DTYPES), default="bf16")
    ap.add_argument("--weights", choices=quant.FORMATS, default=None,
                    help="storage of the block linear layers (as fluxexport export)")
    ap.add_argument("--manifest-only", action="store_true",
                    help="write only manifest.json with the sizes (no module files)")
    ap.add_argument("--attention", choices=("sdpa", "explicit"), default=None,
                    help="with --manifest-only: the target torch's attention path (default: "
                         "this torch's)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--name", default=None)
    ap.add_argument("--force", action="store_true")
    ap.add_argument("--quiet", action="store_true")
    ap.add_argument("--reuse", metavar="MODEL_DIR",
                    help="an earlier random model dir: link its modules that would be the same")
    args = ap.parse_args(argv)
    progress = exporter.Progress(args.quiet)
    try:
        # a manifest-only dir records the target device without needing one here
        device = args.device if args.manifest_only else exporter.parse_device(args.device)
        if args.dims == "full":
            params = full_params(args.depth, args.single, args.t5_layers)
        else:
            with open(os.path.join(args.tokenizers, "tokenizer", "vocab.json")) as f:
                clip_vocab = len(json.load(f))
            if args.dims == "tiny":
                params = tiny_params(clip_vocab, 320, args.depth, args.single)
            else:
                params = medium_params(clip_vocab, args.depth, args.single)
        ck = RandomCheckpoint(params, args.tokenizers, args.seed)
        name = args.name or (f"flux-random-{args.dims}-{args.depth}+{args.single}")
        reuse = reusable(ck, args.dtype, device, args.reuse, args.weights) if args.reuse \
            else None
        # random_seed: so that a later --reuse knows the weights are the same
        exporter.write_model_dir(ck, args.out, args.tokenizers, name, args.dtype, device,
                                 args.force, False, progress, args.weights, args.manifest_only,
                                 args.attention, hash_files=False, reuse=reuse,
                                 extra={"random_seed": args.seed})
    except exporter.WeightsError as e:
        print(f"fluxexport: error: {e}", file=sys.stderr)
        return 2
    except (CheckpointError, OSError, RuntimeError, ValueError) as e:
        print(f"fluxexport: error: {e}", file=sys.stderr)
        return 1
    return 0
