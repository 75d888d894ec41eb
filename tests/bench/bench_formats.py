"""Accuracy of the weight formats against fp32 weights (not a test: `make bench-formats`).

1. One real-width linear layer (3072 x 3072) with gaussian N(0, 1/3072) and heavy-tailed
   (Student-t, 3 degrees of freedom, same scale) weights: relative RMS error of the weight and
   of the output for a gaussian input batch.
2. Whole pipelines, fp32 compute, 8 steps, seed 0, at 256 x 256 and 512 x 512: the tiny model
   and a medium random model (a 512-wide transformer, 8 double + 16 single blocks, with the
   tiny encoders and AE): final-latent relative RMS and mean |pixel difference| (0..255)
   against the same pipeline with fp32 weights. "bf16" rounds the same layers' weights to
   bf16 (what plain bf16 storage loses) so that every row isolates the weight format.

    python3 tests/bench/bench_formats.py --tiny-src build/tiny-src [--json OUT]
        [--models tiny,medium] [--sizes 256,512] [--formats bf16,int8,int4] [--no-layer]

(On a shared 2-core CPU the medium model takes about 10 CPU-minutes per run at 256^2 and
more than twice that at 512^2; --models/--sizes/--formats run a part.)
"""

import argparse
import copy
import json
import os
import sys
import time

import numpy as np
import torch
from torch import nn

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", "export"))

from fluxexport import quant  # noqa: E402
from fluxexport.checkpoint import open_checkpoint  # noqa: E402
from fluxexport.randmodel import RandomCheckpoint, medium_params  # noqa: E402
from fluxexport.reference import Pipeline  # noqa: E402

FORMATS = ["bf16", "int8", "int4"] + (["fp8"] if quant.has_fp8() else [])


def rel_rms(a, b):
    a, b = a.float(), b.float()
    return ((a - b).pow(2).mean().sqrt() / b.pow(2).mean().sqrt()).item()


def round_bf16(module, part):
    """Rounds the weights of the layers a format would quantise to bf16 and back."""
    for name, m in module.named_modules():
        if isinstance(m, nn.Linear) and name.startswith(quant.PREFIXES[part]):
            with torch.no_grad():
                m.weight.copy_(m.weight.bfloat16().float())


def with_format(module, part, fmt):
    m = copy.deepcopy(module)
    if fmt == "bf16":
        round_bf16(m, part)
    else:
        quant.quantise_module(m, part, fmt, torch.float32)
    return m.eval()


def layer_errors():
    g = torch.Generator().manual_seed(0)
    n = 3072
    x = torch.randn(256, n, generator=g)
    rows = []
    weights = {"gaussian": torch.randn(n, n, generator=g) / n ** 0.5}
    torch.manual_seed(0)  # StudentT draws from the global generator
    t = torch.distributions.StudentT(3.0).sample((n, n))
    weights["student-t (3 dof)"] = t / t.std() / n ** 0.5
    for kind, w in weights.items():
        lin = nn.Linear(n, n, bias=False)
        with torch.no_grad():
            lin.weight.copy_(w)
            want = lin(x)
        for fmt in FORMATS:
            with torch.no_grad():
                if fmt == "bf16":
                    wq = w.bfloat16().float()
                    got = x @ wq.t()
                else:
                    q = quant.quantised_linear(lin, fmt, torch.float32)
                    wq = quant.dequantise_weight(q.packed if fmt == "int4" else q.qweight,
                                                 q.scale, fmt)
                    got = q(x)
            rows.append({"weights": kind, "format": fmt, "weight_rel_rms": rel_rms(wq, w),
                         "output_rel_rms": rel_rms(got, want)})
    return rows


def pipeline_errors(name, mods, clip_ids, t5_ids, sizes, steps, formats):
    rows = []
    clip, t5, tr, ae = mods
    for w, h in sizes:
        t0 = time.monotonic()
        ref = Pipeline(clip, t5, tr, ae, torch.float32).generate(clip_ids, t5_ids, w, h, steps,
                                                                3.5, 0)
        secs = time.monotonic() - t0
        lat0, px0 = ref["latents"][-1], ref["pixels"].numpy().astype(int)
        for fmt in formats:
            p = Pipeline(clip, with_format(t5, "t5", fmt), with_format(tr, "transformer", fmt),
                         ae, torch.float32)
            res = p.generate(clip_ids, t5_ids, w, h, steps, 3.5, 0)
            rows.append({"model": name, "size": f"{w}x{h}", "format": fmt,
                         "latent_rel_rms": rel_rms(res["latents"][-1], lat0),
                         "mean_pixel_diff": float(np.abs(res["pixels"].numpy().astype(int)
                                                         - px0).mean())})
            print(f"  {name} {w}x{h} {fmt}: {rows[-1]['latent_rel_rms']:.4f} "
                  f"{rows[-1]['mean_pixel_diff']:.2f} (fp32 run {secs:.0f} s)", file=sys.stderr,
                  flush=True)
    return rows


def token_ids(clip_vocab, t5_vocab):
    g = torch.Generator().manual_seed(2)
    body = torch.randint(0, clip_vocab - 2, (9,), generator=g).tolist()
    clip = [clip_vocab - 2] + body + [clip_vocab - 1] * 67
    t5 = torch.randint(3, t5_vocab, (11,), generator=g).tolist() + [1]
    return clip, t5 + [0] * (512 - len(t5))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tiny-src", required=True, help="tiny checkpoints (make tiny-model)")
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--json", help="write the numbers here too")
    ap.add_argument("--models", default="tiny,medium")
    ap.add_argument("--sizes", default="256,512")
    ap.add_argument("--formats", default=",".join(FORMATS))
    ap.add_argument("--no-layer", action="store_true", help="skip the 3072-wide layer")
    args = ap.parse_args()
    formats = [f for f in args.formats.split(",") if f]
    models = args.models.split(",")
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    out = {"formats": FORMATS, "torch": torch.__version__}
    print("per layer (3072 x 3072) ...", file=sys.stderr, flush=True)
    out["layer"] = [] if args.no_layer else layer_errors()
    sizes = [(int(s), int(s)) for s in args.sizes.split(",")]
    ck = open_checkpoint(os.path.join(args.tiny_src, "bfl"))
    mods = [ck.load(p) for p in ("clip", "t5", "transformer", "ae")]
    clip_ids, t5_ids = token_ids(ck.clip_params.vocab_size, 320)
    out["pipeline"] = []
    if "tiny" in models:
        print("tiny model ...", file=sys.stderr, flush=True)
        out["pipeline"] += pipeline_errors("tiny", mods, clip_ids, t5_ids, sizes, args.steps,
                                           formats)
    if "medium" in models:
        med = RandomCheckpoint(medium_params(ck.clip_params.vocab_size, 8, 16),
                               os.path.join(args.tiny_src, "bfl"), 0)
        mods = [med.load(p, device="cpu") for p in ("clip", "t5", "transformer", "ae")]
        print("medium model (512 wide, 8 + 16 blocks) ...", file=sys.stderr, flush=True)
        out["pipeline"] += pipeline_errors("medium", mods, clip_ids, t5_ids, sizes, args.steps,
                                           formats)

    print("\n| weights | format | weight rel. RMS | output rel. RMS |\n|---|---|---|---|")
    for r in out["layer"]:
        print(f"| {r['weights']} | {r['format']} | {r['weight_rel_rms']:.4f} | "
              f"{r['output_rel_rms']:.4f} |")
    print(f"\n| model | size | format | final latent rel. RMS | mean pixel diff |\n"
          "|---|---|---|---|---|")
    for r in out["pipeline"]:
        print(f"| {r['model']} | {r['size']} | {r['format']} | {r['latent_rel_rms']:.4f} | "
              f"{r['mean_pixel_diff']:.2f} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
