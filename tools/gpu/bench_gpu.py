"""The measuring half of tools/gpu/device.sh (runs with the device machine's PyTorch).

    bench_gpu.py parity --fluxgen BIN --model32 DIR --prompt P --steps N --size S --seed K
        --dev-latents DIR --dev-png FILE --dtype bf16|fp32 --results FILE
    bench_gpu.py speed --model DIR --device cuda --steps 28 --size 1024 --depth 19
        --single 38 --dims full --fluxgen-json FILE --results FILE --commit SHA

parity: fluxgen's run of the tiny model in the device dtype against the Python reference on
the fp32 TorchScript modules, with the noise drawn in the device dtype on both sides (so only
the arithmetic differs).  Tolerance for bf16: relative RMS error of the final latents <= 5e-2
and mean absolute pixel difference <= 4 levels.  Why: bf16 keeps 8 significant bits (unit
roundoff 2^-9 ~ 2e-3); one transformer call of the tiny model in bf16 differs from fp32 by
about 1 % of its output (tests/export/test_torchscript.py), and the 4 Euler steps, the 1000 t
rounding of the time embedding (docs/numerics.md) and the decoder in bf16 add to it.  fp32 on
both sides (SMOKE runs): max-abs latent difference <= 1e-4 and pixels within 1 level.

speed: per-step seconds of the FLUX transformer at the given size through (a) fluxgen, its
warm second image (from --fluxgen-json), (b) the same TorchScript file driven from Python in
the same loop (cast to the model dtype, call, fp32 Euler update), (c) the eager module; peak
device memory and the load time of each module file.  Appends to --results.
"""

import argparse
import datetime
import json
import os
import subprocess
import sys
import time

import numpy as np
import torch

from fluxexport import sampling
from fluxexport.randmodel import RandomCheckpoint, full_params
from fluxexport.reference import Pipeline
from fluxexport.tiny import tiny_params


def sync(device):
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def write(results, lines):
    with open(results, "a") as f:
        for line in lines:
            print(line)
            f.write(line + "\n")


def parity(a):
    tok = json.loads(subprocess.run([a.fluxgen, "tokenize", "--model", a.model32, "--prompt",
                                     a.prompt], capture_output=True, text=True,
                                    check=True).stdout)
    pipe = Pipeline.from_model_dir(a.model32)
    nd = {"bf16": torch.bfloat16, "fp32": torch.float32}[a.dtype]
    ref = pipe.generate(tok["clip"], tok["t5"], a.size, a.size, a.steps, 3.5, a.seed,
                        noise_dtype=nd)
    want = ref["latents"][-1].numpy()
    got = np.load(os.path.join(a.dev_latents, f"step_{a.steps:03d}.npy"))
    noise_same = np.array_equal(np.load(os.path.join(a.dev_latents, "step_000.npy")),
                                ref["latents"][0].numpy())
    max_abs = float(np.abs(got - want).max())
    rel_rms = float(np.sqrt(np.mean((got - want) ** 2)) / np.sqrt(np.mean(want ** 2)))
    from PIL import Image
    with Image.open(a.dev_png) as im:
        px = np.asarray(im.convert("RGB")).astype(int)
    d = np.abs(px - ref["pixels"].numpy().astype(int))
    if a.dtype == "fp32":
        ok = max_abs <= 1e-4 and d.max() <= 1
        rule = "max-abs latent <= 1e-4, pixels within 1 level"
    else:
        ok = rel_rms <= 5e-2 and d.mean() <= 4.0
        rule = "relative RMS of final latents <= 5e-2, mean pixel difference <= 4 levels"
    write(a.results, [
        f"== parity: tiny model, {a.dtype} on the device vs fp32 reference, {a.size}x{a.size}, "
        f"{a.steps} steps, seed {a.seed}",
        f"noise identical: {noise_same}",
        f"final latents: max-abs {max_abs:.6g}, relative RMS {rel_rms:.6g}",
        f"pixels: max {int(d.max())}, mean {d.mean():.4f}, p99 {np.percentile(d, 99):.1f} levels",
        f"tolerance ({rule}): {'PASS' if ok else 'FAIL'}"])
    return 0 if ok else 1


def loop(module, x0, ids, txt, tids, y, g, sig, dt, device):
    """The pipeline's denoising loop: fp32 latents, cast per call, fp32 Euler update."""
    x = x0.clone()
    for i in range(len(sig) - 1):
        t = torch.full((1,), float(sig[i]), dtype=dt, device=device)
        v = module(x.to(dt), ids, txt, tids, t, y, g)
        x = x + (sig[i + 1] - sig[i]) * v.float()
    return x


def timed(fn, device):
    sync(device)
    t0 = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - t0


def speed(a):
    dev = a.device
    with open(os.path.join(a.model, "manifest.json")) as f:
        man = json.load(f)
    dt = {"bf16": torch.bfloat16, "fp32": torch.float32}[man["dtype"]]
    loads = {}
    mods = {}
    for key in ("clip_text", "t5_encoder", "ae_decoder", "transformer"):
        path = os.path.join(a.model, man["modules"][key]["file"])
        sync(dev)
        t0 = time.perf_counter()
        m = torch.jit.load(path, map_location=dev)
        sync(dev)
        loads[key] = (time.perf_counter() - t0, os.path.getsize(path))
        if key == "transformer":
            mods[key] = m.eval()
        del m
    fp = man["modules"]["transformer"]["params"]
    n = (a.size // 16) ** 2
    g = torch.Generator(device="cpu").manual_seed(0)
    x0 = sampling.pack(sampling.noise(1, a.size, a.size, dt)).float().to(dev)
    ids = sampling.img_ids(a.size, a.size).to(dev)
    tids = sampling.txt_ids(512).to(dev)
    txt = torch.randn(1, 512, fp["context_in_dim"], generator=g).to(dt).to(dev)
    y = torch.randn(1, fp["vec_in_dim"], generator=g).to(dt).to(dev)
    gv = torch.full((1,), 3.5, dtype=dt, device=dev)
    sig = sampling.schedule(a.steps, n).to(dev)
    res = {}
    with torch.inference_mode():
        ts = mods.pop("transformer")
        if dev.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
        loop(ts, x0, ids, txt, tids, y, gv, sig, dt, dev)            # warm-up (profiling runs)
        res["torchscript"] = timed(lambda: loop(ts, x0, ids, txt, tids, y, gv, sig, dt, dev), dev)
        peak_ts = torch.cuda.max_memory_allocated() if dev.startswith("cuda") else 0
        del ts
        if dev.startswith("cuda"):
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        params = full_params(a.depth, a.single) if a.dims == "full" else None
        if params is None:
            with open(os.path.join(a.model, "tokenizer", "vocab.json")) as f:
                params = tiny_params(len(json.load(f)), 320, a.depth, a.single)
        eager = RandomCheckpoint(params, a.model, 0).load("transformer", dt, dev)
        loop(eager, x0, ids, txt, tids, y, gv, sig, dt, dev)
        res["eager"] = timed(lambda: loop(eager, x0, ids, txt, tids, y, gv, sig, dt, dev), dev)
        peak_eager = torch.cuda.max_memory_allocated() if dev.startswith("cuda") else 0
    with open(a.fluxgen_json) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    cold, warm = rows[0], rows[-1]
    fg = warm["timings"]["denoise"]
    gpu = torch.cuda.get_device_name(0) if dev.startswith("cuda") else "cpu"
    try:
        drv = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True).stdout.strip()
    except OSError:
        drv = "n/a"
    blocks = f"{a.depth} + {a.single} blocks" + ("" if (a.depth, a.single) == (19, 38) and
                                                 a.dims == "full" else " (NOT the full model)")
    lines = [
        f"== speed: {a.dims} dims, {blocks}, {man['dtype']} on {dev}, {a.size}x{a.size}, "
        f"{a.steps} steps",
        f"date {datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds')}, "
        f"GPU {gpu}, driver {drv}, torch {torch.__version__}, CUDA {torch.version.cuda}, "
        f"commit {a.commit}",
        "load seconds (torch.jit.load from Python; bytes): " + ", ".join(
            f"{k} {v[0]:.2f} s ({v[1] / 1e9:.2f} GB)" for k, v in loads.items()),
        f"fluxgen load of all four modules: {cold['load_seconds']:.2f} s",
        f"denoise, {a.steps} steps: fluxgen {fg:.4f} s ({fg / a.steps * 1e3:.2f} ms/step), "
        f"TorchScript from Python {res['torchscript']:.4f} s "
        f"({res['torchscript'] / a.steps * 1e3:.2f} ms/step), eager {res['eager']:.4f} s "
        f"({res['eager'] / a.steps * 1e3:.2f} ms/step)",
        f"fluxgen / TorchScript-from-Python: {fg / res['torchscript']:.4f} "
        f"(acceptance: within 2 %); fluxgen / eager: {fg / res['eager']:.4f}",
        f"fluxgen first image (cold): denoise {cold['timings']['denoise']:.3f} s; warm image: "
        f"encode {warm['timings']['encode']:.3f} s, denoise {fg:.3f} s, decode "
        f"{warm['timings']['decode']:.3f} s, total "
        f"{sum(warm['timings'][k] for k in ('tokenize', 'encode', 'denoise', 'decode', 'png')):.3f}"
        f" s (diffusers on an H100: 6.7 s; compute floor about 2.1 s)",
        f"peak device memory: fluxgen {warm['device_bytes_peak'] / 2**30:.2f} GiB (its "
        f"generation, modules included), TorchScript loop {peak_ts / 2**30:.2f} GiB, eager loop "
        f"{peak_eager / 2**30:.2f} GiB",
        "raw: " + json.dumps({"fluxgen": rows, "python": res, "loads": loads})]
    write(a.results, lines)
    return 0


def main():
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("parity")
    for k in ("--fluxgen", "--model32", "--prompt", "--dev-latents", "--dev-png", "--results"):
        p.add_argument(k, required=True)
    p.add_argument("--dtype", default="bf16")
    for k, v in (("--steps", 4), ("--size", 256), ("--seed", 7)):
        p.add_argument(k, type=int, default=v)
    s = sub.add_parser("speed")
    for k in ("--model", "--fluxgen-json", "--results"):
        s.add_argument(k, required=True)
    s.add_argument("--device", default="cuda")
    s.add_argument("--dims", default="full")
    s.add_argument("--commit", default="unknown")
    for k, v in (("--steps", 28), ("--size", 1024), ("--depth", 19), ("--single", 38)):
        s.add_argument(k, type=int, default=v)
    a = ap.parse_args()
    return parity(a) if a.cmd == "parity" else speed(a)


if __name__ == "__main__":
    sys.exit(main())
