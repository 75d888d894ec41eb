"""The clients people already have, through real nginx and real lighttpd: the seed's lenient
bodies, the OpenAI Images API (with the official npm client), the A1111 / Forge txt2img API,
job groups, JPEG and WebP with their metadata, and the OpenAPI document walked against the
live service, plus /docs rendered in headless Chromium with no request leaving the machine.

Environment (besides stack.py's): NPM_DIR, where the Makefile installed the `openai` npm
package (default build/npm).
"""
import base64
import io
import json
import os
import socket
import sqlite3
import subprocess
import threading
import unittest

from PIL import Image

from tests.service.stack import ROOT, Stack, which_or_fail

NPM_DIR = os.environ.get("NPM_DIR", os.path.join(ROOT, "build", "npm"))
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
FAST = {"width": 64, "height": 64, "num_inference_steps": 1}
LONG = {"prompt": "a long job", "width": 256, "height": 256, "num_inference_steps": 100}
USER_COMMENT = 0x9286
EXIF_IFD = 0x8769


def user_comment(img):
    """The A1111 text in an image's Exif UserComment ("UNICODE\\0" + UTF-16)."""
    raw = img.getexif().get_ifd(EXIF_IFD).get(USER_COMMENT)
    assert raw and raw[:8] == b"UNICODE\0", raw[:16] if raw else raw
    return raw[8:].decode("utf-16-be")


# ---- a small JSON Schema check: the subset the OpenAPI document uses ------------------------

def check_schema(doc, schema, value, where="$"):
    """Raises AssertionError when value does not fit schema ($ref, type, enum, const,
    required, properties, items, oneOf, minimum, maximum)."""
    if "$ref" in schema:
        node = doc
        for part in schema["$ref"].lstrip("#/").split("/"):
            node = node[part]
        return check_schema(doc, node, value, where)
    if "oneOf" in schema:
        errs = []
        for s in schema["oneOf"]:
            try:
                return check_schema(doc, s, value, where)
            except AssertionError as e:
                errs.append(str(e))
        raise AssertionError("%s: fits none of oneOf: %s" % (where, errs))
    types = schema.get("type")
    if types is not None:
        types = types if isinstance(types, list) else [types]
        ok = {"null": value is None, "boolean": isinstance(value, bool),
              "integer": isinstance(value, int) and not isinstance(value, bool),
              "number": isinstance(value, (int, float)) and not isinstance(value, bool),
              "string": isinstance(value, str), "array": isinstance(value, list),
              "object": isinstance(value, dict)}
        assert any(ok[t] for t in types), "%s: %r is not %s" % (where, value, types)
    if "const" in schema:
        assert value == schema["const"], "%s: %r is not %r" % (where, value, schema["const"])
    if "enum" in schema:
        assert value in schema["enum"], "%s: %r not in %r" % (where, value, schema["enum"])
    if isinstance(value, dict):
        for k in schema.get("required", []):
            assert k in value, "%s: %s is required" % (where, k)
        for k, s in schema.get("properties", {}).items():
            if k in value:
                check_schema(doc, s, value[k], where + "." + k)
    if isinstance(value, list) and "items" in schema:
        for i, v in enumerate(value):
            check_schema(doc, schema["items"], v, "%s[%d]" % (where, i))
    return True


class Clients:
    server = None

    @classmethod
    def setUpClass(cls):
        cls.s = Stack("clients-%s" % cls.server, cls.server).start()
        st, _, cls.doc = cls.s.json("GET", "/openapi.json")
        assert st == 200

    @classmethod
    def tearDownClass(cls):
        cls.s.stop()

    def job_rows(self, where="1"):
        """Rows of the store itself: what is durable, whatever the answers said."""
        with sqlite3.connect(self.s.db) as db:
            return db.execute("SELECT id, state, group_id, group_index, reply, seed FROM jobs "
                              "WHERE " + where + " ORDER BY seq").fetchall()

    # ---- item 2: the seed's clients --------------------------------------------------------

    def test_seed_bodies_keep_working(self):
        # integers written as floats or strings, seed -1 for a random one, extra fields
        st, h, j = self.s.json("POST", "/generate/queue", {
            "prompt": "compat", "num_inference_steps": 1.0, "width": "64", "height": 64.0,
            "guidance_scale": "3.5", "seed": -1, "negative_prompt": "x", "scheduler": "y"})
        self.assertEqual(st, 202, j)
        self.assertEqual(h["x-ignored-fields"], "negative_prompt,scheduler")
        self.assertEqual(j["ignored_fields"], ["negative_prompt", "scheduler"])
        self.assertEqual(j["progress"]["steps"], 1)
        self.assertTrue(0 <= j["seed"] < 2 ** 53)
        done = self.s.wait_state(j["request_id"], ["completed"])
        st, _, img = self.s.request("GET", done["result_url"])
        self.assertEqual(Image.open(io.BytesIO(img)).size, (64, 64))
        # seed null: random as well; a real fraction is still an error naming the field
        st, _, j = self.s.json("POST", "/generate/queue", dict(FAST, prompt="a", seed=None))
        self.assertEqual(st, 202, j)
        st, _, j = self.s.json("POST", "/generate/queue", dict(FAST, prompt="a", width=64.5))
        self.assertEqual((st, j["error"]["code"]), (422, "invalid_argument"))
        self.assertTrue(j["error"]["message"].startswith("width"))
        # a hostile key is echoed as printable ASCII, cut, and cannot split the header
        st, h, j = self.s.json("POST", "/generate/queue", dict(FAST, prompt="a", **{
            "\u0001<x>\r\nSet-Cookie: a=b" + "y" * 500: 1}))
        self.assertEqual(st, 202, j)
        self.assertEqual(h["x-ignored-fields"], "?<x>??Set-Cookie:?a=b" + "y" * 19 + "...")
        self.assertNotIn("set-cookie", h)
        # POST /generate names ignored fields with its image
        st, h, b = self.s.request("POST", "/generate", dict(FAST, prompt="a", seed=1, typo=1))
        self.assertEqual(st, 200, b[:200])
        self.assertEqual(h["x-ignored-fields"], "typo")
        self.assertTrue(b.startswith(PNG_MAGIC))

    # ---- item 6: formats and their metadata ------------------------------------------------

    def test_output_formats_carry_parameters(self):
        for fmt, ctype, magic in (("jpeg", "image/jpeg", b"\xff\xd8\xff"),
                                  ("webp", "image/webp", b"RIFF"), ("png", "image/png", PNG_MAGIC)):
            st, h, b = self.s.request("POST", "/generate", dict(
                FAST, prompt="a red kite", seed=9, output_format=fmt, output_quality=70))
            self.assertEqual(st, 200, b[:200])
            self.assertEqual(h["content-type"], ctype)
            self.assertTrue(b.startswith(magic), b[:16])
            img = Image.open(io.BytesIO(b))
            img.load()
            self.assertEqual(img.size, (64, 64))
            if fmt == "png":
                text, params = img.info["parameters"], json.loads(img.info["fluxcgi"])
            elif fmt == "jpeg":
                text, params = user_comment(img), json.loads(img.info["comment"])
            else:
                text = user_comment(img)
                xmp = img.info["xmp"].decode() if isinstance(img.info["xmp"], bytes) \
                    else img.info["xmp"]
                self.assertIn("fluxcgi:parameters", xmp)
                self.assertIn("a red kite", xmp)
                params = None
            self.assertTrue(text.startswith("a red kite\nSteps: 1, Sampler: Euler"), text)
            self.assertIn("Seed: 9, Size: 64x64", text)
            if params:
                self.assertEqual((params["seed"], params["prompt"]), (9, "a red kite"))
            # the stored result keeps its format
            st, h2, b2 = self.s.request("GET", "/result/" + h["x-request-id"])
            self.assertEqual((st, h2["content-type"], b2), (200, ctype, b))
        st, _, j = self.s.json("POST", "/generate/queue", dict(FAST, prompt="a",
                                                               output_format="gif"))
        self.assertEqual((st, j["error"]["code"]), (422, "invalid_argument"))

    # ---- item 5: groups --------------------------------------------------------------------

    def test_group_of_images(self):
        st, h, j = self.s.json("POST", "/generate/queue", dict(FAST, prompt="g", n=3, seed=100))
        self.assertEqual(st, 202, j)
        gid = j["group_id"]
        self.assertEqual(h["location"], "/queue/group/" + gid)
        self.assertEqual(j["seeds"], [100, 101, 102])
        # every image is a job of its own, in the store before the answer came
        rows = self.job_rows("group_id = '%s'" % gid)
        self.assertEqual([r[0] for r in rows], j["request_ids"])
        self.assertEqual([r[3] for r in rows], [0, 1, 2])
        for rid in j["request_ids"]:
            self.s.wait_state(rid, ["completed"])
        st, _, g = self.s.json("GET", "/queue/group/" + gid)
        self.assertEqual((st, g["status"], g["size"]), (200, "completed", 3))
        check_schema(self.doc, {"$ref": "#/components/schemas/GroupStatus"}, g)
        self.assertEqual([x["seed"] for x in g["jobs"]], [100, 101, 102])
        self.assertEqual([x["group_index"] for x in g["jobs"]], [0, 1, 2])
        for url in j["result_urls"]:
            self.assertTrue(self.s.request("GET", url)[2].startswith(PNG_MAGIC))
        st, _, e = self.s.json("DELETE", "/queue/group/" + gid)
        self.assertEqual((st, e["error"]["code"]), (409, "already_finished"))

    def test_group_cancel(self):
        st, _, j = self.s.json("POST", "/generate/queue", dict(LONG, n=3))
        self.assertEqual(st, 202, j)
        gid = j["group_id"]
        self.s.wait_state(j["request_ids"][0], ["running"])
        st, _, g = self.s.json("DELETE", "/queue/group/" + gid)
        self.assertEqual(st, 202, g)  # the first one runs: it stops between steps
        self.assertEqual([x["status"] for x in g["jobs"][1:]], ["cancelled", "cancelled"])
        self.s.wait_state(j["request_ids"][0], ["cancelled"])
        st, _, g = self.s.json("GET", "/queue/group/" + gid)
        self.assertEqual(g["status"], "cancelled")
        st, _, e = self.s.json("GET", "/result/" + j["request_ids"][2])
        self.assertEqual((st, e["error"]["code"]), (409, "cancelled"))

    # ---- item 3: OpenAI --------------------------------------------------------------------

    def test_openai_official_client(self):
        before = len(self.job_rows())
        script = os.path.join(ROOT, "tests", "service", "openai_client.mjs")
        res = subprocess.run([which_or_fail("node"), script, NPM_DIR,
                              "http://127.0.0.1:%d" % self.s.port],
                             capture_output=True, text=True, timeout=300)
        self.assertEqual(res.returncode, 0, res.stderr)
        out = json.loads(res.stdout)
        self.assertEqual(out["b64"], [PNG_MAGIC.hex()] * 2)
        self.assertEqual(out["size"], "64x64")
        self.assertTrue(out["url"].startswith("/result/"), out)
        self.assertEqual(out["output_format"], "jpeg")
        st, h, b = self.s.request("GET", out["url"])
        self.assertEqual((st, h["content-type"]), (200, "image/jpeg"))
        self.assertEqual(out["error"]["status"], 422)
        self.assertEqual((out["error"]["param"], out["error"]["type"]),
                         ("size", "invalid_request_error"))
        self.assertEqual(out["error"]["code"], "out_of_range")
        self.assertEqual(out["error_n"], {"status": 422, "param": "n"})
        self.assertEqual(out["models"], ["flux-tiny"])
        # three jobs (two in one group), durable, with the seeds asked for
        rows = self.job_rows()[before:]
        self.assertEqual(len(rows), 3)
        self.assertEqual([r[5] for r in rows[:2]], [21, 22])
        self.assertEqual(rows[0][2], rows[1][2])
        self.assertEqual(json.loads(rows[0][4])["api"], "openai")

    def test_openai_errors_and_ignored(self):
        st, h, j = self.s.json("POST", "/v1/images/generations",
                               {"prompt": "p", "size": "64x64", "n": 1, "extra_thing": 1,
                                "num_inference_steps": 1})
        self.assertEqual(st, 200, j)
        self.assertEqual(h["x-ignored-fields"], "extra_thing")
        check_schema(self.doc, {"$ref": "#/components/schemas/OpenAIImagesResponse"}, j)
        st, _, j = self.s.json("POST", "/v1/images/generations", {"size": "64x64"})
        self.assertEqual(st, 422)
        check_schema(self.doc, {"$ref": "#/components/schemas/ErrorOpenAI"}, j)
        self.assertEqual(j["error"]["param"], "prompt")

    # ---- item 4: A1111 ---------------------------------------------------------------------

    def test_a1111_txt2img(self):
        st, h, j = self.s.json("POST", "/sdapi/v1/txt2img", {
            "prompt": "a castle", "negative_prompt": "blurry", "width": 64, "height": 64,
            "steps": 1, "cfg_scale": 7, "distilled_cfg_scale": 3.5, "seed": 7, "batch_size": 2,
            "n_iter": 1, "sampler_name": "Euler a", "override_settings": {}, "alwayson": {}})
        self.assertEqual(st, 200, j)
        check_schema(self.doc, {"$ref": "#/components/schemas/A1111Txt2ImgResponse"}, j)
        self.assertEqual(h["x-ignored-fields"], "alwayson")
        self.assertEqual(len(j["images"]), 2)
        img = Image.open(io.BytesIO(base64.b64decode(j["images"][1])))
        self.assertIn("Seed: 8,", img.info["parameters"])
        info = json.loads(j["info"])  # a JSON string, as Open WebUI and SillyTavern read it
        self.assertEqual((info["seed"], info["all_seeds"]), (7, [7, 8]))
        self.assertEqual(info["all_prompts"], ["a castle", "a castle"])
        self.assertTrue(info["infotexts"][0].startswith("a castle\nSteps: 1"))
        self.assertIn("Distilled CFG Scale: 3.5", info["infotexts"][0])
        self.assertEqual(j["parameters"]["seed"], 7)
        # errors carry FastAPI's detail
        st, _, e = self.s.json("POST", "/sdapi/v1/txt2img", {"prompt": "x", "width": 65})
        self.assertEqual(st, 422)
        check_schema(self.doc, {"$ref": "#/components/schemas/ErrorA1111"}, e)
        self.assertTrue(e["detail"].startswith("width"))

    def test_a1111_connect(self):
        """What front-ends call to connect and to follow a generation."""
        for path in ("/sdapi/v1/options", "/sdapi/v1/sd-models", "/sdapi/v1/samplers",
                     "/sdapi/v1/schedulers", "/sdapi/v1/upscalers", "/sdapi/v1/sd-vae",
                     "/sdapi/v1/loras", "/sdapi/v1/progress"):
            st, _, j = self.s.json("GET", path)
            self.assertEqual(st, 200, path)
        st, _, j = self.s.json("GET", "/sdapi/v1/options")
        self.assertEqual(j["sd_model_checkpoint"], "flux-tiny")
        self.assertEqual(self.s.request("POST", "/sdapi/v1/options",
                                        {"sd_model_checkpoint": "x"})[:3:2], (200, b"null"))
        # progress of a running job, then interrupt stops it
        st, _, q = self.s.json("POST", "/generate/queue", LONG)
        self.s.wait_state(q["request_id"], ["running"])
        st, _, p = self.s.json("GET", "/sdapi/v1/progress")
        check_schema(self.doc, {"$ref": "#/components/schemas/A1111Progress"}, p)
        self.assertEqual(p["state"]["job"], q["request_id"])
        self.assertEqual(p["state"]["sampling_steps"], 100)
        st, _, _ = self.s.json("POST", "/sdapi/v1/interrupt")
        self.assertEqual(st, 200)
        self.s.wait_state(q["request_id"], ["cancelled"])

    # ---- item 1: the document is the contract ----------------------------------------------

    def probe_value(self, schema):
        """A value a property's schema accepts."""
        if "default" in schema and schema["default"] is not None:
            return schema["default"]
        if "enum" in schema:
            return [v for v in schema["enum"] if v is not None][0]
        t = schema.get("type", ["null"])
        t = t if isinstance(t, list) else [t]
        if "minimum" in schema:
            return schema["minimum"]
        for kind, v in (("string", "x"), ("boolean", True), ("integer", 1), ("number", 1),
                        ("null", None)):
            if kind in t:
                return v
        return None

    def field_named(self, path, status, h, body, field):
        j = json.loads(body)
        e = j["error"]
        named = (e.get("param") == field or e["message"].startswith(field)
                 or (field == "size" and e["message"].startswith(("width", "height"))))
        self.assertTrue(400 <= status < 500 and named, (path, field, status, j))

    def test_openapi_document_matches_service(self):
        doc = self.doc
        self.assertEqual(doc["openapi"], "3.1.0")
        ids = {}
        st, _, q = self.s.json("POST", "/generate/queue", dict(FAST, prompt="doc", n=2))
        self.assertEqual(st, 202, q)
        for rid in q["request_ids"]:
            self.s.wait_state(rid, ["completed"])
        ids = {"id": q["request_ids"][0], "gid": q["group_id"]}
        for path, item in doc["paths"].items():
            for method, op in item.items():
                url = path.replace("{id}", ids["id"]).replace("{gid}", ids["gid"])
                if method == "delete" and path == "/queue/{id}":
                    url = "/queue/" + ids["id"]
                body = None
                if "requestBody" in op:
                    ref = op["requestBody"]["content"]["application/json"]["schema"]["$ref"]
                    schema = doc["components"]["schemas"][ref.split("/")[-1]]
                    self.check_request_schema(path, schema)
                    body = {"prompt": 5}  # invalid: answered without generating
                st, h, b = self.s.request(method.upper(), url, body)
                # every route and method the document lists is there, answering as it says
                self.assertIn(str(st), op["responses"], (method, path, st, b[:300]))
                if h.get("content-type") == "application/json" and b:
                    resp = op["responses"][str(st)]
                    schema = resp.get("content", {}).get("application/json", {}).get("schema")
                    if schema:
                        check_schema(doc, schema, json.loads(b), "%s %s" % (method, path))
        # the defaults it states are the live ones
        props = doc["components"]["schemas"]["GenerateRequest"]["properties"]
        st, _, j = self.s.json("POST", "/generate/queue", {"prompt": "defaults"})
        self.assertEqual(j["progress"]["steps"], props["num_inference_steps"]["default"])
        done = self.s.wait_state(j["request_id"], ["completed"])
        img = Image.open(io.BytesIO(self.s.request("GET", done["result_url"])[2]))
        self.assertEqual(img.size, (props["width"]["default"], props["height"]["default"]))

    def check_request_schema(self, path, schema):
        """Each property: a valid value is known (not ignored) and accepted; a value past a
        bound or outside an enum is refused naming the field; an unknown field is ignored
        and named back."""
        for name, prop in schema["properties"].items():
            if name == "prompt":
                continue
            value = self.probe_value(prop)
            if name == "size":
                value = "64x64"
            # the probe comes first and the prompt is invalid: 422 about the prompt, so the
            # probe was read and accepted, and nothing is generated
            body = json.dumps({name: value, "prompt": 5})
            st, h, b = self.s.request("POST", path, body)
            self.assertNotIn("x-ignored-fields", h, (path, name))
            self.field_named(path, st, h, b, "prompt")
            bad = []
            if "maximum" in prop:
                bad.append(prop["maximum"] + (prop.get("multipleOf") or 1))
            if "minimum" in prop:
                bad.append(prop["minimum"] - (prop.get("multipleOf") or 1))
            if "enum" in prop:
                bad.append("not-one-of-them")
            if name == "size":
                bad = ["%dx64" % (schema["properties"].get("width", {}).get("maximum", 2048) + 16),
                       "64x", "big"]
            for v in bad:
                st, h, b = self.s.request("POST", path, json.dumps({"prompt": "x", name: v}))
                self.field_named(path, st, h, b, name)
        st, h, b = self.s.request("POST", path, json.dumps({"zz_unknown": 1, "prompt": 5}))
        self.assertEqual(h.get("x-ignored-fields"), "zz_unknown", path)

    # ---- /docs -----------------------------------------------------------------------------

    def test_docs_viewer_static(self):
        st, h, b = self.s.request("GET", "/docs")
        self.assertEqual((st, h["location"]), (301, "/docs/"))
        st, h, b = self.s.request("GET", "/docs/")
        self.assertEqual(st, 200)
        self.assertTrue(h["content-type"].startswith("text/html"), h)
        self.assertIn(b"swagger-ui-bundle.js", b)
        st, h, b = self.s.request("GET", "/docs/swagger-ui-bundle.js")
        self.assertEqual(st, 200)
        self.assertIn("javascript", h["content-type"])
        st, h, _ = self.s.request("GET", "/docs/LICENSE")
        self.assertEqual(st, 200)

    def test_docs_renders_in_chromium(self):
        """Headless Chromium loads /docs/ and renders every route of the document; any request
        that would leave the machine goes to a proxy that records it, and none may come."""
        chromium = which_or_fail("chromium")
        seen, lsock = [], socket.socket()
        lsock.bind(("127.0.0.1", 0))
        lsock.listen(8)
        lsock.settimeout(0.2)
        stop = threading.Event()

        def record():
            while not stop.is_set():
                try:
                    c, _ = lsock.accept()
                except OSError:
                    continue
                c.settimeout(1)
                try:
                    seen.append(c.recv(4000).decode("latin-1"))
                except OSError:
                    pass
                c.close()

        t = threading.Thread(target=record)
        t.start()
        try:
            res = subprocess.run(
                [chromium, "--headless=new", "--no-sandbox", "--disable-gpu",
                 "--disable-dev-shm-usage", "--no-first-run", "--disable-extensions",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--metrics-recording-only", "--no-default-browser-check",
                 "--disable-domain-reliability", "--disable-client-side-phishing-detection",
                 "--disable-features=NetworkTimeServiceQuerying,OptimizationHints,Translate,"
                 "MediaRouter,AutofillServerCommunication",
                 "--proxy-server=127.0.0.1:%d" % lsock.getsockname()[1],
                 "--user-data-dir=" + os.path.join(self.s.prefix, "chromium"),
                 "--virtual-time-budget=15000", "--dump-dom",
                 "http://127.0.0.1:%d/docs/" % self.s.port],
                capture_output=True, text=True, timeout=180)
        finally:
            stop.set()
            t.join()
            lsock.close()
        dom = res.stdout
        self.assertIn("opblock", dom, res.stderr[-2000:])
        for path in self.doc["paths"]:
            self.assertIn(path, dom, path)
        # the page's own requests carry its origin (Referer / Origin); the browser's
        # background ones (time, updates), which the flags above mostly silence, do not
        origin = "127.0.0.1:%d" % self.s.port
        from_page = [r.split("\r\n")[0] for r in seen if origin in r]
        self.assertEqual(from_page, [], "requests of the page that tried to leave the machine")


class TestClientsNginx(Clients, unittest.TestCase):
    server = "nginx"


class TestClientsLighttpd(Clients, unittest.TestCase):
    server = "lighttpd"


if __name__ == "__main__":
    unittest.main()
