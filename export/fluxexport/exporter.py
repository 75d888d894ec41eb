"""The exporter: a checkpoint in either layout -> a model dir (docs/architecture.md, "Model dirs").

    python3 -m fluxexport export --source DIR -o OUT [--layout auto|bfl|diffusers]
        [--transformer FILE] [--ae FILE] [--device cpu|cuda|cuda:N] [--dtype fp32|bf16]
        [--weights fp32|bf16|int8|fp8|int4] [--name NAME] [--force] [--verify] [--quiet]
        [--fuse-lora FILE:SCALE ...]

Writes OUT/manifest.json, clip_text.pt, t5_encoder.pt, transformer.pt, ae_decoder.pt (scripted
TorchScript: one transformer file serves every width x height), the tokenizer files and
lora_map.json (lora.py: the layers a LoRA may adapt, their formats and key names).
--dtype is the compute dtype; --weights the storage of the linear layers inside the
transformer's and T5's blocks (quant.py: int8, fp8 or int4, dequantised inside the scripted
modules; default: plain weights in the compute dtype). The manifest records the format and
the parameter bytes of each module, which the C memory plan (core/plan.h) reads.
--fuse-lora (repeatable) adds LoRAs to the weights before quantisation and export; the
manifest's fused_loras records each (file name, sha256, scale). The model dir is assembled in
a temporary sibling folder and renamed into place at the end, so a failure leaves nothing
half-written. Exit status: 0 ok, 1 bad checkpoint or input, 2 bad
arguments, 3 other failure (I/O, torch).
"""

import argparse
import datetime
import gc
import hashlib
import json
import os
import shutil
import sys
import time

import torch

from . import PYTHON_HINT, __version__, lora, quant, sampling
from .checkpoint import open_checkpoint
from .layers import HAS_SDPA
from .stio import CheckpointError

FORMAT = "fluxcgi-model"
FORMAT_VERSION = 1
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
DTYPE_NAMES = {v: k for k, v in DTYPES.items()}
MODULE_FILES = {"clip": "clip_text.pt", "t5": "t5_encoder.pt", "transformer": "transformer.pt",
                "ae": "ae_decoder.pt"}
CLIP_MAX_LENGTH = 77
T5_MAX_LENGTH = 512


class Progress:
    def __init__(self, quiet):
        self.quiet = quiet
        self.t0 = time.monotonic()

    def __call__(self, msg):
        if not self.quiet:
            print(f"[{time.monotonic() - self.t0:7.1f}s] {msg}", file=sys.stderr, flush=True)


def sha256_file(path, progress=None):
    h = hashlib.sha256()
    size = os.path.getsize(path)
    done, next_report = 0, 1 << 30
    with open(path, "rb") as f:
        while True:
            chunk = f.read(16 << 20)
            if not chunk:
                break
            h.update(chunk)
            done += len(chunk)
            if progress and done >= next_report:
                progress(f"  sha256 {os.path.basename(path)}: {100 * done // size}%")
                next_report += 1 << 30
    return h.hexdigest()


def parse_device(s):
    if s == "cpu":
        return "cpu"
    if s == "cuda" or (s.startswith("cuda:") and s[5:].isdigit()):
        if not torch.cuda.is_available():
            raise CheckpointError(f"device '{s}' asked for, but this torch has no CUDA device")
        return s
    raise argparse.ArgumentTypeError(f"bad device '{s}' (cpu, cuda or cuda:N)")


def example_inputs(part, ck, dtype, device):
    """Minimal inputs for a smoke run of a saved module."""
    if part == "clip":
        ids = torch.full((1, CLIP_MAX_LENGTH), ck.clip_params.vocab_size - 1, dtype=torch.long)
        ids[0, 0] = 0
        return (ids.to(device),)
    if part == "t5":
        return (torch.ones(1, 8, dtype=torch.long, device=device),)
    if part == "ae":
        return (torch.zeros(1, ck.ae_params.z_channels, 8, 8, dtype=dtype, device=device),)
    fp = ck.flux_params
    w = h = 64
    n = (w // 16) * (h // 16)
    return (torch.zeros(1, n, fp.in_channels, dtype=dtype, device=device),
            sampling.img_ids(w, h).to(device),
            torch.zeros(1, 4, fp.context_in_dim, dtype=dtype, device=device),
            sampling.txt_ids(4).to(device),
            torch.ones(1, dtype=dtype, device=device),
            torch.zeros(1, fp.vec_in_dim, dtype=dtype, device=device),
            torch.full((1,), 3.5, dtype=dtype, device=device))


def export_module(ck, part, path, dtype, device, progress, verify, weights=None,
                  hash_files=True, lora_map=None, fuse=None):
    """Loads, merges the LoRAs of fuse ([(lora.LoraFile, scale)]) into, quantises (transformer
    and T5, when weights is a quantised format), scripts and saves one part; lora_map (the
    lora_map.json object) is checked against the quantised module. Returns its manifest entry:
    file, bytes, sha256 (None without hash_files), weights and the memory figures of
    quant.memory_record."""
    progress(f"loading {part}")
    module = ck.load(part, dtype, device,
                     progress=lambda i, n: progress(f"  {part}: {i}/{n} tensors"))
    if fuse and part in lora.MODULE_KEYS:
        n = lora.merge_into({part: module}, fuse)
        progress(f"fused LoRAs into {n} layers of {part}")
    fmt = weights if (weights in quant.QUANTISED and part in quant.PREFIXES) \
        else DTYPE_NAMES[dtype]
    if fmt in quant.QUANTISED:
        progress(f"quantising {part} to {fmt}")
    wrec = quant.quantise_module(module, part, fmt, dtype)
    if lora_map is not None and part in lora.MODULE_KEYS:
        lora.check_module(lora_map, part, module)
    mem = quant.memory_record(module, part)
    progress(f"scripting {part}")
    scripted = torch.jit.script(module)
    progress(f"saving {part}")
    torch.jit.save(scripted, path)
    progress(f"saved {part} ({os.path.getsize(path) / 1e9:.3f} GB)")
    del module, scripted
    gc.collect()
    if verify:
        progress(f"verifying {part}")
        m = torch.jit.load(path, map_location=device)
        with torch.inference_mode():
            out = m(*example_inputs(part, ck, dtype, device))
        if not torch.isfinite(out.float()).all():
            raise RuntimeError(f"{part}: the exported module gives non-finite values")
        del m
    return dict({"file": os.path.basename(path), "bytes": os.path.getsize(path),
                 "sha256": sha256_file(path) if hash_files else None, "weights": wrec}, **mem)


def plan_module(ck, part, dtype, weights):
    """The manifest entry export_module would write, from shapes alone (ck.meta(part, dtype)
    gives the module on the meta device): for a manifest-only model dir at the real sizes."""
    fmt = weights if (weights in quant.QUANTISED and part in quant.PREFIXES) \
        else DTYPE_NAMES[dtype]
    wrec, mem = quant.planned_record(ck.meta(part, dtype), part, fmt, dtype)
    return dict({"file": MODULE_FILES[part], "bytes": mem["param_bytes"], "sha256": "",
                 "weights": wrec}, **mem)


def clip_special_ids(vocab_path):
    with open(vocab_path, encoding="utf-8") as f:
        vocab = json.load(f)
    try:
        return vocab["<|startoftext|>"], vocab["<|endoftext|>"]
    except KeyError:
        raise CheckpointError(f"'{vocab_path}': no <|startoftext|> / <|endoftext|> entries") \
            from None


def build_manifest(ck, name, dtype_name, device, modules, sources, weights=None,
                   attention=None):
    bos, eos = clip_special_ids(os.path.join(ck.tokenizer_dir, "vocab.json"))
    ap = ck.ae_params
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "name": name,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "exporter": {"version": __version__, "torch": torch.__version__},
        "layout": ck.layout,
        "dtype": dtype_name,
        "weights": weights or dtype_name,
        "attention": attention or ("sdpa" if HAS_SDPA else "explicit"),
        "device": device,
        "modules": {
            "clip_text": dict(modules["clip"], params=ck.clip_params.to_dict(),
                              inputs=["input_ids int64 (B, 77)"],
                              output="pooled float (B, hidden)"),
            "t5_encoder": dict(modules["t5"], params=ck.t5_params.to_dict(),
                               inputs=["input_ids int64 (B, L)"],
                               output="hidden states (B, L, d_model)"),
            "transformer": dict(modules["transformer"], params=ck.flux_params.to_dict(),
                                inputs=["img (B, L, 64) dtype", "img_ids (B, L, 3) float32",
                                        "txt (B, Lt, context) dtype", "txt_ids (B, Lt, 3) float32",
                                        "timesteps (B,) dtype", "y (B, vec) dtype",
                                        "guidance (B,) dtype"],
                                output="velocity (B, L, 64) dtype"),
            "ae_decoder": dict(modules["ae"], params=ap.to_dict(),
                               inputs=["z (B, 16, H/8, W/8) dtype, raw latents"],
                               output="rgb (B, 3, H, W) dtype, about [-1, 1]",
                               applies_scale_shift=True),
        },
        "tokenizers": {
            "clip": {"vocab": "tokenizer/vocab.json", "merges": "tokenizer/merges.txt",
                     "max_length": CLIP_MAX_LENGTH, "bos_id": bos, "eos_id": eos, "pad_id": eos},
            "t5": {"model": "tokenizer_2/spiece.model", "max_length": T5_MAX_LENGTH,
                   "eos_id": 1, "pad_id": 0},
        },
        "latent": {"channels": ap.z_channels, "downsample": ap.downsample, "patch": 2,
                   "scale_factor": ap.scale_factor, "shift_factor": ap.shift_factor},
        "schedule": {"base_seq_len": sampling.BASE_SEQ, "base_shift": sampling.BASE_SHIFT,
                     "max_seq_len": sampling.MAX_SEQ, "max_shift": sampling.MAX_SHIFT},
        "defaults": {"steps": 28, "guidance": 3.5, "width": 1024, "height": 1024},
        "limits": {"multiple_of": 16, "min_size": 64, "max_size": 2048},
        "sources": sources,
    }


def check_weights(weights, dtype_name, manifest_only=False):
    """Raises WeightsError when the format cannot be written here (fp8 on an old torch: a
    manifest-only dir makes no tensors and may plan it) or does not go with the compute dtype
    (plain weights are stored in it)."""
    if weights is None or weights == dtype_name:
        return
    if weights in quant.PLAIN:
        raise WeightsError(f"--weights {weights} with --dtype {dtype_name}: plain weights are "
                           f"stored in the compute dtype; use --dtype {weights}")
    if weights == "fp8" and quant.fp8_refusal() and not manifest_only:
        raise WeightsError(quant.fp8_refusal())
    if weights not in quant.QUANTISED:
        raise WeightsError(f"--weights {weights}: not one of {', '.join(quant.FORMATS)}")


class WeightsError(ValueError):
    """A weight format this exporter cannot write with these arguments or this torch."""


def write_model_dir(ck, out, source_root, name, dtype_name, device, force, verify, progress,
                    weights=None, manifest_only=False, attention=None, hash_files=True,
                    reuse=None, extra=None, fuse_loras=None):
    """Writes the model dir for a resolved checkpoint (anything with the Checkpoint interface:
    params, tokenizer dirs, source_files() and load()). Assembled in a temporary sibling and
    renamed into place; nothing is left behind on failure. weights: a quant.FORMATS name for
    the transformer's and T5's block layers (None: plain, in dtype_name). manifest_only: no
    module files, only the manifest (and tokenizers) with the sizes the export would have,
    for `fluxgen --plan` at sizes that cannot be exported here; marked "manifest_only";
    attention ("sdpa" or "explicit") then names the target torch's attention path (default:
    this torch's). hash_files=False leaves the modules' sha256 out (None); reuse maps a part to
    (file path, manifest entry) of a module already written with the same weights,
    hard-linked (or copied) instead of exported; extra adds top-level manifest keys.
    fuse_loras: [(file, scale)] merged into the weights (each file read and checked against the
    model's lora map before anything is written). Every dir gets lora_map.json."""
    check_weights(weights, dtype_name, manifest_only)
    if attention and not manifest_only:
        raise WeightsError("the attention path is the exporting torch's; it can only be chosen "
                           "for a manifest-only dir")
    dtype = DTYPES[dtype_name]
    out = os.path.abspath(out)
    if os.path.exists(out) and not force:
        raise CheckpointError(f"'{out}' exists (use --force to replace it)")
    lora_map = lora.build_map(ck.flux_params, ck.clip_params, ck.t5_params, dtype_name, weights)
    fuse, fused = None, []
    if fuse_loras:
        if manifest_only or reuse:
            raise WeightsError("--fuse-lora changes the weights: it needs a full export (not "
                               "manifest-only, no reused modules)")
        fuse = lora.read_all(fuse_loras, lora.LoraMap(lora_map))
        for (path, scale), (lf, _) in zip(fuse_loras, fuse):
            progress(f"LoRA '{path}': {len(lf.entries)} entries, layouts "
                     f"{', '.join(lf.layouts)}, rank {'/'.join(map(str, lf.ranks))}")
            fused.append({"file": os.path.basename(path), "sha256": sha256_file(path),
                          "scale": scale})
    os.makedirs(os.path.dirname(out), exist_ok=True)
    tmp = f"{out}.tmp-{os.getpid()}"
    try:
        os.makedirs(tmp)
        sources = []
        for path in ck.source_files():
            size = os.path.getsize(path)
            progress(f"hashing {path} ({size / 1e9:.2f} GB)")
            sources.append({"path": os.path.relpath(path, source_root), "bytes": size,
                            "sha256": sha256_file(path, progress)})
        modules = {}
        for part in ("clip", "t5", "transformer", "ae"):
            dst = os.path.join(tmp, MODULE_FILES[part])
            if manifest_only:
                modules[part] = plan_module(ck, part, dtype, weights)
            elif reuse and part in reuse:
                src, entry = reuse[part]
                progress(f"reusing {part} from {src}")
                try:
                    os.link(src, dst)
                except OSError:
                    shutil.copyfile(src, dst)
                modules[part] = dict(entry, file=MODULE_FILES[part])
            else:
                modules[part] = export_module(ck, part, dst, dtype, device, progress, verify,
                                              weights, hash_files, lora_map, fuse)
        for sub, names in (("tokenizer", ("vocab.json", "merges.txt")),
                           ("tokenizer_2", ("spiece.model",))):
            src_dir = ck.tokenizer_dir if sub == "tokenizer" else ck.tokenizer2_dir
            os.makedirs(os.path.join(tmp, sub))
            for n in names:
                shutil.copyfile(os.path.join(src_dir, n), os.path.join(tmp, sub, n))
        map_path = os.path.join(tmp, lora.MAP_FILE)
        lora.write_map(map_path, lora_map)
        manifest = dict(build_manifest(ck, name, dtype_name, device, modules, sources, weights,
                                       attention), **(extra or {}))
        manifest["lora_map"] = {"file": lora.MAP_FILE, "bytes": os.path.getsize(map_path),
                                "sha256": sha256_file(map_path),
                                "layers": len(lora_map["layers"])}
        if fused:
            manifest["fused_loras"] = fused
        if manifest_only:
            manifest["manifest_only"] = True
        with open(os.path.join(tmp, "manifest.json"), "w") as f:
            json.dump(manifest, f, indent=2)
            f.write("\n")
        old = None
        if os.path.exists(out):
            old = f"{out}.old-{os.getpid()}"
            os.rename(out, old)
        os.rename(tmp, out)
        tmp = None
        if old:
            shutil.rmtree(old)
    finally:
        if tmp and os.path.exists(tmp):
            shutil.rmtree(tmp, ignore_errors=True)
    progress(f"wrote {out}")


def run(args, progress):
    check_weights(args.weights, args.dtype)
    device = parse_device(args.device)
    progress(f"reading checkpoint headers under '{args.source}'")
    ck = open_checkpoint(args.source, args.layout, args.transformer, args.ae,
                         [int(a) for a in args.axes_dim.split(",")] if args.axes_dim else None)
    progress(f"layout {ck.layout}; transformer {ck.flux_params.to_dict()}")
    write_model_dir(ck, args.out, args.source, args.name, args.dtype, device, args.force,
                    args.verify, progress, args.weights, fuse_loras=args.fuse_lora)


def lora_spec(s):
    try:
        return lora.parse_spec(s)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def main(cmd, argv):
    ap = argparse.ArgumentParser(
        prog=f"fluxexport {cmd}", description="Export a FLUX.1 checkpoint to a fluxcgi model dir.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=f"{PYTHON_HINT}\n\nexit status: 0 ok, 1 bad checkpoint or input, 2 bad arguments, "
               "3 other failure\n(I/O, torch), 130 interrupted.")
    ap.add_argument("--source", required=True,
                    help="checkpoint folder (BFL files + text encoder folders, or diffusers)")
    ap.add_argument("-o", "--out", required=True, help="model dir to write")
    ap.add_argument("--layout", choices=("auto", "bfl", "diffusers"), default="auto")
    ap.add_argument("--transformer", help="BFL transformer file (default: SOURCE/flux1-*.safetensors)")
    ap.add_argument("--ae", help="BFL autoencoder file (default: SOURCE/ae.safetensors)")
    ap.add_argument("--axes-dim", help="RoPE axes, e.g. 16,56,56 (default: from the head dim)")
    ap.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (trace target)")
    ap.add_argument("--dtype", choices=sorted(DTYPES), default="fp32",
                    help="compute dtype (and storage of everything not quantised)")
    ap.add_argument("--weights", choices=quant.FORMATS, default=None,
                    help="storage of the linear layers in the transformer's and T5's blocks: "
                         "int8 (half of bf16), fp8 (torch 2.1+), int4 (0.27 of bf16); "
                         "default: plain, in --dtype")
    ap.add_argument("--name", default="flux1-krea-dev", help="model name for the manifest")
    ap.add_argument("--force", action="store_true", help="replace an existing model dir")
    ap.add_argument("--verify", action="store_true", help="run each saved module once")
    ap.add_argument("--quiet", action="store_true", help="no progress output")
    ap.add_argument("--fuse-lora", action="append", type=lora_spec, metavar="FILE:SCALE",
                    help="merge a LoRA into the weights before export (repeatable; SCALE "
                         "default 1)")
    args = ap.parse_args(argv)
    progress = Progress(args.quiet)
    try:
        run(args, progress)
    except CheckpointError as e:
        print(f"fluxexport: error: {e}", file=sys.stderr)
        return 1
    except (argparse.ArgumentTypeError, WeightsError) as e:
        print(f"fluxexport: error: {e}", file=sys.stderr)
        return 2
    except (OSError, RuntimeError, ValueError) as e:
        print(f"fluxexport: failed: {e}", file=sys.stderr)
        return 3
    except KeyboardInterrupt:
        print("fluxexport: interrupted", file=sys.stderr)
        return 130
    return 0
