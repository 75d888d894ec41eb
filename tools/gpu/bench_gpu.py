"""The measuring half of tools/gpu/device.sh (runs with the device machine's PyTorch).

Imports nothing but torch, numpy, the standard library and fluxexport (itself torch and
numpy only on this path): the GPU machine has no apt and no network, and Pillow is not
certain there.  tests/deploy/test_gpu_scripts.py runs this under an import guard.

    bench_gpu.py env --results FILE
    bench_gpu.py parity --fluxgen BIN --model32 DIR --prompt P --steps N --size S --seed K
        --dev-latents DIR --dev-png FILE --dtype bf16|fp32 --results FILE
    bench_gpu.py full --model DIR --device cuda --steps 28 --size 1024 --fluxgen BIN
        --fluxgen-json FILE --results FILE --commit SHA [--eager] [--json FILE]

env: one line with torch, CUDA, the GPU and its driver.

parity: fluxgen's run of the tiny model in the device dtype against the Python reference on
the fp32 TorchScript modules, with the noise drawn in the device dtype on both sides (so only
the arithmetic differs).  Tolerance for bf16: relative RMS error of the final latents <= 5e-2
and mean absolute pixel difference <= 4 levels.  Why: bf16 keeps 8 significant bits (unit
roundoff 2^-9 ~ 2e-3); one transformer call of the tiny model in bf16 differs from fp32 by
about 1 % of its output (tests/export/test_torchscript.py), and the 4 Euler steps, the 1000 t
rounding of the time embedding (docs/numerics.md) and the decoder in bf16 add to it.  fp32 on
both sides (SMOKE runs): max-abs latent difference <= 1e-4 and pixels within 1 level.

full: the model dir's four TorchScript modules loaded once each from Python (the load time
of each), the whole pipeline driven from Python with them (the loop of core/pipeline.c: fp32
latents cast per call, fp32 Euler update; the sigmas stay on the host as in C), its first
image after the load and a warm second one, peak device memory; next to fluxgen's run of the
same model (--fluxgen-json: its first line the first image after load, its last a warm one).
--eager adds the eager transformer (random weights, same dims) in the same loop.  Every
figure is appended to --results as soon as it is measured.
"""

import argparse
import datetime
import json
import os
import struct
import subprocess
import sys
import time
import zlib

import numpy as np
import torch

from fluxexport import sampling
from fluxexport.reference import Pipeline

DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}
MODULES = ("clip_text", "t5_encoder", "transformer", "ae_decoder")


def sync(device):
    if str(device).startswith("cuda"):
        torch.cuda.synchronize(device)


def clock(device):
    sync(device)
    return time.perf_counter()


def write(results, lines):
    with open(results, "a") as f:
        for line in lines:
            print(line, flush=True)
            f.write(line + "\n")


def read_png(path):
    """(H, W, 3) uint8 pixels of a non-interlaced 8-bit RGB or RGBA PNG (what fluxgen writes),
    with the standard library's zlib: the five row filters of the PNG specification."""
    with open(path, "rb") as f:
        data = f.read()
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        raise ValueError(f"'{path}' is not a PNG file")
    pos, idat, hdr = 8, [], None
    while pos + 8 <= len(data):
        n, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + n]
        pos += 12 + n
        if kind == b"IHDR":
            hdr = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat.append(body)
        elif kind == b"IEND":
            break
    if hdr is None:
        raise ValueError(f"'{path}': no IHDR chunk")
    w, h, depth, ctype, _, _, interlace = hdr
    if depth != 8 or ctype not in (2, 6) or interlace:
        raise ValueError(f"'{path}': only 8-bit RGB/RGBA non-interlaced PNGs are read")
    bpp = 3 if ctype == 2 else 4
    stride = w * bpp
    raw = zlib.decompress(b"".join(idat))
    if len(raw) != h * (stride + 1):
        raise ValueError(f"'{path}': image data of {len(raw)} bytes, want {h * (stride + 1)}")
    rows = np.zeros((h, stride), dtype=np.uint8)
    prev = np.zeros(stride, dtype=np.int64)
    for y in range(h):
        kind = raw[y * (stride + 1)]
        line = np.frombuffer(raw, np.uint8, stride, y * (stride + 1) + 1).astype(np.int64)
        if kind == 0:
            cur = line
        elif kind == 2:
            cur = (line + prev) & 255
        elif kind == 1:
            cur = np.cumsum(line.reshape(w, bpp), axis=0).reshape(-1) & 255
        elif kind in (3, 4):
            cur = line.tolist()
            up = prev.tolist()
            for i in range(stride):
                a = cur[i - bpp] if i >= bpp else 0
                b = up[i]
                if kind == 3:
                    cur[i] = (cur[i] + (a + b) // 2) & 255
                else:
                    c = up[i - bpp] if i >= bpp else 0
                    p = a + b - c
                    pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                    pred = a if pa <= pb and pa <= pc else (b if pb <= pc else c)
                    cur[i] = (cur[i] + pred) & 255
            cur = np.array(cur, dtype=np.int64)
        else:
            raise ValueError(f"'{path}': bad filter type {kind} in row {y}")
        rows[y] = cur
        prev = cur
    return rows.reshape(h, w, bpp)[:, :, :3]


def env(a):
    if torch.cuda.is_available():
        dev = f"{torch.cuda.get_device_name(0)} x{torch.cuda.device_count()}, " \
            f"{torch.cuda.get_device_properties(0).total_memory / 2**30:.1f} GiB"
    else:
        dev = "no CUDA device"
    write(a.results, [f"== {datetime.datetime.now(datetime.timezone.utc).isoformat('T', 'seconds')}"
                      f" torch {torch.__version__}, CUDA {torch.version.cuda}, {dev}, driver "
                      f"{driver()}, numpy {np.__version__}, Python {sys.version.split()[0]}"])
    return 0


def driver():
    try:
        return subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                              capture_output=True, text=True, timeout=30).stdout.strip() or "n/a"
    except (OSError, subprocess.SubprocessError):
        return "n/a"


def tokens(fluxgen, model, prompt):
    res = subprocess.run([fluxgen, "tokenize", "--model", model, "--prompt", prompt],
                         capture_output=True, text=True, check=True, timeout=120)
    tok = json.loads(res.stdout)
    return tok["clip"], tok["t5"]


def parity(a):
    clip, t5 = tokens(a.fluxgen, a.model32, a.prompt)
    pipe = Pipeline.from_model_dir(a.model32)
    ref = pipe.generate(clip, t5, a.size, a.size, a.steps, 3.5, a.seed,
                        noise_dtype=DTYPES[a.dtype])
    want = ref["latents"][-1].numpy()
    got = np.load(os.path.join(a.dev_latents, f"step_{a.steps:03d}.npy"))
    noise_same = np.array_equal(np.load(os.path.join(a.dev_latents, "step_000.npy")),
                                ref["latents"][0].numpy())
    max_abs = float(np.abs(got - want).max())
    rel_rms = float(np.sqrt(np.mean((got - want) ** 2)) / np.sqrt(np.mean(want ** 2)))
    px = read_png(a.dev_png).astype(int)
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


def denoise(transformer, x0, ids, txt, tids, y, g, sig, dt, device):
    """The pipeline's denoising loop: fp32 latents, cast per call, fp32 Euler update, the
    sigmas on the host (no device round trip per step)."""
    x = x0.clone()
    for i in range(len(sig) - 1):
        t = torch.full((1,), sig[i], dtype=dt, device=device)
        v = transformer(x.to(dt), ids, txt, tids, t, y, g)
        x.add_(v.float() * float(np.float32(sig[i + 1]) - np.float32(sig[i])))
    return x


def generate(mods, clip, t5, size, steps, dt, dev, seed=1):
    """One image through the four modules; returns ({phase: seconds}, denoise inputs)."""
    t = {}
    t0 = clock(dev)
    y = mods["clip_text"](torch.tensor([clip], dtype=torch.long, device=dev))
    txt = mods["t5_encoder"](torch.tensor([t5], dtype=torch.long, device=dev))
    t1 = clock(dev)
    t["encode"] = t1 - t0
    x0 = sampling.pack(sampling.noise(seed, size, size, dt)).float().to(dev)
    ids = sampling.img_ids(size, size).to(dev)
    tids = sampling.txt_ids(txt.shape[1]).to(dev)
    g = torch.full((1,), 3.5, dtype=dt, device=dev)
    sig = sampling.schedule(steps, x0.shape[1]).tolist()
    inputs = (x0, ids, txt, tids, y, g, sig)
    x = denoise(mods["transformer"], *inputs, dt, dev)
    t2 = clock(dev)
    t["denoise"] = t2 - t1
    img = mods["ae_decoder"](sampling.unpack(x.to(dt), size, size))
    sampling.to_uint8(img).cpu()
    t["decode"] = clock(dev) - t2
    t["total"] = t["encode"] + t["denoise"] + t["decode"]
    return t, inputs


def gib(n):
    return f"{n / 2**30:.2f} GiB"


def full(a):
    dev = a.device
    cuda = dev.startswith("cuda")
    with open(os.path.join(a.model, "manifest.json")) as f:
        man = json.load(f)
    dt = DTYPES[man["dtype"]]
    fp = man["modules"]["transformer"]["params"]
    t5p = man["modules"]["t5_encoder"]["params"]
    real = fp["hidden_size"] == 3072 and (fp["depth"], fp["depth_single_blocks"]) == (19, 38) \
        and t5p["d_model"] == 4096 and t5p["num_layers"] == 24
    label = (f"transformer {fp['hidden_size']} wide, {fp['depth']} + {fp['depth_single_blocks']} "
             f"blocks, T5 {t5p['d_model']} x {t5p['num_layers']}"
             + ("" if real else " (NOT the full model)"))
    out = lambda *lines: write(a.results, list(lines))  # noqa: E731
    out(f"== full: {label}, {man['dtype']} on {dev}, {a.size}x{a.size}, {a.steps} steps, "
        f"commit {a.commit}")
    raw = {"label": label, "size": a.size, "steps": a.steps, "dtype": man["dtype"]}

    clip, t5 = tokens(a.fluxgen, a.model, "a red fox")
    # each module once, timed alone
    mods, loads = {}, {}
    with torch.inference_mode():
        for key in MODULES:
            path = os.path.join(a.model, man["modules"][key]["file"])
            t0 = clock(dev)
            mods[key] = torch.jit.load(path, map_location=dev).eval()
            loads[key] = (clock(dev) - t0, os.path.getsize(path))
            out(f"load {key}: {loads[key][0]:.2f} s ({loads[key][1] / 1e9:.2f} GB)")
    raw["loads"] = loads
    after_load = time.perf_counter()
    with torch.inference_mode():
        if cuda:
            torch.cuda.reset_peak_memory_stats(dev)
        first, _ = generate(mods, clip, t5, a.size, a.steps, dt, dev)
        first_after_load = time.perf_counter() - after_load
        out(f"Python, first image after load: {first_after_load:.2f} s (encode "
            f"{first['encode']:.3f}, denoise {first['denoise']:.3f}, decode {first['decode']:.3f})")
        if cuda:
            torch.cuda.reset_peak_memory_stats(dev)
        warm, inputs = generate(mods, clip, t5, a.size, a.steps, dt, dev)
        peak = torch.cuda.max_memory_allocated(dev) if cuda else 0
        out(f"Python, warm image: {warm['total']:.3f} s (encode {warm['encode']:.3f}, denoise "
            f"{warm['denoise']:.3f} = {warm['denoise'] / a.steps * 1e3:.2f} ms/step, decode "
            f"{warm['decode']:.3f}); peak device memory {gib(peak)} (modules included)")
    raw.update(python_first=first, python_first_after_load=first_after_load, python_warm=warm,
               python_peak=peak)

    with open(a.fluxgen_json) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    raw["fluxgen"] = rows
    if rows:
        cold, hot = rows[0], rows[-1]
        phases = ("tokenize", "encode", "denoise", "decode", "png")
        tot = lambda r: sum(r["timings"][k] for k in phases)  # noqa: E731
        fg = hot["timings"]["denoise"]
        out(f"fluxgen: load {cold['load_seconds']:.2f} s (all four modules); first image after "
            f"load {tot(cold):.2f} s; warm image {tot(hot):.3f} s (encode "
            f"{hot['timings']['encode']:.3f}, denoise {fg:.3f} = {fg / a.steps * 1e3:.2f} ms/step, "
            f"decode {hot['timings']['decode']:.3f}); peak device memory "
            f"{gib(hot['device_bytes_peak'])}",
            f"fluxgen / Python (same TorchScript modules), warm denoise: "
            f"{fg / warm['denoise']:.4f} (expectation: within 2 %)"
            + (f"; diffusers bf16 eager on an H100: about 6.7 s for 28 steps at 1024x1024"
               if real and a.steps == 28 and a.size == 1024 else ""))
    if a.eager:
        from fluxexport.flux import FluxParams
        from fluxexport.randmodel import RandomCheckpoint
        del mods["transformer"]
        if cuda:
            torch.cuda.empty_cache()
        ck = RandomCheckpoint((FluxParams.from_dict(fp), None, None, None), a.model, 0)
        eager = ck.load("transformer", dt, dev)
        with torch.inference_mode():
            denoise(eager, *inputs, dt, dev)
            t0 = clock(dev)
            denoise(eager, *inputs, dt, dev)
            raw["eager_denoise"] = clock(dev) - t0
        out(f"eager transformer, warm denoise: {raw['eager_denoise']:.3f} s "
            f"({raw['eager_denoise'] / a.steps * 1e3:.2f} ms/step)")
    out("raw: " + json.dumps(raw))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(raw, f, indent=1)
    return 0


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    e = sub.add_parser("env")
    e.add_argument("--results", required=True)
    p = sub.add_parser("parity")
    for k in ("--fluxgen", "--model32", "--prompt", "--dev-latents", "--dev-png", "--results"):
        p.add_argument(k, required=True)
    p.add_argument("--dtype", choices=sorted(DTYPES), default="bf16")
    for k, v in (("--steps", 4), ("--size", 256), ("--seed", 7)):
        p.add_argument(k, type=int, default=v)
    s = sub.add_parser("full")
    for k in ("--model", "--fluxgen", "--fluxgen-json", "--results"):
        s.add_argument(k, required=True)
    s.add_argument("--device", default="cuda")
    s.add_argument("--commit", default="unknown")
    s.add_argument("--json", help="also write the raw figures here")
    s.add_argument("--eager", action="store_true", help="also time the eager transformer")
    for k, v in (("--steps", 28), ("--size", 1024)):
        s.add_argument(k, type=int, default=v)
    a = ap.parse_args(argv)
    return {"env": env, "parity": parity, "full": full}[a.cmd](a)


if __name__ == "__main__":
    sys.exit(main())
