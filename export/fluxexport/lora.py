"""LoRA adapters: the map of adaptable layers (lora_map.json), a strict reader of LoRA files in
the layouts users download, the merge into weights, and random LoRAs for tests.

    python3 -m fluxexport lora-random --model-dir DIR -o PREFIX --rank R [--alpha A]
        [--seed S] [--layers all|blocks|attn] [--text-encoders] [--scale-up X]
        [--dtype fp32|bf16|fp16]

A LoRA changes the weight W (out x in) of a linear layer by
    delta = scale * (alpha / rank) * up @ down,   down: rank x in,  up: rows x rank
(alpha = rank when the file has none for that layer). Key forms, prefixes and suffixes:
keymap.py ("LoRA adapters") and docs/architecture.md. The map lists every Linear of the
transformer, CLIP and T5 under its canonical name, which is also its attribute path inside the
exported TorchScript module, with its shape, its weight format and its diffusers names (the
rows each covers, and whether its halves are swapped); the exporter writes it into every model
dir, and the C reader (core/lora.h) follows the same file.

The reader accounts for every key (unknown ones are named), needs down and up for every
adapted name with matching ranks and the layer's shapes, finite values, F32/F16/BF16 factors
and a one-value alpha, and refuses two names adapting the same rows of a layer. Nothing is
merged until every file has been read and checked.

lora-random writes PREFIX.kohya.safetensors, PREFIX.diffusers.safetensors and
PREFIX.bfl.safetensors holding the same deltas: the diffusers file repeats the down matrix of
a fused layer for each of its names and slices the up rows (swapping the final layer's
halves), and all three carry the same alpha, so the merged weights are bit-identical.
--layers: all (every transformer Linear), blocks (those inside double_blocks / single_blocks),
attn (the double blocks' img_attn / txt_attn qkv and proj); --text-encoders adds every Linear
of CLIP and T5. The sizes come from DIR/lora_map.json alone, so a manifest-only model dir
(random-model --manifest-only --dims full) gives a full-size LoRA. down ~ N(0, 1/in), up
scaled so that the delta's entries have about --scale-up times the spread of an N(0, 1/in)
weight: the image changes visibly and stays an image.
"""

import argparse
import json
import math
import os
import sys

import torch
from torch import nn

from . import keymap, quant
from .clip import CLIPTextModel
from .flux import Flux
from .stio import FLOAT_DTYPES, CheckpointError, SafeTensorsFile
from .stio import write as write_safetensors
from .t5 import T5EncoderModel

MAP_FILE = "lora_map.json"
MAP_FORMAT = "fluxcgi-lora-map"
MAP_VERSION = 1
MODULE_KEYS = {"transformer": "transformer", "clip": "clip_text", "t5": "t5_encoder"}
SCALE_MAX = 16.0            # core/lora.h FX_LORA_SCALE_MAX
ALPHA_DTYPES = FLOAT_DTYPES + ("F64", "I64", "I32", "I16", "I8", "U8")
SHOW = 5
# Which of the map's suffixes each layout writes (lora-random): kohya's lora_down / lora_up,
# PEFT's and ComfyUI's lora_A / lora_B.
WRITE_SUFFIX = {"kohya": 0, "diffusers": 1, "bfl": 1}


class LoraError(CheckpointError):
    """A LoRA file (or a model dir's lora_map.json) that cannot be used as it is."""


def _names(items):
    items = sorted(items)
    more = f" (and {len(items) - SHOW} more)" if len(items) > SHOW else ""
    return ", ".join(f"'{k}'" for k in items[:SHOW]) + more


# ----------------------------------------------------------------------------- the map

def linear_format(name, m, part, weights, dtype_name):
    """The stored format of one linear layer: its class when already quantised, else what
    `export --weights` makes of it (quant.quantise_module's choice)."""
    if isinstance(m, quant.Int8Linear):
        return "int8"
    if isinstance(m, quant.FP8Linear):
        return "fp8"
    if isinstance(m, quant.Int4Linear):
        return "int4"
    if (weights in quant.QUANTISED and part in quant.PREFIXES
            and name.startswith(quant.PREFIXES[part]) and quant.quantisable(m, weights)):
        return weights
    return dtype_name


LINEAR_TYPES = (nn.Linear, quant.Int8Linear, quant.FP8Linear, quant.Int4Linear)


def map_layers(module, part, dtype_name, weights=None, hidden=None, mlp_hidden=None):
    """The map's layer entries of one part, walking its module (eager or on the meta device)
    for every linear layer."""
    out = []
    for name, m in module.named_modules():
        if not isinstance(m, LINEAR_TYPES):
            continue
        entry = {"part": part, "layer": name, "out": int(m.out_features),
                 "in": int(m.in_features),
                 "format": linear_format(name, m, part, weights, dtype_name),
                 "diffusers": keymap.lora_diffusers_targets(part, name, int(m.out_features),
                                                            hidden, mlp_hidden)}
        out.append(entry)
    return out


def build_map(flux_params, clip_params, t5_params, dtype_name="fp32", weights=None):
    """The lora_map.json object for a model of these dimensions, dtype and weight format,
    from modules built on the meta device (no storage: works at full size)."""
    layers = []
    for part, cls, p in (("transformer", Flux, flux_params), ("clip", CLIPTextModel, clip_params),
                         ("t5", T5EncoderModel, t5_params)):
        m = cls(p, device="meta")
        layers += map_layers(m, part, dtype_name, weights, flux_params.hidden_size,
                             flux_params.mlp_hidden)
    return {"format": MAP_FORMAT, "version": MAP_VERSION,
            "suffixes": {k: list(v) for k, v in keymap.LORA_SUFFIXES.items()},
            "parts": {p: {lay: list(v) for lay, v in keymap.LORA_PREFIXES[p].items()}
                      for p in keymap.LORA_PARTS},
            "layers": layers}


def submodule(module, path):
    """module.a.b.c for path 'a.b.c' (works on TorchScript modules, which lack
    get_submodule)."""
    for p in path.split("."):
        module = getattr(module, p)
    return module


def stored_format(sub):
    """The format of a linear layer inside an eager or TorchScript module, from its tensors."""
    if hasattr(sub, "packed"):
        return "int4"
    if hasattr(sub, "qweight"):
        return "int8" if sub.qweight.dtype == torch.int8 else "fp8"
    return {torch.float32: "fp32", torch.bfloat16: "bf16"}.get(sub.weight.dtype,
                                                               str(sub.weight.dtype))


def check_module(lmap, part, module):
    """Checks that every layer the map lists for part is in module (eager or TorchScript) at
    its attribute path with the map's shape and format; raises AssertionError otherwise (the
    map and the export disagree: a bug, not bad input)."""
    for e in lmap["layers"]:
        if e["part"] != part:
            continue
        try:
            sub = submodule(module, e["layer"])
        except AttributeError:
            raise AssertionError(f"lora map: '{e['layer']}' is not in the {part} module") \
                from None
        fmt = stored_format(sub)
        shape = (int(sub.out_features), int(sub.in_features)) if fmt in quant.QUANTISED \
            else tuple(sub.weight.shape)
        if fmt != e["format"] or shape != (e["out"], e["in"]):
            raise AssertionError(f"lora map: '{e['layer']}' is {fmt} {list(shape)} in the "
                                 f"module, {e['format']} [{e['out']}, {e['in']}] in the map")


def write_map(path, lmap):
    """Writes the map as JSON, one layer a line."""
    head = {k: v for k, v in lmap.items() if k != "layers"}
    text = json.dumps(head, indent=1)[:-2]
    text += ',\n "layers": [\n  ' + ",\n  ".join(json.dumps(e) for e in lmap["layers"])
    with open(path, "w") as f:
        f.write(text + "\n ]\n}\n")


def _bad_map(path, what):
    return LoraError(f"'{path}': {what}")


def validate_map(d, path):
    """Checks the structure of a lora_map.json object; returns it."""
    if not isinstance(d, dict) or d.get("format") != MAP_FORMAT or d.get("version") != MAP_VERSION:
        raise _bad_map(path, f"not a {MAP_FORMAT} version {MAP_VERSION} file")
    suf = d.get("suffixes")
    if not isinstance(suf, dict) or set(suf) != {"down", "up", "alpha"} or not all(
            isinstance(v, list) and v and all(isinstance(s, str) and s for s in v)
            for v in suf.values()):
        raise _bad_map(path, "'suffixes' must map down, up and alpha to lists of strings")
    parts = d.get("parts")
    if not isinstance(parts, dict) or set(parts) != set(keymap.LORA_PARTS):
        raise _bad_map(path, f"'parts' must have {', '.join(keymap.LORA_PARTS)}")
    for p, lays in parts.items():
        if not isinstance(lays, dict) or set(lays) != set(keymap.LORA_LAYOUTS) or not all(
                isinstance(v, list) and all(isinstance(s, str) and s for s in v)
                for v in lays.values()):
            raise _bad_map(path, f"'parts.{p}' must map kohya, diffusers and bfl to prefixes")
    layers = d.get("layers")
    if not isinstance(layers, list) or not layers:
        raise _bad_map(path, "'layers' must be a non-empty list")

    def pos_int(v, zero=False):
        return isinstance(v, int) and not isinstance(v, bool) and (v >= 0 if zero else v > 0)

    for i, e in enumerate(layers):
        where = f"'layers[{i}]'"
        if not isinstance(e, dict) or e.get("part") not in keymap.LORA_PARTS or \
                not isinstance(e.get("layer"), str) or not e["layer"] or \
                not pos_int(e.get("out")) or not pos_int(e.get("in")) or \
                e.get("format") not in quant.FORMATS or not isinstance(e.get("diffusers"), list) \
                or not e["diffusers"]:
            raise _bad_map(path, f"{where} needs part, layer, out, in, format and diffusers")
        for t in e["diffusers"]:
            if not isinstance(t, dict) or not isinstance(t.get("name"), str) or not t["name"] \
                    or not pos_int(t.get("row0"), True) or not pos_int(t.get("rows")) \
                    or t["row0"] + t["rows"] > e["out"] \
                    or not isinstance(t.get("swap", False), bool) \
                    or (t.get("swap") and t["rows"] % 2):
                raise _bad_map(path, f"{where} ('{e['layer']}'): bad diffusers entry {t!r}")
    return d


def read_map(model_dir):
    """model_dir/lora_map.json, validated."""
    path = os.path.join(model_dir, MAP_FILE)
    if not os.path.isfile(path):
        raise LoraError(f"model dir '{model_dir}' was exported without {MAP_FILE}; re-export "
                        "it (fluxexport export) to use LoRAs")
    try:
        with open(path, encoding="utf-8") as f:
            d = json.load(f)
    except (OSError, ValueError) as e:
        raise LoraError(f"'{path}': unreadable ({e})") from None
    return validate_map(d, path)


class Target:
    """What one key base (prefix + name) adapts: rows row0..row0+rows of a layer."""
    __slots__ = ("part", "layer", "out", "in_", "row0", "rows", "swap", "layout")

    def __init__(self, part, layer, out, in_, row0, rows, swap, layout):
        self.part, self.layer, self.out, self.in_ = part, layer, out, in_
        self.row0, self.rows, self.swap, self.layout = row0, rows, swap, layout


class LoraMap:
    """A lora_map.json object with its key index: every key base a LoRA file may use."""

    def __init__(self, d, where="lora map"):
        self.data = d
        self.suffixes = d["suffixes"]
        self.layers = {(e["part"], e["layer"]): e for e in d["layers"]}
        self.index = {}
        for e in d["layers"]:
            part, layer = e["part"], e["layer"]
            whole = (e["out"], e["in"], 0, e["out"], False)
            forms = [("bfl", layer, whole), ("kohya", layer.replace(".", "_"), whole)]
            forms += [("diffusers", t["name"], (e["out"], e["in"], t["row0"], t["rows"],
                                                bool(t.get("swap", False))))
                      for t in e["diffusers"]]
            for layout, name, (out, in_, row0, rows, swap) in forms:
                for prefix in d["parts"][part][layout]:
                    base = prefix + name
                    t = Target(part, layer, out, in_, row0, rows, swap, layout)
                    old = self.index.get(base)
                    if old is not None and (old.part, old.layer, old.row0, old.rows) != \
                            (part, layer, row0, rows):
                        raise LoraError(f"{where}: the name '{base}' would stand for both "
                                        f"'{old.layer}' and '{layer}'")
                    self.index[base] = t
        # longest first: a suffix that ends another is tried before it
        self.by_suffix = sorted(((s, kind) for kind, v in self.suffixes.items() for s in v),
                                key=lambda x: -len(x[0]))

    @classmethod
    def from_model_dir(cls, model_dir):
        return cls(read_map(model_dir), f"'{os.path.join(model_dir, MAP_FILE)}'")

    @classmethod
    def from_params(cls, flux_params, clip_params, t5_params):
        return cls(build_map(flux_params, clip_params, t5_params))

    def key(self, part, layout, name, kind):
        """The key lora-random writes: the layout's first prefix for part, its suffix."""
        return self.data["parts"][part][layout][0] + name + \
            self.suffixes[kind][WRITE_SUFFIX[layout] if kind != "alpha" else 0]

    def split(self, key):
        """(base, kind) of a key, or None when no suffix fits."""
        for s, kind in self.by_suffix:
            if key.endswith(s) and len(key) > len(s):
                return key[:-len(s)], kind
        return None


# ----------------------------------------------------------------------------- reading

class Entry:
    """One adapted (layer, rows) of a LoRA file, its factors in float32."""
    __slots__ = ("part", "layer", "out", "in_", "row0", "rows", "swap", "rank", "alpha",
                 "factor", "down", "up", "base", "layout")

    def delta(self, scale=1.0):
        """scale * factor * up @ down for this entry's rows, swap applied (rows x in, float32).
        The product is accumulated in float64 and rounded once, so a row's delta does not
        depend on how the file splits the layer's rows between names."""
        d = (self.up.double() @ self.down.double()) * (float(scale) * self.factor)
        d = d.float()
        if self.swap:
            a, b = d.chunk(2, dim=0)
            d = torch.cat((b, a), dim=0)
        return d


class LoraFile:
    """A read and checked LoRA file: entries, the layouts its keys use, its path."""

    def __init__(self, path, entries, layouts, metadata):
        self.path = path
        self.entries = entries
        self.layouts = layouts
        self.metadata = metadata

    @property
    def text_encoders(self):
        return any(e.part != "transformer" for e in self.entries)

    @property
    def ranks(self):
        return sorted({e.rank for e in self.entries})


def read(path, lmap):
    """Reads and checks a LoRA file against lmap (a LoraMap); returns a LoraFile or raises
    LoraError naming the file, the key and the reason."""
    try:
        f = SafeTensorsFile(path)
    except CheckpointError as e:
        raise LoraError(f"LoRA {e}") from None
    where = f"LoRA '{path}'"
    groups, unknown = {}, []
    for key in f.keys():
        sp = lmap.split(key)
        if sp is None or sp[0] not in lmap.index:
            unknown.append(key)
            continue
        base, kind = sp
        g = groups.setdefault(base, {})
        if kind in g:
            raise LoraError(f"{where}: '{key}' and '{g[kind]}' are both the {kind} of '{base}'")
        g[kind] = key
    if unknown:
        raise LoraError(f"{where}: {len(unknown)} unknown key(s) (not a LoRA factor of a layer "
                        f"of this model): {_names(unknown)}")
    if not groups:
        raise LoraError(f"{where}: no LoRA keys")
    entries, layouts, spans = [], set(), {}
    for base in sorted(groups):
        g = groups[base]
        t = lmap.index[base]
        for kind in ("down", "up"):
            if kind not in g:
                have = ", ".join(f"'{k}'" for k in g.values())
                raise LoraError(f"{where}: '{base}' has no {kind} matrix (only {have})")
        dk, uk = g["down"], g["up"]
        for k in (dk, uk):
            if f.dtype_name(k) not in FLOAT_DTYPES:
                raise LoraError(f"{where}: '{k}' has dtype {f.dtype_name(k)}; LoRA matrices "
                                "must be F32, F16 or BF16")
        ds, us = f.shape(dk), f.shape(uk)
        if len(ds) != 2 or ds[0] < 1:
            raise LoraError(f"{where}: '{dk}' has shape {list(ds)}, expected [rank, {t.in_}]")
        rank = ds[0]
        if ds[1] != t.in_:
            raise LoraError(f"{where}: '{dk}' has shape {list(ds)}, expected [{rank}, {t.in_}] "
                            f"('{t.layer}' takes {t.in_} inputs)")
        if len(us) != 2 or us[0] != t.rows:
            raise LoraError(f"{where}: '{uk}' has shape {list(us)}, expected [{t.rows}, {rank}] "
                            f"('{base}' covers {t.rows} rows of '{t.layer}')")
        if us[1] != rank:
            raise LoraError(f"{where}: rank mismatch: '{dk}' has rank {rank} but '{uk}' has "
                            f"rank {us[1]}")
        alpha = float(rank)
        if "alpha" in g:
            ak = g["alpha"]
            if f.dtype_name(ak) not in ALPHA_DTYPES or math.prod(f.shape(ak)) != 1:
                raise LoraError(f"{where}: '{ak}' must hold one number (it is "
                                f"{f.dtype_name(ak)} {list(f.shape(ak))})")
            alpha = float(f.get(ak).reshape(()).item())
            if not math.isfinite(alpha):
                raise LoraError(f"{where}: '{ak}' is not finite ({alpha})")
        down = f.get(dk).float().clone()
        up = f.get(uk).float().clone()
        for k, v in ((dk, down), (uk, up)):
            if not torch.isfinite(v).all():
                raise LoraError(f"{where}: '{k}' holds non-finite values (NaN or infinity)")
        spans.setdefault((t.part, t.layer), []).append((t.row0, t.row0 + t.rows, base))
        e = Entry()
        e.part, e.layer, e.out, e.in_ = t.part, t.layer, t.out, t.in_
        e.row0, e.rows, e.swap, e.layout, e.base = t.row0, t.rows, t.swap, t.layout, base
        e.rank, e.alpha, e.factor = rank, alpha, alpha / rank
        e.down, e.up = down, up
        entries.append(e)
        layouts.add(t.layout)
    for (part, layer), sp in spans.items():
        sp.sort()
        for (a0, a1, an), (b0, b1, bn) in zip(sp, sp[1:]):
            if b0 < a1:
                raise LoraError(f"{where}: '{an}' and '{bn}' both adapt rows {b0}..{min(a1, b1)} "
                                f"of '{layer}' ({part}); a layer's rows may be adapted once")
    return LoraFile(path, entries, sorted(layouts), f.metadata)


def parse_spec(s):
    """'FILE:SCALE' (SCALE optional, default 1) -> (FILE, scale); raises ValueError."""
    path, sep, sc = s.rpartition(":")
    if not sep or not path:
        path, sc = s, "1"
    try:
        scale = float(sc)
    except ValueError:
        raise ValueError(f"LoRA '{s}': scale '{sc}' is not a number (FILE:SCALE)") from None
    if not math.isfinite(scale) or abs(scale) > SCALE_MAX:
        raise ValueError(f"LoRA '{s}': scale {sc} must be finite and at most {SCALE_MAX:g} in "
                         "magnitude")
    return path, scale


def read_all(specs, lmap):
    """[(path, scale)] -> [(LoraFile, scale)], every file read and checked."""
    return [(read(p, lmap), s) for p, s in specs]


# ----------------------------------------------------------------------------- merging

def layer_deltas(loras, parts=None):
    """{(part, layer): [(row0, rows, delta)]} of [(LoraFile, scale)], in file order."""
    out = {}
    for lf, scale in loras:
        for e in lf.entries:
            if parts is None or e.part in parts:
                out.setdefault((e.part, e.layer), []).append((e.row0, e.rows, e.delta(scale)))
    return out


def merged_weight(w, deltas):
    """w (any float dtype) + the deltas, added in float32; float32 result."""
    w32 = w.detach().float().clone()
    for row0, rows, d in deltas:
        w32[row0:row0 + rows] += d
    return w32


def merge_into(modules, loras):
    """Adds the LoRAs' deltas to the weights of modules ({part: module}, eager or TorchScript)
    in place: plain weights in float32 then back to their dtype; quantised ones dequantised,
    patched and quantised again with new scales. Layers of parts not in modules are skipped.
    Returns the number of layers changed."""
    n = 0
    for (part, layer), deltas in layer_deltas(loras, set(modules)).items():
        sub = submodule(modules[part], layer)
        fmt = stored_format(sub)
        with torch.no_grad():
            if fmt in quant.QUANTISED:
                q = sub.packed if fmt == "int4" else sub.qweight
                w = merged_weight(quant.dequantise_weight(q, sub.scale, fmt), deltas)
                q2, s2 = quant.quantise_weight(w, fmt, sub.scale.dtype)
                q.copy_(q2)
                sub.scale.copy_(s2)
            else:
                sub.weight.copy_(merged_weight(sub.weight, deltas).to(sub.weight.dtype))
        n += 1
    return n


def merge_state(state, loras):
    """Adds the LoRAs' deltas to canonical weights {part: {name: tensor}} (names
    '<layer>.weight'); returns a new dict with the changed tensors replaced."""
    out = {p: dict(sd) for p, sd in state.items()}
    for (part, layer), deltas in layer_deltas(loras, set(state)).items():
        w = state[part][f"{layer}.weight"]
        out[part][f"{layer}.weight"] = merged_weight(w, deltas).to(w.dtype)
    return out


# ----------------------------------------------------------------------------- lora-random

def select_layers(lmap, layers, text_encoders):
    chosen = []
    for e in lmap.data["layers"]:
        if e["part"] != "transformer":
            if text_encoders:
                chosen.append(e)
            continue
        name = e["layer"]
        if layers == "all" or \
                (layers == "blocks" and name.startswith(("double_blocks.", "single_blocks."))) or \
                (layers == "attn" and name.startswith("double_blocks.")
                 and name.endswith(("_attn.qkv", "_attn.proj"))):
            chosen.append(e)
    return chosen


def random_factors(layers, rank, alpha, seed, scale_up, dtype):
    """[(layer entry, down, up)] in dtype: down ~ N(0, 1/in); up such that the delta's entries
    spread about scale_up / sqrt(in) (the spread of an N(0, 1/in) weight times scale_up)."""
    g = torch.Generator().manual_seed(seed)
    factor = alpha / rank
    out = []
    for e in layers:
        down = torch.randn(rank, e["in"], generator=g) * e["in"] ** -0.5
        up = torch.randn(e["out"], rank, generator=g) * (scale_up / (factor * math.sqrt(rank)))
        out.append((e, down.to(dtype), up.to(dtype)))
    return out


def layout_tensors(lmap, factors, alpha, layout):
    """The tensors of one layout's file for the same factors."""
    out = {}
    a = torch.tensor(float(alpha), dtype=torch.float32)
    for e, down, up in factors:
        part, layer = e["part"], e["layer"]
        if layout == "diffusers":
            names = []
            for t in e["diffusers"]:
                u = up[t["row0"]:t["row0"] + t["rows"]]
                if t.get("swap"):
                    h1, h2 = u.chunk(2, dim=0)
                    u = torch.cat((h2, h1), dim=0)
                names.append((t["name"], u))
        else:
            names = [(layer if layout == "bfl" else layer.replace(".", "_"), up)]
        for name, u in names:
            out[lmap.key(part, layout, name, "down")] = down.clone()
            out[lmap.key(part, layout, name, "up")] = u.contiguous().clone()
            out[lmap.key(part, layout, name, "alpha")] = a.clone()
    return out


def write_random(model_dir, prefix, rank, alpha=None, seed=0, layers="all", text_encoders=False,
                 scale_up=0.3, dtype=torch.bfloat16):
    """Writes the three layouts; returns {layout: path}."""
    lmap = LoraMap.from_model_dir(model_dir)
    alpha = rank / 2 if alpha is None else alpha
    chosen = select_layers(lmap, layers, text_encoders)
    if not chosen:
        raise LoraError(f"'{model_dir}': no layers chosen by --layers {layers}")
    factors = random_factors(chosen, rank, alpha, seed, scale_up, dtype)
    if os.path.dirname(prefix):
        os.makedirs(os.path.dirname(prefix), exist_ok=True)
    meta = {"format": "fluxcgi-lora-random", "rank": rank, "alpha": alpha, "seed": seed,
            "layers": layers, "text_encoders": int(text_encoders), "scale_up": scale_up}
    paths = {}
    for layout in keymap.LORA_LAYOUTS:
        path = f"{prefix}.{layout}.safetensors"
        write_safetensors(path, layout_tensors(lmap, factors, alpha, layout),
                          dict(meta, layout=layout))
        paths[layout] = path
    return paths


DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def main(cmd, argv):
    ap = argparse.ArgumentParser(
        prog=f"fluxexport {cmd}", description="Write a random LoRA for a model dir in the kohya, "
        "diffusers and bfl layouts (the same deltas in each).")
    ap.add_argument("--model-dir", required=True, help="a model dir with lora_map.json")
    ap.add_argument("-o", "--out", required=True,
                    help="PREFIX: writes PREFIX.{kohya,diffusers,bfl}.safetensors")
    ap.add_argument("--rank", type=int, required=True)
    ap.add_argument("--alpha", type=float, default=None, help="alpha (default: rank / 2)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--layers", choices=("all", "blocks", "attn"), default="all")
    ap.add_argument("--text-encoders", action="store_true", help="adapt CLIP and T5 too")
    ap.add_argument("--scale-up", type=float, default=0.3,
                    help="delta spread relative to an N(0, 1/in) weight (0.3)")
    ap.add_argument("--dtype", choices=sorted(DTYPES), default="bf16",
                    help="dtype of the down and up matrices (alpha is F32)")
    args = ap.parse_args(argv)
    if args.rank < 1:
        ap.error("--rank must be at least 1")
    if args.alpha is not None and not math.isfinite(args.alpha):
        ap.error("--alpha must be finite")
    if not math.isfinite(args.scale_up):
        ap.error("--scale-up must be finite")
    try:
        paths = write_random(args.model_dir, args.out, args.rank, args.alpha, args.seed,
                             args.layers, args.text_encoders, args.scale_up, DTYPES[args.dtype])
    except CheckpointError as e:
        print(f"fluxexport: error: {e}", file=sys.stderr)
        return 1
    except OSError as e:
        print(f"fluxexport: failed: {e}", file=sys.stderr)
        return 3
    for p in paths.values():
        print(p)
    return 0
