"""LoRAs through the service behind real nginx (docs/api.md "LoRAs", docs/operations.md
"LoRA adapters"): GET /loras and /sdapi/v1/loras list the LoRA folder with each file's check;
a generation with a LoRA (native, OpenAI, A1111's <lora:NAME:SCALE>) draws another image than
without, the same one as fluxgen --lora; names that are paths, unknown names and files that do
not fit the model are refused before anything is queued; the job row keeps the LoRAs; a file
removed or broken after the request was queued fails that job alone (not a device failure);
without lora_dir, LoRAs are refused.  One stack serves every test but the last.

The LoRA files are the tiny model's, written by `fluxexport lora-random` in the three layouts.
"""
import base64
import io
import json
import os
import shutil
import sqlite3
import subprocess
import tempfile
import unittest

from PIL import Image

from tests.service.stack import FLUXCGI, MODEL, ROOT, Stack

PYTHON = os.environ.get("PYTHON", "/usr/bin/python3")
FLUXGEN = os.environ.get("FLUXGEN", os.path.join(ROOT, "build", "fluxgen"))
FAST = {"width": 64, "height": 64, "num_inference_steps": 2, "seed": 11, "guidance_scale": 3.5}
LONG = {"prompt": "a long job", "width": 256, "height": 256, "num_inference_steps": 100}


def make_loras(out):
    """The tiny model's random LoRA in the three layouts (the same weights): returns the
    file names written into out."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.path.join(ROOT, "export") + (
        ":" + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    subprocess.run([PYTHON, "-m", "fluxexport", "lora-random", "--model-dir", MODEL, "--out",
                    os.path.join(out, "tiny"), "--rank", "4", "--seed", "3", "--text-encoders",
                    "--scale-up", "1.0"], check=True, env=env, stdout=subprocess.DEVNULL)
    return sorted(f for f in os.listdir(out) if f.endswith(".safetensors"))


class Loras(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix="fx-loras-")
        made = os.path.join(cls.tmp, "made")
        os.makedirs(made)
        cls.made = make_loras(made)
        cls.s = Stack("loras", "nginx", {"device_failures_fatal": "1"})
        cls.dir = os.path.join(cls.s.prefix, "loras")
        os.makedirs(cls.dir)
        for f in cls.made:
            shutil.copy(os.path.join(made, f), cls.dir)
        # the first layout's file under names of their own, for the test that removes one
        # and breaks the other
        for n in ("doomed", "broken"):
            shutil.copy(os.path.join(made, cls.made[0]), os.path.join(cls.dir, n + ".safetensors"))
        with open(os.path.join(cls.dir, "garbage.safetensors"), "wb") as f:
            f.write(b"\x10\x00\x00\x00\x00\x00\x00\x00{\"a\":1}   not a LoRA")
        with open(os.path.join(cls.dir, ".hidden.safetensors"), "wb") as f:
            f.write(b"x")
        with open(os.path.join(cls.dir, "notes.txt"), "w") as f:
            f.write("not listed")
        # a link out of the folder, to a file that would otherwise fit
        os.symlink(os.path.join(made, cls.made[0]), os.path.join(cls.dir, "escape.safetensors"))
        with open(cls.s.config, "a") as f:
            f.write("lora_dir = %s\n" % cls.dir)
        cls.s.start()
        cls.name = cls.made[0][:-len(".safetensors")]

    @classmethod
    def tearDownClass(cls):
        cls.s.stop()
        shutil.rmtree(cls.tmp, ignore_errors=True)

    def jobs(self):
        with sqlite3.connect(self.s.db) as db:
            return db.execute("SELECT id, state, params, error_code FROM jobs ORDER BY seq").fetchall()

    def image(self, path, body):
        """The pixels of the image a request draws (the metadata names the LoRAs: left out),
        and the answer's headers."""
        st, h, b = self.s.request("POST", path, body)
        self.assertEqual(st, 200, b[:300])
        return pixels(b), h

    def test_list(self):
        st, _, j = self.s.json("GET", "/loras")
        self.assertEqual(st, 200, j)
        self.assertTrue(j["enabled"])
        self.assertFalse(j["truncated"])
        by = {e["name"]: e for e in j["loras"]}
        names = [n[:-len(".safetensors")] for n in self.made]
        # test_file_removed_after_queueing may have run first
        doomed = ["broken", "doomed"] if os.path.exists(
            os.path.join(self.dir, "doomed.safetensors")) else ["broken"]
        # sorted; hidden files and other suffixes left out
        self.assertEqual(sorted(by), sorted(names + doomed + ["escape", "garbage"]))
        self.assertEqual([e["name"] for e in j["loras"]], sorted(by))
        self.assertEqual(j["count"], len(by))
        layouts = set()
        for n in names:
            e = by[n]
            self.assertTrue(e["ok"], e)
            self.assertIsNone(e["error"])
            self.assertEqual(e["bytes"], os.path.getsize(os.path.join(self.dir, n + ".safetensors")))
            self.assertGreater(e["layers"], 0)
            self.assertGreaterEqual(e["rank_max"], e["rank_min"])
            self.assertGreater(e["rank_min"], 0)
            layouts.add(e["layout"])
        self.assertEqual(layouts, {"kohya", "diffusers", "bfl"})
        for n in ("garbage", "escape"):
            self.assertFalse(by[n]["ok"])
            self.assertEqual(by[n]["error"]["code"], "bad_lora", by[n])
        self.assertIn("symbolic link", by["escape"]["error"]["message"])
        # the reader's reason names the file as the client knows it
        self.assertIn("'garbage.safetensors'", by["garbage"]["error"]["message"])
        self.assertNotIn("/proc/", by["garbage"]["error"]["message"])
        # no server path in what a client reads
        self.assertNotIn(self.dir.encode(), self.s.request("GET", "/loras")[2])
        st, _, a = self.s.json("GET", "/sdapi/v1/loras")
        self.assertEqual(st, 200)
        self.assertEqual(sorted(e["name"] for e in a),
                         sorted(names + [n for n in doomed if by[n]["ok"]]))
        self.assertTrue(all(set(e) == {"name", "alias", "metadata"} for e in a), a)

    def metric(self, series):
        st, _, b = self.s.request("GET", "/metrics")
        self.assertEqual(st, 200)
        for line in b.decode().splitlines():
            if line.startswith(series + " "):
                return float(line.split()[1])
        raise AssertionError("no %s in /metrics" % series)

    def test_metrics(self):
        sets = 'fluxcgi_lora_sets_total{how="%s"}'
        unknown = 'fluxcgi_lora_refused_total{code="unknown_lora"}'
        before = [self.metric(sets % "applied") + self.metric(sets % "kept"),
                  self.metric(unknown)]
        st, _, _ = self.s.json("POST", "/generate/queue",
                               dict(FAST, prompt="x", loras=[{"name": "nope"}]))
        self.assertEqual(st, 422)
        self.image("/generate", dict(FAST, prompt="counted", loras=[{"name": self.name}]))
        after = [self.metric(sets % "applied") + self.metric(sets % "kept"),
                 self.metric(unknown)]
        self.assertEqual([a - b for a, b in zip(after, before)], [1, 1])
        if self.metric(sets % "applied") > 0:
            self.assertGreater(self.metric("fluxcgi_lora_apply_seconds_total"), 0)

    def test_refused_before_queueing(self):
        before = len(self.jobs())
        cases = [
            ("../" + self.name, 422, "invalid_argument"),
            ("/etc/passwd", 422, "invalid_argument"),
            ("sub/" + self.name, 422, "invalid_argument"),
            (".hidden", 422, "invalid_argument"),
            ("..", 422, "invalid_argument"),
            ("nope", 422, "unknown_lora"),
            ("notes.txt", 422, "unknown_lora"),
            ("garbage", 422, "bad_lora"),
            ("escape", 422, "bad_lora"),
        ]
        for name, status, code in cases:
            for path in ("/generate/queue", "/generate", "/v1/images/generations"):
                st, _, j = self.s.json("POST", path, dict(FAST, prompt="x",
                                                          loras=[{"name": name, "scale": 1}]))
                self.assertEqual((st, j["error"]["code"]), (status, code), (path, name, j))
                self.assertTrue(j["error"]["message"].startswith("loras"), j)
            st, _, j = self.s.json("POST", "/sdapi/v1/txt2img",
                                   {"prompt": "x <lora:%s:1>" % name, "steps": 2})
            self.assertEqual(st, status, (name, j))
            self.assertIn("detail", j)
        for bad in ([{"name": self.name, "scale": 17}], [{"name": self.name}] * 2,
                    [{"name": "l%d" % i} for i in range(9)], [{"name": self.name, "x": 1}],
                    [self.name], {"name": self.name}):
            st, _, j = self.s.json("POST", "/generate/queue", dict(FAST, prompt="x", loras=bad))
            self.assertEqual(st, 422, (bad, j))
        self.assertEqual(len(self.jobs()), before)

    def test_generate_with_lora(self):
        base, _ = self.image("/generate", dict(FAST, prompt="a lora"))
        one, h = self.image("/generate", dict(FAST, prompt="a lora",
                                              loras=[{"name": self.name, "scale": 1.0}]))
        self.assertNotEqual(base, one)
        # the job row and the status keep the LoRAs
        rid = h["x-request-id"]
        params = dict((r[0], json.loads(r[2])) for r in self.jobs())[rid]
        self.assertEqual(params["loras"], [{"name": self.name, "scale": 1.0}])
        st, _, j = self.s.json("GET", "/queue/status/" + rid)
        self.assertEqual(j["loras"], [{"name": self.name, "scale": 1.0}])
        # the three layouts hold the same weights: the same image; the suffix names the same file
        for f in self.made[1:]:
            other, _ = self.image("/generate", dict(FAST, prompt="a lora",
                                                    loras=[{"name": f, "scale": "1"}]))
            self.assertEqual(other, one, f)
        # the OpenAI route, with loras as an extra body field
        st, _, o = self.s.json("POST", "/v1/images/generations",
                               {"prompt": "a lora", "size": "64x64", "num_inference_steps": 2,
                                "seed": 11, "guidance_scale": 3.5,
                                "loras": [{"name": self.name, "scale": 1}]})
        self.assertEqual(st, 200, o)
        self.assertEqual(pixels(base64.b64decode(o["data"][0]["b64_json"])), one)
        # A1111's prompt syntax: the tag is taken out of the prompt
        st, _, a = self.s.json("POST", "/sdapi/v1/txt2img",
                               {"prompt": "a lora <lora:%s:1>" % self.name, "steps": 2,
                                "width": 64, "height": 64, "seed": 11,
                                "distilled_cfg_scale": 3.5})
        self.assertEqual(st, 200, a)
        self.assertEqual(pixels(base64.b64decode(a["images"][0])), one)
        self.assertEqual(a["parameters"]["prompt"], "a lora <lora:%s:1>" % self.name)
        # the infotext keeps the tag in the prompt, as A1111's does
        info = json.loads(a["info"])
        self.assertTrue(info["infotexts"][0].startswith("a lora <lora:%s:1>\n" % self.name),
                        info["infotexts"][0])
        # the same image as fluxgen --lora FILE:SCALE
        out = os.path.join(self.tmp, "fluxgen.png")
        res = subprocess.run([FLUXGEN, "--model", MODEL, "--prompt", "a lora", "--width", "64",
                              "--height", "64", "--steps", "2", "--seed", "11", "--guidance",
                              "3.5", "--device", "cpu", "--lora",
                              os.path.join(self.dir, self.made[0]) + ":1.0", "--output", out],
                             capture_output=True)
        self.assertEqual(res.returncode, 0, res.stderr)
        with open(out, "rb") as f:
            self.assertEqual(pixels(f.read()), one)

    def test_file_removed_after_queueing(self):
        # a long job holds the worker while the LoRA job is queued and its file removed
        st, _, long_job = self.s.json("POST", "/generate/queue", LONG)
        self.assertEqual(st, 202, long_job)
        self.s.wait_state(long_job["request_id"], ["running"])
        queued = {}
        for name in ("doomed", "broken"):
            st, _, q = self.s.json("POST", "/generate/queue",
                                   dict(FAST, prompt=name, loras=[{"name": name}]))
            self.assertEqual(st, 202, q)
            queued[name] = q["request_id"]
        os.unlink(os.path.join(self.dir, "doomed.safetensors"))
        with open(os.path.join(self.dir, "broken.safetensors"), "r+b") as f:
            f.truncate(os.path.getsize(f.name) // 2)
        st, _, j = self.s.json("GET", "/queue/status/" + long_job["request_id"])
        self.assertEqual(j["status"], "running", "the long job ended before the files changed")
        self.s.request("DELETE", "/queue/" + long_job["request_id"])
        for name, code in (("doomed", "unknown_lora"), ("broken", "bad_lora")):
            j = self.s.wait_state(queued[name], ["failed", "completed"])
            self.assertEqual((j["status"], j["error"]["code"]), ("failed", code), j)
            st, _, r = self.s.json("GET", "/result/" + queued[name])
            self.assertEqual((st, r["error"]["code"]), (422, code), r)
        # nothing else is affected: with device_failures_fatal = 1 a device failure would
        # have failed the worker
        st, _, p = self.s.json("GET", "/ping")
        self.assertEqual((st, p["status"]), (200, "ok"), p)
        self.image("/generate", dict(FAST, prompt="after", loras=[{"name": self.name}]))


class LorasOff(unittest.TestCase):
    def test_without_lora_dir(self):
        s = Stack("loras-off", "nginx", {"warmup_steps": "0"}).start()
        try:
            for path in ("/generate/queue", "/generate", "/v1/images/generations"):
                st, _, j = s.json("POST", path, dict(FAST, prompt="x", loras=[{"name": "any"}]))
                self.assertEqual((st, j["error"]["code"]), (422, "loras_not_configured"), j)
            st, _, j = s.json("POST", "/sdapi/v1/txt2img", {"prompt": "x <lora:any:0.5>"})
            self.assertEqual(st, 422, j)
            st, _, j = s.json("GET", "/loras")
            self.assertEqual((st, j["enabled"], j["loras"]), (200, False, []))
            st, _, j = s.json("GET", "/sdapi/v1/loras")
            self.assertEqual((st, j), (200, []))
            # no LoRA: as before
            st, _, q = s.json("POST", "/generate/queue", dict(FAST, prompt="x", loras=[]))
            self.assertEqual(st, 202, q)
            with sqlite3.connect(s.db) as db:
                self.assertEqual(db.execute("SELECT count(*) FROM jobs").fetchone()[0], 1)
        finally:
            s.stop()


class LorasCheck(unittest.TestCase):
    def test_check_and_start(self):
        """fluxcgi --check says whether LoRAs are on; a lora_dir that is not a folder stops
        the program before it serves (status 2, naming the key)."""
        s = Stack("loras-check", None, {"lora_dir": os.path.join(ROOT, "build", "no-such-dir")})
        self.addCleanup(s.stop)
        res = subprocess.run([FLUXCGI, "--config", s.config, "--check"], capture_output=True,
                             text=True, timeout=60)
        self.assertEqual(res.returncode, 2, res)
        self.assertIn("lora_dir", res.stderr)
        res = subprocess.run([FLUXCGI, "--config", s.config], capture_output=True, text=True,
                             timeout=60)
        self.assertEqual(res.returncode, 2, res)
        # a relative lora_dir is the config's folder's
        s = Stack("loras-check", None, {"lora_dir": "loras"})
        self.addCleanup(s.stop)
        os.makedirs(os.path.join(s.prefix, "loras"))
        res = subprocess.run([FLUXCGI, "--config", s.config, "--check"], capture_output=True,
                             text=True, timeout=60)
        self.assertEqual(res.returncode, 0, res)
        self.assertIn("loras: on, files in %s/loras" % s.prefix, res.stdout)


class LorasOldModel(unittest.TestCase):
    def test_model_without_lora_map(self):
        """A model dir exported before LoRA support serves, without LoRAs: requests with some
        get 422 loras_not_configured naming the model (not its folder)."""
        s = Stack("loras-old-model", "nginx", {"warmup_steps": "0"})
        model = os.path.join(s.prefix, "old-model")
        os.makedirs(model)
        for f in os.listdir(MODEL):
            if f != "lora_map.json":
                os.symlink(os.path.join(MODEL, f), os.path.join(model, f))
        os.makedirs(os.path.join(s.prefix, "loras"))
        with open(os.path.join(s.prefix, "loras", "x.safetensors"), "wb") as f:
            f.write(b"x")
        with open(s.config) as f:
            text = f.read()
        with open(s.config, "w") as f:
            f.write(text.replace("model = %s" % MODEL, "model = %s" % model, 1) +
                    "lora_dir = loras\n")
        s.start()
        self.addCleanup(s.stop)
        st, _, j = s.json("POST", "/generate/queue", dict(FAST, prompt="x", loras=[{"name": "x"}]))
        self.assertEqual((st, j["error"]["code"]), (422, "loras_not_configured"), j)
        self.assertIn("lora_map.json", j["error"]["message"])
        self.assertNotIn(s.prefix, j["error"]["message"])
        st, _, j = s.json("GET", "/loras")
        self.assertEqual((st, j["enabled"], j["error"]["code"]), (200, True, "loras_not_configured"))
        self.assertEqual([(e["name"], e["ok"]) for e in j["loras"]], [("x", False)])
        self.assertIn("LoRAs are off", s.log_text())


def pixels(png):
    return Image.open(io.BytesIO(png)).convert("RGB").tobytes()


if __name__ == "__main__":
    unittest.main()
