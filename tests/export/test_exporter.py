"""The exporter's model dir, the tiny-model writer's determinism and the reference CLI."""

import filecmp
import hashlib
import json
import os
import shutil
import tempfile
import unittest

import numpy as np
import torch

from tests.export import helpers


def sha(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


class ModelDir(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.root, cls.params = helpers.tiny_checkpoints()
        cls.model = helpers.exported("bfl")
        with open(os.path.join(cls.model, "manifest.json")) as f:
            cls.man = json.load(f)

    def test_manifest(self):
        m = self.man
        self.assertEqual(m["format"], "fluxcgi-model")
        self.assertEqual(m["format_version"], 1)
        self.assertEqual((m["dtype"], m["device"], m["layout"]), ("fp32", "cpu", "bfl"))
        self.assertEqual(m["exporter"]["torch"], torch.__version__)
        self.assertEqual(m["modules"]["transformer"]["params"], self.params[0].to_dict())
        self.assertEqual(m["modules"]["ae_decoder"]["params"]["scale_factor"], 0.3611)
        self.assertTrue(m["modules"]["ae_decoder"]["applies_scale_shift"])
        self.assertEqual(m["defaults"], {"steps": 28, "guidance": 3.5, "width": 1024,
                                         "height": 1024})
        clip = m["tokenizers"]["clip"]
        self.assertEqual((clip["bos_id"], clip["eos_id"], clip["pad_id"]),
                         (self.params[2].vocab_size - 2, self.params[2].vocab_size - 1,
                          self.params[2].vocab_size - 1))
        self.assertEqual(m["tokenizers"]["t5"]["max_length"], 512)
        for key, mod in m["modules"].items():
            path = os.path.join(self.model, mod["file"])
            self.assertEqual(sha(path), mod["sha256"], key)
            self.assertEqual(os.path.getsize(path), mod["bytes"])
        for src in m["sources"]:
            self.assertEqual(sha(os.path.join(self.root, "bfl", src["path"])), src["sha256"])
        paths = {s["path"] for s in m["sources"]}
        self.assertIn("flux1-krea-dev.safetensors", paths)
        self.assertIn("text_encoder_2/model-00002-of-00002.safetensors", paths)
        self.assertIn("tokenizer_2/spiece.model", paths)

    def test_tokenizer_files_copied(self):
        for rel in ("tokenizer/vocab.json", "tokenizer/merges.txt", "tokenizer_2/spiece.model"):
            self.assertTrue(filecmp.cmp(os.path.join(self.model, rel),
                                        os.path.join(self.root, "bfl", rel), shallow=False))

    def test_diffusers_export_computes_the_same(self):
        other = helpers.exported("diffusers")
        for name in ("transformer.pt", "ae_decoder.pt"):
            a = torch.jit.load(os.path.join(self.model, name))
            b = torch.jit.load(os.path.join(other, name))
            pa = dict(a.named_parameters())
            pb = dict(b.named_parameters())
            self.assertEqual(sorted(pa), sorted(pb))
            for k in pa:
                self.assertTrue(torch.equal(pa[k], pb[k]), f"{name}: {k}")

    def test_make_tiny_model_output(self):
        made = os.path.join(helpers.ROOT, "build", "models", "tiny", "manifest.json")
        if not os.path.exists(made):
            self.skipTest("run through 'make test' to check the tiny model it builds")
        with open(made) as f:
            m = json.load(f)
        self.assertEqual(m["name"], "flux-tiny")
        self.assertEqual(m["modules"]["transformer"]["params"], self.params[0].to_dict())


class TinyWriter(unittest.TestCase):
    def test_deterministic_from_seed(self):
        root, _ = helpers.tiny_checkpoints(seed=0)
        tmp = tempfile.mkdtemp(prefix="fluxtest-det-")
        self.addCleanup(shutil.rmtree, tmp)
        res = helpers.run_cli("tiny", "--out", os.path.join(tmp, "a"), "--seed", "0")
        self.assertEqual(res.returncode, 0, res.stderr)
        res = helpers.run_cli("tiny", "--out", os.path.join(tmp, "b"), "--seed", "5")
        self.assertEqual(res.returncode, 0, res.stderr)
        for layout in ("bfl", "diffusers"):
            for dirpath, _, files in os.walk(os.path.join(root, layout)):
                for n in files:
                    p = os.path.join(dirpath, n)
                    rel = os.path.relpath(p, root)
                    self.assertEqual(sha(p), sha(os.path.join(tmp, "a", rel)), rel)
        self.assertNotEqual(sha(os.path.join(tmp, "a", "bfl", "flux1-krea-dev.safetensors")),
                            sha(os.path.join(tmp, "b", "bfl", "flux1-krea-dev.safetensors")))
        self.assertEqual(sha(os.path.join(tmp, "a", "bfl", "tokenizer_2", "spiece.model")),
                         sha(os.path.join(tmp, "b", "bfl", "tokenizer_2", "spiece.model")))

    def test_refuses_to_overwrite(self):
        tmp = tempfile.mkdtemp(prefix="fluxtest-det-")
        self.addCleanup(shutil.rmtree, tmp)
        res = helpers.run_cli("tiny", "--out", tmp)
        self.assertEqual(res.returncode, 1)
        self.assertIn("exists", res.stderr)

    def test_tokenizers_are_real_formats(self):
        import sentencepiece
        root, params = helpers.tiny_checkpoints()
        sp = sentencepiece.SentencePieceProcessor(
            model_file=os.path.join(root, "bfl", "tokenizer_2", "spiece.model"))
        self.assertEqual((sp.pad_id(), sp.eos_id(), sp.unk_id(), sp.bos_id()), (0, 1, 2, -1))
        self.assertLessEqual(sp.get_piece_size(), params[3].vocab_size)
        with open(os.path.join(root, "bfl", "tokenizer", "vocab.json"), encoding="utf-8") as f:
            vocab = json.load(f)
        with open(os.path.join(root, "bfl", "tokenizer", "merges.txt"), encoding="utf-8") as f:
            merges = f.read().splitlines()
        self.assertEqual(merges[0], "#version: 0.2")
        self.assertEqual(len(vocab), 512 + len(merges) - 1 + 2)
        self.assertEqual(len(vocab), params[2].vocab_size)
        self.assertEqual(vocab["!"], 0)
        self.assertEqual(vocab["!</w>"], 256)
        self.assertEqual(vocab["<|endoftext|>"], len(vocab) - 1)
        a, b = merges[1].split(" ")
        self.assertEqual(vocab[a + b], 512)


class ReferenceCli(unittest.TestCase):
    def test_writes_latents_pixels_and_png(self):
        root, params = helpers.tiny_checkpoints()
        tmp = tempfile.mkdtemp(prefix="fluxtest-ref-")
        self.addCleanup(shutil.rmtree, tmp)
        clip, t5 = helpers.token_ids(params[2].vocab_size, 320)
        tok = os.path.join(tmp, "tokens.json")
        with open(tok, "w") as f:
            json.dump({"clip": clip, "t5": t5}, f)
        out = os.path.join(tmp, "out")
        res = helpers.run_cli("reference", "--model", helpers.exported("bfl"), "--tokens", tok,
                              "--steps", "2", "--width", "384", "--height", "256", "--seed", "7",
                              "--out", out)
        self.assertEqual(res.returncode, 0, res.stderr)
        self.assertEqual(sorted(os.listdir(out)), ["image.png", "pixels.npy", "result.json",
                                                   "step_000.npy", "step_001.npy",
                                                   "step_002.npy"])
        lat = np.load(os.path.join(out, "step_000.npy"))
        self.assertEqual(lat.shape, (1, 24 * 16, 64))
        self.assertEqual(lat.dtype, np.float32)
        g = torch.Generator("cpu").manual_seed(7)
        from fluxexport import sampling
        noise = sampling.pack(torch.randn(1, 16, 32, 48, generator=g))
        self.assertTrue(np.array_equal(lat, noise.numpy()))
        from PIL import Image
        img = Image.open(os.path.join(out, "image.png"))
        self.assertEqual(img.size, (384, 256))
        self.assertTrue(np.array_equal(np.asarray(img), np.load(os.path.join(out, "pixels.npy"))))

    def test_bad_tokens_file(self):
        tmp = tempfile.mkdtemp(prefix="fluxtest-ref-")
        self.addCleanup(shutil.rmtree, tmp)
        tok = os.path.join(tmp, "tokens.json")
        with open(tok, "w") as f:
            json.dump({"clip": [1, -2], "t5": [1]}, f)
        res = helpers.run_cli("reference", "--model", helpers.exported("bfl"), "--tokens", tok,
                              "--out", os.path.join(tmp, "o"))
        self.assertEqual(res.returncode, 1)
        self.assertIn("'clip' must be a non-empty list of ids", res.stderr)


if __name__ == "__main__":
    unittest.main()
