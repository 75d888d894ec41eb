"""Not a test: what applying a LoRA costs (`make bench-lora`).

1. Patch and restore time of a rank-32 LoRA at the full FLUX.1 width on the CPU. The full
   model (12B transformer parameters) does not fit a small machine in any dtype with its saved
   originals, so a random model dir (`fluxexport random-model --dims full`) with a few
   full-width blocks is patched instead (--blocks D,S: D double and S single blocks; T5 cut to
   one layer, which no LoRA here touches): one LoRA file per kind of layer (the double blocks'
   Linears, the single blocks', the layers outside the blocks), each applied and restored
   through build/lora_run (fx_pipeline_set_loras: read + check, stage, commit; restore). The
   time per block is extrapolated to FLUX.1's 19 double + 38 single blocks, plus the outer
   layers as measured. Printed for bf16 (the service's dtype) and the int8 / int4 formats
   (dequantise, add, requantise).
2. The requantise path's error: one full-width layer (3072 -> 9216, a double block's qkv) with
   N(0, 1/in) weights and a rank-32 delta about 0.3x the weights' spread (what `fluxexport
   lora-random` draws), in int8 and int4 (and fp8 on a torch that has it), compared with the
   exact float32 merge W + delta:
     requant   dequant(quant(dequant(quant(W)) + delta))   what the shim does
     fused     dequant(quant(W + delta))                   export --fuse-lora (one rounding)
     low-rank  dequant(quant(W)) + delta                   a separate low-rank path
   and how much of the delta survives the requantisation (|requant - dequant(quant(W)) - delta|
   over |delta|).

Why requantise rather than a separate low-rank path: the exported TorchScript forward takes
no extra inputs, so a low-rank path means re-exporting every module with LoRA slots (and a
rank fixed at export); it also costs two extra matmuls per patched layer per step and keeps the
factors on the device. Requantising keeps the exported forward, its speed and its memory; the
price is one more rounding of the patched layers, measured here (int8 adds about as much error
as its own quantisation; the fused export is the reference).

Usage: bench_lora.py --lora-run build/lora_run --tiny build/models/tiny --work DIR
       [--blocks D,S] [--formats bf16,int8,int4] [--repeat N] [--json FILE]
"""

import argparse
import json
import math
import os
import subprocess
import sys
import time

import torch

from fluxexport import quant, stio

FULL_DOUBLE, FULL_SINGLE = 19, 38
RANK = 32


def sh(*args):
    res = subprocess.run(args, capture_output=True, text=True)
    if res.returncode != 0:
        sys.exit(f"bench_lora: {' '.join(args)} failed:\n{res.stderr}")
    return res.stdout


def random_model(work, tiny, fmt, depth, single, reuse):
    out = os.path.join(work, f"full-{depth}+{single}-{fmt}")
    if os.path.exists(os.path.join(out, "lora_map.json")):
        return out
    args = [sys.executable, "-m", "fluxexport", "random-model", "--out", out, "--tokenizers",
            tiny, "--dims", "full", "--depth", str(depth), "--single", str(single),
            "--t5-layers", "1", "--device", "cpu", "--dtype", "bf16", "--seed", "0",
            "--force", "--quiet"]
    if fmt != "bf16":
        args += ["--weights", fmt]
    if reuse:
        args += ["--reuse", reuse]
    t0 = time.time()
    sh(*args)
    print(f"  wrote {out} in {time.time() - t0:.0f}s", flush=True)
    return out


def kind(layer):
    if layer.startswith("double_blocks."):
        return "double"
    if layer.startswith("single_blocks."):
        return "single"
    return "outer"


def write_loras(model, work, tag):
    """One bfl-layout rank-32 LoRA per kind of transformer layer; {kind: (path, params)}."""
    with open(os.path.join(model, "lora_map.json")) as f:
        lmap = json.load(f)
    prefix = lmap["parts"]["transformer"]["bfl"][0]
    g = torch.Generator().manual_seed(0)
    files = {}
    for k in ("double", "single", "outer"):
        tensors, params = {}, 0
        for e in lmap["layers"]:
            if e["part"] != "transformer" or kind(e["layer"]) != k:
                continue
            down = torch.randn(RANK, e["in"], generator=g) * e["in"] ** -0.5
            up = torch.randn(e["out"], RANK, generator=g) * (0.3 / math.sqrt(RANK))
            tensors[f"{prefix}{e['layer']}.lora_A.weight"] = down.to(torch.bfloat16)
            tensors[f"{prefix}{e['layer']}.lora_B.weight"] = up.to(torch.bfloat16)
            tensors[f"{prefix}{e['layer']}.alpha"] = torch.tensor(float(RANK))
            params += e["out"] * e["in"]
        path = os.path.join(work, f"lora-{tag}-{k}.safetensors")
        stio.write(path, tensors)
        files[k] = (path, params)
    return files


def time_apply(lora_run, model, files, repeat):
    """{kind: {read, patch, restore, layers, saved_bytes}} (the fastest of repeat runs)."""
    steps = []
    for k in ("double", "single", "outer"):
        for _ in range(repeat):
            steps += [f"-@{files[k][0]}:1", "-"]
    out = sh(lora_run, "--model", model, *steps)
    lines = [json.loads(x) for x in out.splitlines()]
    bad = [x for x in lines if not x["ok"]]
    if bad:
        sys.exit(f"bench_lora: {bad[0]['message']}")
    res, i = {}, 0
    for k in ("double", "single", "outer"):
        runs = []
        for _ in range(repeat):
            a, r = lines[i], lines[i + 1]
            i += 2
            runs.append((a["t_read"], a["t_patch"], r["t_restore"], a["layers"],
                         a["saved_bytes"]))
        res[k] = {"read": min(x[0] for x in runs), "patch": min(x[1] for x in runs),
                  "restore": min(x[2] for x in runs), "layers": runs[0][3],
                  "saved_bytes": runs[0][4]}
    return res


def requant_errors():
    torch.manual_seed(0)
    out_f, in_f = 9216, 3072
    w = torch.randn(out_f, in_f) * in_f ** -0.5
    down = torch.randn(RANK, in_f) * in_f ** -0.5
    up = torch.randn(out_f, RANK) * (0.3 / math.sqrt(RANK))
    delta = up @ down
    exact = w + delta

    def rel(a, b):
        return float((a - b).pow(2).mean().sqrt() / b.pow(2).mean().sqrt())

    rows = {}
    fmts = ["int8", "int4"] + (["fp8"] if quant.has_fp8() else [])
    for fmt in fmts:
        def rt(x):
            q, s = quant.quantise_weight(x, fmt, torch.bfloat16)
            return quant.dequantise_weight(q, s, fmt)
        base = rt(w)
        req = rt(base + delta)
        rows[fmt] = {"requant": rel(req, exact), "fused": rel(rt(exact), exact),
                     "lowrank": rel(base + delta, exact), "format_alone": rel(base, w),
                     "delta_kept_error": rel(req - base, delta)}
    return rows


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--lora-run", required=True)
    ap.add_argument("--tiny", required=True, help="a model dir whose tokenizers to copy")
    ap.add_argument("--work", required=True)
    ap.add_argument("--blocks", default="2,2", help="D,S: double and single blocks [2,2]")
    ap.add_argument("--formats", default="bf16,int8,int4")
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    depth, single = (int(x) for x in args.blocks.split(","))
    os.makedirs(args.work, exist_ok=True)
    report = {"rank": RANK, "blocks": [depth, single], "threads": torch.get_num_threads(),
              "formats": {}}

    print("requantisation error of one 3072 -> 9216 layer, rank-32 delta (rel. RMS vs the "
          "exact float32 merge):")
    print(f"  {'format':7} {'requant':>9} {'fused':>9} {'low-rank':>9} {'format':>9} "
          f"{'delta err':>10}")
    errs = requant_errors()
    for fmt, r in errs.items():
        print(f"  {fmt:7} {r['requant']:9.5f} {r['fused']:9.5f} {r['lowrank']:9.5f} "
              f"{r['format_alone']:9.5f} {r['delta_kept_error']:10.4f}")
    report["requant_error"] = errs

    print(f"\npatch / restore of a rank-{RANK} LoRA, {depth} double + {single} single full-width "
          f"blocks, CPU ({torch.get_num_threads()} threads); extrapolated to "
          f"{FULL_DOUBLE} + {FULL_SINGLE} blocks:")
    first = None
    for fmt in args.formats.split(","):
        model = random_model(args.work, args.tiny, fmt, depth, single, first)
        first = first or model
        files = write_loras(model, args.work, fmt)
        t = time_apply(args.lora_run, model, files, args.repeat)
        n = {"double": depth, "single": single, "outer": 1}
        full = {}
        for what in ("read", "patch", "restore"):
            full[what] = (t["double"][what] / depth * FULL_DOUBLE +
                          t["single"][what] / single * FULL_SINGLE + t["outer"][what])
        saved_full = (t["double"]["saved_bytes"] / depth * FULL_DOUBLE +
                      t["single"]["saved_bytes"] / single * FULL_SINGLE +
                      t["outer"]["saved_bytes"])
        report["formats"][fmt] = {"measured": t, "extrapolated_full": full,
                                  "saved_bytes_full": saved_full}
        print(f"  {fmt}:")
        for k in ("double", "single", "outer"):
            per = n[k]
            unit = "per block" if k != "outer" else "all outer"
            print(f"    {k:6} {unit:9}: read {t[k]['read'] / per:7.3f}s  patch "
                  f"{t[k]['patch'] / per:7.3f}s  restore {t[k]['restore'] / per:7.3f}s  "
                  f"({t[k]['layers'] // per} layers, originals "
                  f"{t[k]['saved_bytes'] / per / 2**20:.0f} MiB)")
        print(f"    full model (extrapolated): read {full['read']:.1f}s  patch "
              f"{full['patch']:.1f}s  restore {full['restore']:.1f}s  originals kept "
              f"{saved_full / 2**30:.1f} GiB", flush=True)
        # the delta's product is 2 * rank flops per weight: what share of the patch it is
        flops = sum(2 * RANK * files[k][1] for k in files)
        secs = sum(t[k]["patch"] for k in files)
        print(f"    {flops / secs / 1e9:.1f} GFLOP/s of up @ down over the whole patch "
              f"(the float32 matmul's rate bounds it on the CPU)", flush=True)
        report["formats"][fmt]["gflops_over_patch"] = flops / secs / 1e9
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)


if __name__ == "__main__":
    main()
