"""The VRAM table of docs/operations.md ("GPU memory"), from the code: manifest-only model dirs
of the full FLUX.1 layout (19 + 38 blocks, width 3072, T5-XXL, CLIP-L, the AE; bf16 compute,
CUDA, SDPA attention as torch 2.x exports it) in each weight format, planned by
`fluxgen plan --json` for each placement at 1024 x 1024.

    python3 tests/bench/vram_table.py --fluxgen build/fluxgen --tokenizers build/models/tiny \
        --work build/vram [--size 1024]
"""

import argparse
import json
import os
import subprocess
import sys

FORMATS = ("bf16", "int8", "fp8", "int4")
PLACEMENTS = ("resident", "encoders-offload", "stream")
CARDS = (12, 16, 24, 40, 80)
GIB = 1 << 30


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--fluxgen", required=True)
    ap.add_argument("--tokenizers", required=True)
    ap.add_argument("--work", required=True)
    ap.add_argument("--size", type=int, default=1024)
    args = ap.parse_args()
    env = dict(os.environ)
    rows = []
    for fmt in FORMATS:
        out = os.path.join(args.work, f"full-{fmt}")
        subprocess.run([sys.executable, "-m", "fluxexport", "random-model", "--out", out,
                        "--tokenizers", args.tokenizers, "--dims", "full", "--dtype", "bf16",
                        "--weights", fmt, "--attention", "sdpa", "--device", "cuda",
                        "--manifest-only", "--force", "--quiet"], check=True, env=env)
        for pl in PLACEMENTS:
            res = subprocess.run([args.fluxgen, "plan", "--model", out, "--json", "--placement",
                                  pl, "--size", str(args.size)], check=True,
                                 capture_output=True, text=True)
            plan = json.loads(res.stdout)
            rows.append((fmt, pl, plan))
    print(f"| weights | placement | weights on the device | activation peak | device total "
          f"at {args.size}² | host memory | cards (GB) it fits |")
    print("|---|---|---|---|---|---|---|")
    for fmt, pl, plan in rows:
        fits = [c for c in CARDS if plan["device_total"] <= c * GIB]
        print(f"| {fmt} | {pl} | {plan['weights_device'] / GIB:.1f} GiB | "
              f"{plan['activation_peak'] / GIB:.1f} GiB | {plan['device_total'] / GIB:.1f} GiB | "
              f"{plan['host_total'] / GIB:.1f} GiB | "
              f"{', '.join(str(c) for c in fits) if fits else 'none of these'} |")


if __name__ == "__main__":
    main()
