"""Pipeline benchmark (not a test): build/fluxgen next to the Python reference pipeline and
next to the bare module calls, on one model dir, per phase, in one run.

    bench_pipeline.py --fluxgen build/fluxgen --model build/models/tiny [--runs 5]
        [--width 256] [--height 256] [--steps 8]

Phases: encode (CLIP + T5), denoise (all steps), decode (AE + pixels).  "modules" is the sum
of the TorchScript forward calls alone, timed from Python with the same inputs; the
orchestration overhead of fluxgen is its phase time over that sum.  Medians of --runs runs
after one warm-up run each (fluxgen makes all its images in one process with --count; its
cold first image is reported apart).  Both sides use torch's thread count."""

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time

import torch

from fluxexport import sampling
from fluxexport.reference import Pipeline

PROMPT = "a small red fox sitting in fresh snow at dawn, watercolor"


def fluxgen_runs(args, out):
    """One fluxgen process making runs + 1 images (--count): the first is the cold one."""
    res = subprocess.run([args.fluxgen, "--model", args.model, "--prompt", PROMPT, "--steps",
                          str(args.steps), "--width", str(args.width), "--height",
                          str(args.height), "--seed", "0", "--count", str(args.runs + 1),
                          "--threads", str(torch.get_num_threads()), "--json", "-o", out],
                         capture_output=True, text=True, check=True)
    rows = [json.loads(line)["timings"] for line in res.stdout.splitlines()]
    cold, warm = rows[0], rows[1:]
    return cold, {k: statistics.median(r[k] for r in warm) for k in warm[0]}


def reference_runs(args, pipe, clip, t5):
    rows = []
    for i in range(args.runs + 1):
        res = pipe.generate(clip, t5, args.width, args.height, args.steps, 3.5, seed=i)
        if i:
            rows.append(res["timings"])
    return {k: statistics.median(r[k] for r in rows) for k in rows[0]}


def module_runs(args, pipe, clip, t5):
    """The forward calls alone, with inputs prepared outside the timed regions."""
    rows = []
    n = (args.width // 16) * (args.height // 16)
    with torch.inference_mode():
        c = torch.tensor([clip])
        t = torch.tensor([t5])
        for i in range(args.runs + 1):
            row = {}
            t0 = time.perf_counter()
            y = pipe.clip(c)
            txt = pipe.t5(t)
            row["encode"] = time.perf_counter() - t0
            x = sampling.pack(sampling.noise(i, args.width, args.height))
            ids, tids = sampling.img_ids(args.width, args.height), sampling.txt_ids(512)
            g = torch.full((1,), 3.5)
            ts = [torch.full((1,), float(s)) for s in sampling.schedule(args.steps, n)]
            t0 = time.perf_counter()
            for k in range(args.steps):
                pipe.transformer(x, ids, txt, tids, ts[k], y, g)
            row["denoise"] = time.perf_counter() - t0
            z = sampling.unpack(x, args.width, args.height)
            t0 = time.perf_counter()
            pipe.ae(z)
            row["decode"] = time.perf_counter() - t0
            if i:
                rows.append(row)
    return {k: statistics.median(r[k] for r in rows) for k in rows[0]}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--fluxgen", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--width", type=int, default=256)
    ap.add_argument("--height", type=int, default=256)
    ap.add_argument("--steps", type=int, default=8)
    args = ap.parse_args()
    tok = json.loads(subprocess.run([args.fluxgen, "tokenize", "--model", args.model, "--prompt",
                                     PROMPT], capture_output=True, text=True, check=True).stdout)
    pipe = Pipeline.from_model_dir(args.model)
    with tempfile.TemporaryDirectory() as d:
        cold, c = fluxgen_runs(args, d + "/img-%d.png")
    p = reference_runs(args, pipe, tok["clip"], tok["t5"])
    m = module_runs(args, pipe, tok["clip"], tok["t5"])
    print(f"pipeline: {args.model}, {args.width}x{args.height}, {args.steps} steps, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads, median of {args.runs}")
    print(f"{'phase':10s} {'fluxgen s':>10s} {'python s':>10s} {'modules s':>10s} "
          f"{'fluxgen/mod':>12s} {'python/mod':>11s}")
    for k in ("encode", "denoise", "decode"):
        print(f"{k:10s} {c[k]:10.4f} {p[k]:10.4f} {m[k]:10.4f} {c[k] / m[k]:12.3f} "
              f"{p[k] / m[k]:11.3f}")
    tc = c["encode"] + c["denoise"] + c["decode"]
    tp = p["encode"] + p["denoise"] + p["decode"]
    tm = m["encode"] + m["denoise"] + m["decode"]
    print(f"{'total':10s} {tc:10.4f} {tp:10.4f} {tm:10.4f} {tc / tm:12.3f} {tp / tm:11.3f}")
    tcold = cold["encode"] + cold["denoise"] + cold["decode"]
    print(f"fluxgen's first image in a fresh process (TorchScript's profiling runs included): "
          f"{tcold:.4f} s")
    print(f"fluxgen tokenize {c['tokenize'] * 1e3:.3f} ms, png {c['png'] * 1e3:.3f} ms; "
          f"orchestration overhead over the module calls: {100 * (tc / tm - 1):+.1f} % "
          f"(python reference: {100 * (tp / tm - 1):+.1f} %)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
