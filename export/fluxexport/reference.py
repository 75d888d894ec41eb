"""The Python reference pipeline: the whole FLUX.1 text-to-image math with eager modules.

    python3 -m fluxexport reference --checkpoint DIR | --model DIR  --tokens FILE
        [--steps 28] [--guidance 3.5] [--width 1024] [--height 1024] [--seed 0]
        [--dtype fp32|bf16] [--lora FILE:SCALE ...] --out DIR

Token ids in (FILE is JSON {"clip": [77 ids], "t5": [512 ids]}, the form `fluxgen tokenize`
prints), then: encode (CLIP pooled, T5 states) -> seeded CPU noise in the model dtype -> pack ->
shifted schedule -> Euler steps with the update in fp32 -> unpack -> AE decode (the module
applies z / 0.3611 + 0.1159) -> clamp((x + 1) / 2, 0, 1) * 255 rounded half-even -> uint8.
It is the oracle for the C pipeline; OUT gets step_000.npy (the packed noise, float32) and
step_K.npy (packed latents after step K, float32), pixels.npy (H, W, 3 uint8), image.png and
result.json (parameters and per-phase seconds).

--checkpoint loads eager modules from a checkpoint (either layout); --model runs the
TorchScript modules of an exported model dir through the same loop. --lora (repeatable; SCALE
default 1) merges LoRAs into the weights first (lora.merge_into: scale * alpha / rank *
up @ down added in float32; quantised layers dequantised, patched, quantised again), mapped
through the model dir's lora_map.json (--model) or the checkpoint's dimensions (--checkpoint).
"""

import argparse
import json
import os
import sys
import time

import numpy as np
import torch

from . import lora, sampling
from .checkpoint import open_checkpoint
from .stio import CheckpointError

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


class Pipeline:
    """Four modules (clip, t5, transformer, ae) plus the sampling loop around them."""

    def __init__(self, clip, t5, transformer, ae, dtype, device="cpu"):
        self.clip, self.t5, self.transformer, self.ae = clip, t5, transformer, ae
        self.dtype = dtype
        self.device = device

    @classmethod
    def from_checkpoint(cls, path, dtype=torch.float32, device="cpu", layout="auto", loras=()):
        """loras: [(file, scale)] merged into the weights (every file checked first)."""
        ck = open_checkpoint(path, layout)
        files = lora.read_all(loras, lora.LoraMap.from_params(
            ck.flux_params, ck.clip_params, ck.t5_params)) if loras else []
        mods = [ck.load(p, dtype, device) for p in ("clip", "t5", "transformer", "ae")]
        pipe = cls(*mods, dtype=dtype, device=device)
        pipe.merge(files)
        return pipe

    @classmethod
    def from_model_dir(cls, path, device="cpu", loras=()):
        """loras: [(file, scale)] merged into the loaded modules' weights, mapped through
        path/lora_map.json (every file checked first)."""
        files = lora.read_all(loras, lora.LoraMap.from_model_dir(path)) if loras else []
        with open(os.path.join(path, "manifest.json")) as f:
            man = json.load(f)
        mods = [torch.jit.load(os.path.join(path, man["modules"][k]["file"]), map_location=device)
                for k in ("clip_text", "t5_encoder", "transformer", "ae_decoder")]
        for m in mods:
            m.eval()
        pipe = cls(*mods, dtype=DTYPES[man["dtype"]], device=device)
        pipe.merge(files)
        return pipe

    def merge(self, files):
        """Adds [(lora.LoraFile, scale)] to the weights; returns the layers changed."""
        if not files:
            return 0
        return lora.merge_into({"clip": self.clip, "t5": self.t5,
                                "transformer": self.transformer}, files)

    def generate(self, clip_ids, t5_ids, width=1024, height=1024, steps=28, guidance=3.5,
                 seed=0, on_step=None, noise_dtype=None):
        """Returns dict(pixels (H, W, 3) uint8 tensor, latents [packed float32 per step,
        index 0 = noise], timings {phase: seconds}). noise_dtype (default: the model dtype)
        draws the noise in another dtype, to compare an fp32 run with a bf16 one."""
        sampling.check_size(width, height)
        dev, dt = self.device, self.dtype
        timings = {}
        with torch.inference_mode():
            t0 = time.perf_counter()
            y = self.clip(torch.tensor([clip_ids], dtype=torch.long, device=dev))
            txt = self.t5(torch.tensor([t5_ids], dtype=torch.long, device=dev))
            timings["encode"] = time.perf_counter() - t0

            t0 = time.perf_counter()
            x = sampling.pack(sampling.noise(seed, width, height, noise_dtype or dt)).to(dev)
            x = x.float()
            sig = sampling.schedule(steps, x.shape[1])
            img_ids = sampling.img_ids(width, height).to(dev)
            txt_ids = sampling.txt_ids(txt.shape[1]).to(dev)
            g = torch.full((1,), guidance, dtype=dt, device=dev)
            latents = [x.cpu().clone()]
            for i in range(steps):
                t = torch.full((1,), float(sig[i]), dtype=dt, device=dev)
                v = self.transformer(x.to(dt), img_ids, txt, txt_ids, t, y, g)
                x = x + (sig[i + 1] - sig[i]).to(dev) * v.float()
                latents.append(x.cpu().clone())
                if on_step:
                    on_step(i + 1, steps)
            timings["denoise"] = time.perf_counter() - t0

            t0 = time.perf_counter()
            img = self.ae(sampling.unpack(x.to(dt), width, height))
            pixels = sampling.to_uint8(img.cpu())[0]
            timings["decode"] = time.perf_counter() - t0
        return {"pixels": pixels, "latents": latents, "timings": timings}


def read_tokens(path):
    try:
        with open(path) as f:
            d = json.load(f)
        clip, t5 = d["clip"], d["t5"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"'{path}': expected JSON with 'clip' and 't5' id lists ({e})") \
            from None
    for name, ids in (("clip", clip), ("t5", t5)):
        if not isinstance(ids, list) or not ids or not all(isinstance(i, int) and i >= 0
                                                           for i in ids):
            raise CheckpointError(f"'{path}': '{name}' must be a non-empty list of ids")
    return clip, t5


def main(cmd, argv):
    ap = argparse.ArgumentParser(prog=f"fluxexport {cmd}")
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", help="checkpoint folder (eager modules)")
    src.add_argument("--model", help="exported model dir (TorchScript modules)")
    ap.add_argument("--tokens", required=True, help='JSON file {"clip": [...], "t5": [...]}')
    ap.add_argument("--steps", type=int, default=28)
    ap.add_argument("--guidance", type=float, default=3.5)
    ap.add_argument("--width", type=int, default=1024)
    ap.add_argument("--height", type=int, default=1024)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--dtype", choices=sorted(DTYPES), default="fp32")
    ap.add_argument("--lora", action="append", default=[], metavar="FILE:SCALE",
                    help="merge a LoRA into the weights (repeatable; SCALE default 1)")
    ap.add_argument("--out", required=True, help="folder for latents, pixels and image")
    args = ap.parse_args(argv)
    try:
        loras = [lora.parse_spec(s) for s in args.lora]
    except ValueError as e:
        ap.error(str(e))
    try:
        clip_ids, t5_ids = read_tokens(args.tokens)
        if args.checkpoint:
            pipe = Pipeline.from_checkpoint(args.checkpoint, DTYPES[args.dtype], loras=loras)
        else:
            pipe = Pipeline.from_model_dir(args.model, loras=loras)
        res = pipe.generate(clip_ids, t5_ids, args.width, args.height, args.steps, args.guidance,
                            args.seed)
    except (CheckpointError, ValueError) as e:
        print(f"fluxexport: error: {e}", file=sys.stderr)
        return 1
    os.makedirs(args.out, exist_ok=True)
    for k, lat in enumerate(res["latents"]):
        np.save(os.path.join(args.out, f"step_{k:03d}.npy"), lat.numpy())
    pixels = res["pixels"].numpy()
    np.save(os.path.join(args.out, "pixels.npy"), pixels)
    from PIL import Image
    Image.fromarray(pixels, "RGB").save(os.path.join(args.out, "image.png"))
    with open(os.path.join(args.out, "result.json"), "w") as f:
        json.dump({"width": args.width, "height": args.height, "steps": args.steps,
                   "guidance": args.guidance, "seed": args.seed, "dtype": args.dtype,
                   "loras": [{"file": p, "scale": s} for p, s in loras],
                   "timings": res["timings"]}, f, indent=1)
    return 0
