"""Bad checkpoints and arguments: a clear error, a non-zero exit, and no model dir left behind
(nor a temporary one); an existing model dir survives a failed --force export."""

import json
import os
import shutil
import struct
import tempfile
import unittest

import torch

from tests.export import helpers


def read_raw(path):
    with open(path, "rb") as f:
        data = f.read()
    (n,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8:8 + n]), data[8 + n:]


def write_raw(path, header, body, header_bytes=None):
    raw = header_bytes if header_bytes is not None else json.dumps(header).encode()
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)) + raw + body)


class BadInputs(unittest.TestCase):
    def setUp(self):
        root, _ = helpers.tiny_checkpoints()
        self.tmp = tempfile.mkdtemp(prefix="fluxtest-bad-")
        self.addCleanup(shutil.rmtree, self.tmp)
        self.src = os.path.join(self.tmp, "ck")
        shutil.copytree(os.path.join(root, "bfl"), self.src)
        self.out = os.path.join(self.tmp, "model")

    def export(self, code=1):
        existed = os.path.exists(self.out)
        res = helpers.run_cli("export", "--source", self.src, "-o", self.out, "--quiet")
        self.assertEqual(res.returncode, code, res.stderr)
        if code != 0 and not existed:
            self.assertFalse(os.path.exists(self.out), "a failed export left a model dir")
        leftovers = [n for n in os.listdir(self.tmp) if n.startswith("model.")]
        self.assertEqual(leftovers, [], "a failed export left a temporary dir")
        return res.stderr

    def path(self, *p):
        return os.path.join(self.src, *p)

    def test_good_export_works(self):
        self.export(code=0)
        self.assertTrue(os.path.isfile(os.path.join(self.out, "manifest.json")))

    def test_truncated_file(self):
        p = self.path("flux1-krea-dev.safetensors")
        size = os.path.getsize(p)
        with open(p, "r+b") as f:
            f.truncate(size // 2)
        self.assertRegex(self.export(), r"flux1-krea-dev.safetensors.*truncated")

    def test_truncated_header(self):
        with open(self.path("ae.safetensors"), "wb") as f:
            f.write(b"\x10\x00")
        self.assertRegex(self.export(), r"ae.safetensors.*truncated")

    def test_header_length_beyond_file(self):
        p = self.path("ae.safetensors")
        with open(p, "r+b") as f:
            f.write(struct.pack("<Q", 1 << 40))
        self.assertRegex(self.export(), r"header length \d+ does not fit")

    def test_header_not_json(self):
        h, body = read_raw(self.path("ae.safetensors"))
        write_raw(self.path("ae.safetensors"), None, body, b"{not json" + b" " * 7)
        self.assertRegex(self.export(), r"header is not valid JSON")

    def test_header_lies_about_size(self):
        p = self.path("flux1-krea-dev.safetensors")
        h, body = read_raw(p)
        h["img_in.weight"]["shape"] = [64, 65]
        write_raw(p, h, body)
        self.assertRegex(self.export(), r"'img_in.weight': header says \d+ bytes but F32 "
                                        r"\[64, 65\] needs \d+")

    def test_overlapping_tensors(self):
        p = self.path("flux1-krea-dev.safetensors")
        h, body = read_raw(p)
        a, b = h["img_in.bias"], h["img_in.weight"]
        b["data_offsets"] = [a["data_offsets"][0], a["data_offsets"][0] +
                             b["data_offsets"][1] - b["data_offsets"][0]]
        write_raw(p, h, body)
        self.assertRegex(self.export(), r"overlap")

    def test_unknown_dtype(self):
        p = self.path("ae.safetensors")
        h, body = read_raw(p)
        h["decoder.conv_in.bias"]["dtype"] = "F17"
        write_raw(p, h, body)
        self.assertRegex(self.export(), r"'decoder.conv_in.bias': unsupported dtype 'F17'")

    def test_integer_weights(self):
        def to_int(ts):
            ts["txt_in.bias"] = torch.zeros(ts["txt_in.bias"].shape, dtype=torch.int64)
        helpers.rewrite_safetensors(self.path("flux1-krea-dev.safetensors"), to_int)
        self.assertRegex(self.export(), r"'txt_in.bias' has dtype I64; weights must be F32, F16 "
                                        r"or BF16")

    def test_missing_shard(self):
        os.remove(self.path("text_encoder_2", "model-00002-of-00002.safetensors"))
        self.assertRegex(self.export(), r"shard 'model-00002-of-00002.safetensors' is missing")

    def test_shard_not_matching_index(self):
        p = self.path("text_encoder_2", "model.safetensors.index.json")
        with open(p) as f:
            idx = json.load(f)
        k = sorted(idx["weight_map"])[0]
        idx["weight_map"][k] = "model-00002-of-00002.safetensors" \
            if idx["weight_map"][k].startswith("model-00001") else "model-00001-of-00002.safetensors"
        with open(p, "w") as f:
            json.dump(idx, f)
        self.assertRegex(self.export(), r"(not in the shard|not listed in the index)")

    def test_hostile_shard_name(self):
        p = self.path("text_encoder_2", "model.safetensors.index.json")
        with open(p) as f:
            idx = json.load(f)
        k = sorted(idx["weight_map"])[0]
        idx["weight_map"][k] = "../../etc/passwd"
        with open(p, "w") as f:
            json.dump(idx, f)
        self.assertRegex(self.export(), r"not a plain file name")

    def test_unexpected_key_fails_late_and_cleans_up(self):
        # The AE is exported last: the model dir under construction already holds three
        # modules when this fails.
        def add(ts):
            ts["decoder.mid.attn_2.q.weight"] = torch.zeros(4, 4, 1, 1)
        helpers.rewrite_safetensors(self.path("ae.safetensors"), add)
        self.assertRegex(self.export(), r"AE checkpoint .*1 unexpected key\(s\): "
                                        r"'decoder.mid.attn_2.q.weight'")

    def test_missing_key(self):
        def drop(ts):
            del ts["text_model.encoder.layers.1.mlp.fc2.bias"]
        helpers.rewrite_safetensors(self.path("text_encoder", "model.safetensors"), drop)
        self.assertRegex(self.export(), r"CLIP checkpoint .*1 missing key\(s\): "
                                        r"'text_model.encoder.layers.1.mlp.fc2.bias'")

    def test_missing_tokenizer(self):
        os.remove(self.path("tokenizer_2", "spiece.model"))
        self.assertRegex(self.export(), r"tokenizer file .*spiece.model' is missing")

    def test_bad_config(self):
        with open(self.path("text_encoder_2", "config.json"), "w") as f:
            f.write("{\"d_model\": ")
        self.assertRegex(self.export(), r"config.json': not valid JSON")

    def test_not_a_checkpoint(self):
        empty = os.path.join(self.tmp, "empty")
        os.makedirs(empty)
        res = helpers.run_cli("export", "--source", empty, "-o", self.out, "--quiet")
        self.assertEqual(res.returncode, 1)
        self.assertRegex(res.stderr, r"neither a BFL layout .* nor a diffusers folder")
        res = helpers.run_cli("export", "--source", os.path.join(self.tmp, "nope"), "-o",
                              self.out, "--quiet")
        self.assertEqual(res.returncode, 1)
        self.assertRegex(res.stderr, r"is not a folder")

    def test_bad_arguments(self):
        res = helpers.run_cli("export", "--source", self.src, "-o", self.out, "--dtype", "fp8")
        self.assertEqual(res.returncode, 2)
        res = helpers.run_cli("export", "--source", self.src, "-o", self.out, "--device", "gpu7")
        self.assertEqual(res.returncode, 2)
        self.assertRegex(res.stderr, r"bad device 'gpu7'")
        self.assertFalse(os.path.exists(self.out))

    def test_existing_output_needs_force_and_survives_failure(self):
        self.export(code=0)
        with open(os.path.join(self.out, "manifest.json")) as f:
            before = f.read()
        err = self.export(code=1)
        self.assertRegex(err, r"exists \(use --force")
        os.remove(self.path("ae.safetensors"))
        res = helpers.run_cli("export", "--source", self.src, "-o", self.out, "--quiet",
                              "--force", "--layout", "bfl")
        self.assertEqual(res.returncode, 1)
        with open(os.path.join(self.out, "manifest.json")) as f:
            self.assertEqual(f.read(), before)


if __name__ == "__main__":
    unittest.main()
