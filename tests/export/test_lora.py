"""LoRA adapters on the tiny model: the lora_map.json the exporter writes, the three layouts of
`fluxexport lora-random` (the same merged weights), the strict reader's refusals, scaling,
`export --fuse-lora` and the reference pipeline with LoRAs."""

import hashlib
import json
import os
import shutil
import tempfile
import unittest

import torch
from torch import nn

from tests.export import helpers
from fluxexport import keymap, lora, quant, stio  # noqa: E402 (helpers sets the path)
from fluxexport.clip import CLIPTextModel
from fluxexport.flux import Flux
from fluxexport.reference import Pipeline
from fluxexport.t5 import T5EncoderModel

LAYOUTS = ("kohya", "diffusers", "bfl")
PARTS = {"transformer": "transformer.pt", "clip": "clip_text.pt", "t5": "t5_encoder.pt"}
RANK, ALPHA = 4, 3.0

_CACHE = {}


def model_dir(weights=None):
    """The tiny model exported from the BFL layout (fp32; weights: a quantised format)."""
    if weights is None:
        return helpers.exported("bfl")
    if weights not in _CACHE:
        root, _ = helpers.tiny_checkpoints()
        out = os.path.join(root, f"model-bfl-{weights}")
        res = helpers.run_cli("export", "--source", os.path.join(root, "bfl"), "-o", out,
                              "--quiet", "--weights", weights)
        if res.returncode != 0:
            raise RuntimeError(f"export failed: {res.stderr}")
        _CACHE[weights] = out
    return _CACHE[weights]


def random_lora(tmp, *extra, model=None, rank=RANK, alpha=ALPHA):
    """PREFIX of the three files lora-random writes (extra: more options)."""
    prefix = os.path.join(tmp, "r")
    res = helpers.run_cli("lora-random", "--model-dir", model or model_dir(), "-o", prefix,
                          "--rank", str(rank), "--alpha", str(alpha), "--seed", "7", *extra)
    if res.returncode != 0:
        raise RuntimeError(f"lora-random failed: {res.stderr}")
    return prefix


def load_modules(model):
    return {p: torch.jit.load(os.path.join(model, f)) for p, f in PARTS.items()}


def states(modules):
    return {p: {k: v.clone() for k, v in m.state_dict().items()} for p, m in modules.items()}


def read_tensors(path):
    f = stio.SafeTensorsFile(path)
    return {k: f.get(k).clone() for k in f.keys()}


class Map(unittest.TestCase):
    """lora_map.json of the tiny model: every Linear, its rows, formats and diffusers names."""

    @classmethod
    def setUpClass(cls):
        cls.model = model_dir()
        cls.map = lora.read_map(cls.model)
        _, cls.params = helpers.tiny_checkpoints()

    def test_header_is_the_keymap_table(self):
        m = self.map
        self.assertEqual((m["format"], m["version"]), ("fluxcgi-lora-map", 1))
        self.assertEqual(m["suffixes"], {"down": [".lora_down.weight", ".lora_A.weight"],
                                         "up": [".lora_up.weight", ".lora_B.weight"],
                                         "alpha": [".alpha"]})
        self.assertEqual(m["suffixes"], keymap.LORA_SUFFIXES)
        self.assertEqual(m["parts"], keymap.LORA_PREFIXES)
        self.assertEqual(m["parts"]["transformer"]["bfl"],
                         ["diffusion_model.", "model.diffusion_model."])
        self.assertEqual(m["parts"]["clip"]["kohya"], ["lora_te1_", "lora_te_"])
        self.assertEqual(m["parts"]["t5"]["diffusers"], ["text_encoder_2."])

    def test_manifest_records_the_map(self):
        with open(os.path.join(self.model, "manifest.json")) as f:
            man = json.load(f)
        path = os.path.join(self.model, "lora_map.json")
        with open(path, "rb") as f:
            digest = hashlib.sha256(f.read()).hexdigest()
        self.assertEqual(man["lora_map"], {"file": "lora_map.json",
                                           "bytes": os.path.getsize(path), "sha256": digest,
                                           "layers": len(self.map["layers"])})
        self.assertNotIn("fused_loras", man)

    def test_layers_are_every_linear(self):
        fp, _, cp, tp = self.params
        for part, cls, p in (("transformer", Flux, fp), ("clip", CLIPTextModel, cp),
                             ("t5", T5EncoderModel, tp)):
            m = cls(p, device="meta")
            want = {n: (l.out_features, l.in_features) for n, l in m.named_modules()
                    if isinstance(l, nn.Linear)}
            got = {e["layer"]: (e["out"], e["in"]) for e in self.map["layers"]
                   if e["part"] == part}
            self.assertEqual(got, want, part)
        names = {e["layer"] for e in self.map["layers"]}
        for n in ("img_in", "txt_in", "time_in.in_layer", "vector_in.out_layer",
                  "guidance_in.in_layer", "final_layer.linear", "final_layer.adaLN_modulation.1",
                  "double_blocks.1.txt_mlp.2", "single_blocks.1.modulation.lin",
                  "text_model.encoder.layers.1.mlp.fc2",
                  "encoder.block.1.layer.1.DenseReluDense.wi_0"):
            self.assertIn(n, names)
        self.assertTrue(all(e["format"] == "fp32" for e in self.map["layers"]))

    def test_diffusers_names_are_the_keymap_rules(self):
        fp = self.params[0]
        m = Flux(fp, device="meta")
        canon = [f"{n}.weight" for n, l in m.named_modules() if isinstance(l, nn.Linear)]
        want = {s[:-len(".weight")] for r in keymap.flux_diffusers_rules(canon)
                for s in r.sources}
        got = {t["name"] for e in self.map["layers"] if e["part"] == "transformer"
               for t in e["diffusers"]}
        self.assertEqual(got, want)
        for e in self.map["layers"]:
            if e["part"] != "transformer":
                self.assertEqual(e["diffusers"], [{"name": e["layer"], "row0": 0,
                                                   "rows": e["out"]}])

    def test_rows_and_swap(self):
        h, mlp = self.params[0].hidden_size, self.params[0].mlp_hidden
        by = {e["layer"]: e for e in self.map["layers"]}
        self.assertEqual(by["double_blocks.0.img_attn.qkv"]["diffusers"], [
            {"name": "transformer_blocks.0.attn.to_q", "row0": 0, "rows": h},
            {"name": "transformer_blocks.0.attn.to_k", "row0": h, "rows": h},
            {"name": "transformer_blocks.0.attn.to_v", "row0": 2 * h, "rows": h}])
        self.assertEqual([t["name"] for t in by["double_blocks.1.txt_attn.qkv"]["diffusers"]],
                         ["transformer_blocks.1.attn.add_q_proj",
                          "transformer_blocks.1.attn.add_k_proj",
                          "transformer_blocks.1.attn.add_v_proj"])
        self.assertEqual(by["single_blocks.1.linear1"]["diffusers"], [
            {"name": "single_transformer_blocks.1.attn.to_q", "row0": 0, "rows": h},
            {"name": "single_transformer_blocks.1.attn.to_k", "row0": h, "rows": h},
            {"name": "single_transformer_blocks.1.attn.to_v", "row0": 2 * h, "rows": h},
            {"name": "single_transformer_blocks.1.proj_mlp", "row0": 3 * h, "rows": mlp}])
        self.assertEqual(by["final_layer.adaLN_modulation.1"]["diffusers"],
                         [{"name": "norm_out.linear", "row0": 0, "rows": 2 * h, "swap": True}])
        self.assertEqual(by["img_in"]["diffusers"],
                         [{"name": "x_embedder", "row0": 0, "rows": h}])
        swaps = [e["layer"] for e in self.map["layers"]
                 if any(t.get("swap") for t in e["diffusers"])]
        self.assertEqual(swaps, ["final_layer.adaLN_modulation.1"])

    def check_paths(self, model, fmt):
        """Each layer is the attribute path of a module with the format's tensors."""
        lmap = lora.read_map(model)
        mods = load_modules(model)
        for e in lmap["layers"]:
            sub = lora.submodule(mods[e["part"]], e["layer"])
            self.assertEqual(e["format"], lora.stored_format(sub), e["layer"])
            if e["format"] in ("fp32", "bf16"):
                self.assertEqual(tuple(sub.weight.shape), (e["out"], e["in"]))
            else:
                self.assertTrue(hasattr(sub, "packed" if e["format"] == "int4" else "qweight"))
                self.assertEqual(sub.scale.shape[0], e["out"])
        formats = {(e["part"], e["layer"].startswith(("double_blocks.", "single_blocks.",
                                                       "encoder.block."))): e["format"]
                   for e in lmap["layers"]}
        return formats

    def test_layer_is_the_torchscript_attribute_path(self):
        self.check_paths(self.model, "fp32")

    def test_quantised_formats(self):
        for fmt in ("int8", "int4"):
            with self.subTest(fmt=fmt):
                formats = self.check_paths(model_dir(fmt), fmt)
                self.assertEqual(formats, {("transformer", True): fmt,
                                           ("transformer", False): "fp32",
                                           ("t5", True): fmt, ("clip", False): "fp32"})

    def test_manifest_only_dir_has_the_same_map(self):
        with tempfile.TemporaryDirectory(prefix="fluxtest-lora-") as tmp:
            out = os.path.join(tmp, "plan")
            res = helpers.run_cli("random-model", "--out", out, "--tokenizers", self.model,
                                  "--dims", "tiny", "--depth", "2", "--single", "2",
                                  "--manifest-only", "--dtype", "fp32", "--quiet")
            self.assertEqual(res.returncode, 0, res.stderr)
            self.assertEqual(lora.read_map(out), self.map)
            with open(os.path.join(out, "manifest.json")) as f:
                self.assertEqual(json.load(f)["lora_map"]["layers"], len(self.map["layers"]))

    def test_missing_map_says_re_export(self):
        with tempfile.TemporaryDirectory(prefix="fluxtest-lora-") as tmp:
            with self.assertRaisesRegex(lora.LoraError, r"exported without lora_map\.json; "
                                                        r"re-export it"):
                lora.read_map(tmp)
            res = helpers.run_cli("lora-random", "--model-dir", tmp, "-o", f"{tmp}/x",
                                  "--rank", "2")
            self.assertEqual(res.returncode, 1)
            self.assertIn("re-export", res.stderr)


class Layouts(unittest.TestCase):
    """The three files of lora-random merge into bit-identical weights."""

    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix="fluxtest-lora-")
        cls.model = model_dir()
        cls.prefix = random_lora(cls.tmp, "--text-encoders")
        cls.lmap = lora.LoraMap.from_model_dir(cls.model)
        cls.files = {lay: lora.read(f"{cls.prefix}.{lay}.safetensors", cls.lmap)
                     for lay in LAYOUTS}
        cls.base = states(load_modules(cls.model))

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.tmp)

    def merged(self, files):
        mods = load_modules(self.model)
        lora.merge_into(mods, files)
        return states(mods)

    def test_key_forms(self):
        keys = {lay: set(read_tensors(f"{self.prefix}.{lay}.safetensors")) for lay in LAYOUTS}
        self.assertIn("lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight", keys["kohya"])
        self.assertIn("lora_unet_double_blocks_0_img_attn_qkv.alpha", keys["kohya"])
        self.assertIn("lora_te1_text_model_encoder_layers_0_self_attn_q_proj.lora_up.weight",
                      keys["kohya"])
        self.assertIn("lora_te2_encoder_block_0_layer_0_SelfAttention_q.lora_up.weight",
                      keys["kohya"])
        self.assertIn("transformer.transformer_blocks.0.attn.to_q.lora_A.weight",
                      keys["diffusers"])
        self.assertIn("transformer.transformer_blocks.0.attn.to_v.alpha", keys["diffusers"])
        self.assertIn("transformer.single_transformer_blocks.1.proj_mlp.lora_B.weight",
                      keys["diffusers"])
        self.assertIn("transformer.norm_out.linear.lora_B.weight", keys["diffusers"])
        self.assertIn("text_encoder.text_model.encoder.layers.1.mlp.fc1.lora_A.weight",
                      keys["diffusers"])
        self.assertIn("text_encoder_2.encoder.block.1.layer.0.SelfAttention.o.lora_B.weight",
                      keys["diffusers"])
        self.assertIn("diffusion_model.double_blocks.0.img_attn.qkv.lora_A.weight", keys["bfl"])
        self.assertIn("text_encoders.clip_l.transformer.text_model.encoder.layers.0.mlp.fc2"
                      ".lora_B.weight", keys["bfl"])
        self.assertIn("text_encoders.t5xxl.transformer.encoder.block.0.layer.1.DenseReluDense"
                      ".wo.lora_A.weight", keys["bfl"])
        n = len(self.lmap.data["layers"])
        self.assertEqual(len(keys["kohya"]), 3 * n)
        self.assertEqual(len(keys["bfl"]), 3 * n)
        names = sum(len(e["diffusers"]) for e in self.lmap.data["layers"])
        self.assertEqual(len(keys["diffusers"]), 3 * names)

    def test_entries_and_scaling(self):
        for lay, f in self.files.items():
            self.assertEqual(f.layouts, [lay])
            self.assertEqual(f.ranks, [RANK])
            self.assertTrue(f.text_encoders)
            for e in f.entries:
                self.assertEqual((e.alpha, e.factor), (ALPHA, ALPHA / RANK))
                self.assertGreater(float(e.up.abs().max()), 0.0, e.base)

    def test_three_layouts_merge_bit_identically(self):
        got = {lay: self.merged([(f, 0.8)]) for lay, f in self.files.items()}
        changed = 0
        for part, base in self.base.items():
            for k, w in base.items():
                a, b, c = (got[lay][part][k] for lay in LAYOUTS)
                self.assertTrue(torch.equal(a, b) and torch.equal(a, c), f"{part} {k}")
                changed += not torch.equal(a, w)
        self.assertEqual(changed, len(self.lmap.data["layers"]))

    def test_merge_is_base_plus_scaled_delta(self):
        # computed here from the bfl file's tensors, independently of lora.py's merge
        t = read_tensors(f"{self.prefix}.bfl.safetensors")
        got = self.merged([(self.files["bfl"], 0.8)])
        for part, layer, pre in (("transformer", "double_blocks.0.img_attn.qkv",
                                  "diffusion_model."),
                                 ("transformer", "final_layer.adaLN_modulation.1",
                                  "diffusion_model."),
                                 ("clip", "text_model.encoder.layers.0.self_attn.k_proj",
                                  "text_encoders.clip_l.transformer."),
                                 ("t5", "encoder.block.1.layer.1.DenseReluDense.wi_1",
                                  "text_encoders.t5xxl.transformer.")):
            down = t[f"{pre}{layer}.lora_A.weight"].float()
            up = t[f"{pre}{layer}.lora_B.weight"].float()
            alpha = float(t[f"{pre}{layer}.alpha"])
            want = self.base[part][f"{layer}.weight"] + 0.8 * alpha / down.shape[0] * (up @ down)
            diff = (got[part][f"{layer}.weight"] - want).abs().max().item()
            self.assertLess(diff, 1e-6, layer)
            self.assertGreater((want - self.base[part][f"{layer}.weight"]).abs().max().item(),
                               1e-3)

    def test_diffusers_final_layer_is_swapped(self):
        t = read_tensors(f"{self.prefix}.bfl.safetensors")
        d = read_tensors(f"{self.prefix}.diffusers.safetensors")
        up = t["diffusion_model.final_layer.adaLN_modulation.1.lora_B.weight"]
        dup = d["transformer.norm_out.linear.lora_B.weight"]
        a, b = up.chunk(2)
        self.assertTrue(torch.equal(dup, torch.cat((b, a))))
        self.assertFalse(torch.equal(dup, up))
        # q/k/v: the down matrix repeated, the up rows sliced
        qkv = t["diffusion_model.double_blocks.1.txt_attn.qkv.lora_B.weight"]
        h = qkv.shape[0] // 3
        for i, n in enumerate(("add_q_proj", "add_k_proj", "add_v_proj")):
            self.assertTrue(torch.equal(
                d[f"transformer.transformer_blocks.1.attn.{n}.lora_B.weight"],
                qkv[i * h:(i + 1) * h]))
            self.assertTrue(torch.equal(
                d[f"transformer.transformer_blocks.1.attn.{n}.lora_A.weight"],
                t["diffusion_model.double_blocks.1.txt_attn.qkv.lora_A.weight"]))

    def test_peft_file_without_alpha_means_factor_one(self):
        path = os.path.join(self.tmp, "peft.safetensors")
        t = read_tensors(f"{self.prefix}.diffusers.safetensors")
        stio.write(path, {k: v for k, v in t.items() if not k.endswith(".alpha")})
        f = lora.read(path, self.lmap)
        self.assertTrue(all((e.factor, e.alpha) == (1.0, RANK) for e in f.entries))
        # the same deltas as the file with alpha at scale alpha / rank... times rank / alpha
        a = self.merged([(f, ALPHA / RANK)])
        b = self.merged([(self.files["diffusers"], 1.0)])
        for part in a:
            for k in a[part]:
                self.assertLess((a[part][k] - b[part][k]).abs().max().item(), 1e-6)

    def test_text_encoders_are_touched_only_when_asked(self):
        got = self.merged([(self.files["kohya"], 1.0)])
        for part in ("clip", "t5"):
            self.assertTrue(any(not torch.equal(got[part][k], w)
                                for k, w in self.base[part].items()), part)
        prefix = random_lora(os.path.join(self.tmp), "--layers", "all")
        f = lora.read(f"{prefix}.kohya.safetensors", self.lmap)
        self.assertFalse(f.text_encoders)
        got = self.merged([(f, 1.0)])
        for part in ("clip", "t5"):
            self.assertTrue(all(torch.equal(got[part][k], w)
                                for k, w in self.base[part].items()), part)
        # and the CLIP pooled output changes with a text-encoder LoRA
        mods = load_modules(self.model)
        ids = torch.tensor([helpers.token_ids(mods["clip"].state_dict()[
            "text_model.embeddings.token_embedding.weight"].shape[0], 400)[0]])
        y0 = mods["clip"](ids)
        lora.merge_into(mods, [(self.files["bfl"], 1.0)])
        self.assertGreater((mods["clip"](ids) - y0).abs().max().item(), 1e-3)

    def test_layer_selection(self):
        sub = os.path.join(self.tmp, "sel")
        os.makedirs(sub, exist_ok=True)
        for layers, want in (("blocks", lambda n: n.startswith(("double_blocks.",
                                                                "single_blocks."))),
                             ("attn", lambda n: n.startswith("double_blocks.")
                              and n.endswith(("_attn.qkv", "_attn.proj")))):
            prefix = random_lora(sub, "--layers", layers)
            f = lora.read(f"{prefix}.bfl.safetensors", self.lmap)
            expect = {e["layer"] for e in self.lmap.data["layers"]
                      if e["part"] == "transformer" and want(e["layer"])}
            self.assertEqual({e.layer for e in f.entries}, expect, layers)
            self.assertEqual(len(expect), 8 if layers == "attn" else len(expect))

    def test_reference_images_the_same_for_each_layout_and_differ_from_none(self):
        mods = load_modules(self.model)
        vocab = mods["clip"].state_dict()["text_model.embeddings.token_embedding.weight"].shape[0]
        t5v = mods["t5"].state_dict()["shared.weight"].shape[0]
        clip, t5 = helpers.token_ids(vocab, t5v)
        base = Pipeline.from_model_dir(self.model).generate(clip, t5, 128, 128, 2, 3.5, 3)
        px = {}
        for lay in LAYOUTS:
            pipe = Pipeline.from_model_dir(self.model,
                                           loras=[(f"{self.prefix}.{lay}.safetensors", 0.8)])
            px[lay] = pipe.generate(clip, t5, 128, 128, 2, 3.5, 3)
        for lay in LAYOUTS:
            self.assertTrue(torch.equal(px[lay]["latents"][-1], px["bfl"]["latents"][-1]), lay)
            self.assertTrue(torch.equal(px[lay]["pixels"], px["bfl"]["pixels"]), lay)
        diff = (px["bfl"]["pixels"].int() - base["pixels"].int()).abs().float()
        self.assertGreater(diff.mean().item(), 5.0)      # visibly another image
        self.assertGreater(px["bfl"]["pixels"].float().std().item(), 10.0)  # and still one

    def test_quantised_layers_are_patched_in_their_format(self):
        for fmt in ("int8", "int4"):
            with self.subTest(fmt=fmt):
                model = model_dir(fmt)
                mods = load_modules(model)
                qkv = lora.submodule(mods["transformer"], "double_blocks.0.img_attn.qkv")
                codes = (lambda: qkv.packed) if fmt == "int4" else (lambda: qkv.qweight)
                dtype = codes().dtype
                w0 = quant.dequantise_weight(codes().clone(), qkv.scale.clone(), fmt)
                f = lora.read(f"{self.prefix}.kohya.safetensors",
                              lora.LoraMap.from_model_dir(model))
                lora.merge_into(mods, [(f, 1.0)])
                self.assertEqual(codes().dtype, dtype)
                self.assertEqual(lora.stored_format(qkv), fmt)
                w1 = quant.dequantise_weight(codes(), qkv.scale, fmt)
                (e,) = [e for e in f.entries if e.layer == "double_blocks.0.img_attn.qkv"]
                want = w0 + e.delta(1.0)
                half_step = 0.5 * qkv.scale.float().max().item()   # rounding to the new codes
                self.assertLess((w1 - want).abs().max().item(), 1.01 * half_step)
                self.assertGreater((w1 - w0).abs().max().item(), 4 * half_step)


class BadFiles(unittest.TestCase):
    """Refusals with messages that name the key and the reason."""

    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix="fluxtest-lora-")
        cls.model = model_dir()
        cls.prefix = random_lora(cls.tmp, "--text-encoders")
        cls.lmap = lora.LoraMap.from_model_dir(cls.model)
        cls.good = read_tensors(f"{cls.prefix}.bfl.safetensors")

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.tmp)

    def write(self, tensors, name="bad.safetensors"):
        path = os.path.join(self.tmp, name)
        stio.write(path, tensors)
        return path

    def refused(self, tensors, pattern):
        path = self.write(tensors)
        with self.assertRaisesRegex(lora.LoraError, pattern):
            lora.read(path, self.lmap)

    def edited(self, **changes):
        t = dict(self.good)
        for k, v in changes.items():
            if v is None:
                del t[k]
            else:
                t[k] = v
        return t

    Q = "diffusion_model.double_blocks.0.img_attn.qkv"

    def test_good_file_reads(self):
        f = lora.read(self.write(self.good), self.lmap)
        self.assertEqual(len(f.entries), len(self.lmap.data["layers"]))

    def test_unknown_keys_are_named(self):
        t = dict(self.good)
        t["diffusion_model.double_blocks.9.img_attn.qkv.lora_A.weight"] = torch.zeros(4, 64)
        t["lora_unet_double_blocks_0_img_attn_qkv.dora_scale"] = torch.zeros(1)
        t["text_encoders.clip_l.transformer.text_model.final_layer_norm.lora_A.weight"] = \
            torch.zeros(4, 32)
        self.refused(t, r"3 unknown key\(s\).*'diffusion_model\.double_blocks\.9\.img_attn\.qkv"
                        r"\.lora_A\.weight', 'lora_unet_double_blocks_0_img_attn_qkv\.dora_scale',"
                        r" 'text_encoders\.clip_l\.transformer\.text_model\.final_layer_norm")

    def test_wrong_shapes(self):
        d = self.good[f"{self.Q}.lora_A.weight"]
        u = self.good[f"{self.Q}.lora_B.weight"]
        self.refused(self.edited(**{f"{self.Q}.lora_A.weight": torch.zeros(d.shape[0], 65)}),
                     rf"'{self.Q}\.lora_A\.weight' has shape \[4, 65\], expected \[4, 64\]")
        self.refused(self.edited(**{f"{self.Q}.lora_B.weight": torch.zeros(64, u.shape[1])}),
                     rf"'{self.Q}\.lora_B\.weight' has shape \[64, 4\], expected \[192, 4\]")
        self.refused(self.edited(**{f"{self.Q}.lora_A.weight": torch.zeros(4, 64, 1)}),
                     r"has shape \[4, 64, 1\]")

    def test_diffusers_slice_shape(self):
        t = read_tensors(f"{self.prefix}.diffusers.safetensors")
        k = "transformer.single_transformer_blocks.0.attn.to_k.lora_B.weight"
        t[k] = torch.zeros(448, 4)
        self.refused(t, rf"'{k}' has shape \[448, 4\], expected \[64, 4\] \('transformer"
                        r"\.single_transformer_blocks\.0\.attn\.to_k' covers 64 rows of "
                        r"'single_blocks\.0\.linear1'\)")

    def test_rank_mismatch(self):
        self.refused(self.edited(**{f"{self.Q}.lora_B.weight": torch.zeros(192, 5)}),
                     rf"rank mismatch: '{self.Q}\.lora_A\.weight' has rank 4 but "
                     rf"'{self.Q}\.lora_B\.weight' has rank 5")

    def test_missing_up_or_down(self):
        self.refused(self.edited(**{f"{self.Q}.lora_B.weight": None}),
                     rf"'{self.Q}' has no up matrix")
        self.refused(self.edited(**{f"{self.Q}.lora_A.weight": None, f"{self.Q}.alpha": None}),
                     rf"'{self.Q}' has no down matrix")

    def test_two_downs_for_one_name(self):
        t = dict(self.good)
        t[f"{self.Q}.lora_down.weight"] = t[f"{self.Q}.lora_A.weight"]
        self.refused(t, r"are both the down of")

    def test_non_finite_values(self):
        for bad in (float("nan"), float("inf")):
            u = self.good[f"{self.Q}.lora_B.weight"].clone()
            u[3, 1] = bad
            self.refused(self.edited(**{f"{self.Q}.lora_B.weight": u}),
                         rf"'{self.Q}\.lora_B\.weight' holds non-finite values")
        self.refused(self.edited(**{f"{self.Q}.alpha": torch.tensor(float("nan"))}),
                     rf"'{self.Q}\.alpha' is not finite")

    def test_alpha_must_be_one_number(self):
        self.refused(self.edited(**{f"{self.Q}.alpha": torch.tensor([1.0, 2.0])}),
                     rf"'{self.Q}\.alpha' must hold one number")
        two = torch.tensor([2], dtype=torch.int64)
        f = lora.read(self.write(self.edited(**{f"{self.Q}.alpha": two})), self.lmap)
        (e,) = [e for e in f.entries if e.base == self.Q]
        self.assertEqual(e.factor, 0.5)

    def test_integer_matrix(self):
        self.refused(self.edited(**{f"{self.Q}.lora_A.weight": torch.zeros(4, 64,
                                                                          dtype=torch.int8)}),
                     r"has dtype I8; LoRA matrices must be F32, F16 or BF16")

    def test_truncated_file(self):
        path = self.write(self.good)
        with open(path, "rb") as f:
            data = f.read()
        for n in (len(data) - 100, 20, 4):
            with open(path, "wb") as f:
                f.write(data[:n])
            with self.assertRaisesRegex(lora.LoraError, r"truncated"):
                lora.read(path, self.lmap)

    def test_same_rows_through_two_names(self):
        t = dict(self.good)
        d = read_tensors(f"{self.prefix}.diffusers.safetensors")
        for s in ("lora_A.weight", "lora_B.weight"):
            t[f"transformer.transformer_blocks.0.attn.to_k.{s}"] = \
                d[f"transformer.transformer_blocks.0.attn.to_k.{s}"]
        self.refused(t, r"'diffusion_model\.double_blocks\.0\.img_attn\.qkv' and 'transformer\."
                        r"transformer_blocks\.0\.attn\.to_k' both adapt rows 64\.\.128 of "
                        r"'double_blocks\.0\.img_attn\.qkv'")
        t = dict(self.good)
        t["model.diffusion_model.img_in.lora_A.weight"] = t["diffusion_model.img_in.lora_A.weight"]
        t["model.diffusion_model.img_in.lora_B.weight"] = t["diffusion_model.img_in.lora_B.weight"]
        self.refused(t, r"both adapt rows 0\.\.64 of 'img_in'")

    def test_empty_file(self):
        self.refused({}, r"no LoRA keys")

    def test_nothing_is_touched_before_every_file_is_checked(self):
        bad = self.write(self.edited(**{f"{self.Q}.lora_B.weight": None}))
        with self.assertRaisesRegex(lora.LoraError, r"has no up matrix"):
            Pipeline.from_model_dir(self.model, loras=[(f"{self.prefix}.bfl.safetensors", 1.0),
                                                       (bad, 1.0)])
        out = os.path.join(self.tmp, "fused-bad")
        root, _ = helpers.tiny_checkpoints()
        res = helpers.run_cli("export", "--source", os.path.join(root, "bfl"), "-o", out,
                              "--quiet", "--fuse-lora", f"{self.prefix}.kohya.safetensors:1",
                              "--fuse-lora", f"{bad}:0.5")
        self.assertEqual(res.returncode, 1, res.stderr)
        self.assertIn("has no up matrix", res.stderr)
        self.assertFalse(os.path.exists(out))

    def test_scale_specs(self):
        self.assertEqual(lora.parse_spec("a:b.safetensors:0.5"), ("a:b.safetensors", 0.5))
        self.assertEqual(lora.parse_spec("x.safetensors"), ("x.safetensors", 1.0))
        self.assertEqual(lora.parse_spec("x.safetensors:-2"), ("x.safetensors", -2.0))
        for bad in ("x:nan", "x:inf", "x:17", "x:abc"):
            with self.assertRaises(ValueError, msg=bad):
                lora.parse_spec(bad)
        root, _ = helpers.tiny_checkpoints()
        res = helpers.run_cli("export", "--source", os.path.join(root, "bfl"), "-o",
                              os.path.join(self.tmp, "never"), "--fuse-lora", "x:abc")
        self.assertEqual(res.returncode, 2)
        self.assertIn("scale 'abc' is not a number", res.stderr)


class Fuse(unittest.TestCase):
    """export --fuse-lora: a model dir equal to the base with the LoRAs merged."""

    def test_fused_dir_is_base_plus_delta(self):
        with tempfile.TemporaryDirectory(prefix="fluxtest-lora-") as tmp:
            base = model_dir()
            prefix = random_lora(tmp, "--text-encoders")
            root, _ = helpers.tiny_checkpoints()
            out = os.path.join(tmp, "fused")
            specs = [(f"{prefix}.kohya.safetensors", 0.75), (f"{prefix}.diffusers.safetensors",
                                                            -0.25)]
            res = helpers.run_cli("export", "--source", os.path.join(root, "bfl"), "-o", out,
                                  "--quiet", *[a for p, s in specs
                                               for a in ("--fuse-lora", f"{p}:{s}")])
            self.assertEqual(res.returncode, 0, res.stderr)
            with open(os.path.join(out, "manifest.json")) as f:
                man = json.load(f)
            want = []
            for p, s in specs:
                with open(p, "rb") as f:
                    want.append({"file": os.path.basename(p),
                                 "sha256": hashlib.sha256(f.read()).hexdigest(), "scale": s})
            self.assertEqual(man["fused_loras"], want)
            self.assertEqual(lora.read_map(out), lora.read_map(base))
            fused = states(load_modules(out))
            plain = states(load_modules(base))
            ref = Pipeline.from_model_dir(base, loras=specs)
            merged = states({"clip": ref.clip, "t5": ref.t5, "transformer": ref.transformer})
            changed = 0
            for part in fused:
                for k, w in fused[part].items():
                    self.assertTrue(torch.equal(w, merged[part][k]), f"{part} {k}")
                    changed += not torch.equal(w, plain[part][k])
            self.assertEqual(changed, len(lora.read_map(base)["layers"]))
            # the net scale is 0.5: base + 0.5 * alpha / rank * up @ down
            t = read_tensors(f"{prefix}.bfl.safetensors")
            k = "diffusion_model.single_blocks.0.linear1"
            delta = 0.5 * ALPHA / RANK * (t[f"{k}.lora_B.weight"].float()
                                          @ t[f"{k}.lora_A.weight"].float())
            diff = fused["transformer"]["single_blocks.0.linear1.weight"] - \
                plain["transformer"]["single_blocks.0.linear1.weight"] - delta
            self.assertLess(diff.abs().max().item(), 1e-6)


class ReferenceCli(unittest.TestCase):
    def test_lora_random_arguments(self):
        with tempfile.TemporaryDirectory(prefix="fluxtest-lora-") as tmp:
            for bad in (("--rank", "0"), ("--rank", "2", "--alpha", "nan"),
                        ("--rank", "2", "--layers", "mlp")):
                res = helpers.run_cli("lora-random", "--model-dir", model_dir(), "-o",
                                      f"{tmp}/x", *bad)
                self.assertEqual(res.returncode, 2, bad)
            res = helpers.run_cli("lora-random", "--model-dir", model_dir(), "-o",
                                  f"{tmp}/sub/x", "--rank", "2")
            self.assertEqual(res.returncode, 0, res.stderr)
            self.assertEqual(res.stdout.split(), [f"{tmp}/sub/x.{lay}.safetensors"
                                                  for lay in LAYOUTS])
            f = lora.read(f"{tmp}/sub/x.bfl.safetensors",
                          lora.LoraMap.from_model_dir(model_dir()))
            self.assertEqual({(e.rank, e.alpha) for e in f.entries}, {(2, 1.0)})  # alpha rank/2

    def test_reference_with_lora(self):
        with tempfile.TemporaryDirectory(prefix="fluxtest-lora-") as tmp:
            model = model_dir()
            prefix = random_lora(tmp)
            mods = load_modules(model)
            vocab = mods["clip"].state_dict()["text_model.embeddings.token_embedding.weight"]
            clip, t5 = helpers.token_ids(vocab.shape[0], 400)
            tok = os.path.join(tmp, "tok.json")
            with open(tok, "w") as f:
                json.dump({"clip": clip, "t5": t5}, f)
            common = ["reference", "--model", model, "--tokens", tok, "--steps", "1",
                      "--width", "64", "--height", "64", "--seed", "4"]
            outs = {}
            for name, extra in (("none", []),
                                ("lora", ["--lora", f"{prefix}.diffusers.safetensors:1.5"])):
                outs[name] = os.path.join(tmp, name)
                res = helpers.run_cli(*common, *extra, "--out", outs[name])
                self.assertEqual(res.returncode, 0, res.stderr)
            with open(os.path.join(outs["lora"], "result.json")) as f:
                self.assertEqual(json.load(f)["loras"],
                                 [{"file": f"{prefix}.diffusers.safetensors", "scale": 1.5}])
            import numpy as np
            a = np.load(os.path.join(outs["none"], "step_001.npy"))
            b = np.load(os.path.join(outs["lora"], "step_001.npy"))
            self.assertGreater(float(np.abs(a - b).max()), 1e-2)
            res = helpers.run_cli(*common, "--lora", f"{prefix}.bfl.safetensors:1e9", "--out",
                                  os.path.join(tmp, "x"))
            self.assertEqual(res.returncode, 2)
            self.assertIn("at most 16", res.stderr)


if __name__ == "__main__":
    unittest.main()
